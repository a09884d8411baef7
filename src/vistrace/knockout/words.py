"""Answer tokens grouped into words, each word a content word, a function word or punctuation, and
the change a knockout makes to each word's probability.

A word is a run of answer tokens that the tokenizer decodes without a space between them: a token
whose decoded text starts with whitespace starts a new word, and punctuation is a word of its own.
Its probability is the product of its tokens' probabilities (under teacher forcing, the probability
of the word given everything before it).

Word classes, as a user splitting an English answer by hand would: `punctuation` (no letter or
digit), `function` (a closed-class word: article, determiner, pronoun, preposition, conjunction,
auxiliary or modal verb, particle, from the English stop-word list of NLTK (`nltk.corpus.stopwords`,
179 words), which analyses of content vs function words commonly use), else `content`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

WordKind = Literal["content", "function", "punctuation"]
WORD_KINDS: tuple[WordKind, ...] = ("content", "function", "punctuation")

FUNCTION_WORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their theirs
    themselves what which who whom this that that'll these those am is are was were be been being have
    has had having do does did doing a an the and but if or because as until while of at by for with
    about against between into through during before after above below to from up down in out on off
    over under again further then once here there when where why how all any both each few more most
    other some such no nor not only own same so than too very s t can will just don don't should
    should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't
    hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't
    shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()  # noqa: SIM905
)
"""NLTK's English stop-word list (179 words), lower-case."""


@dataclass(frozen=True)
class Word:
    """One word of the answer: its text (stripped), the answer-token positions it spans, its kind."""

    text: str
    tokens: tuple[int, ...]
    kind: WordKind


def word_kind(text: str) -> WordKind:
    """`punctuation`, `function` or `content` (see the module docstring)."""
    if not any(ch.isalnum() for ch in text):
        return "punctuation"
    return "function" if text.strip().lower().replace("\u2019", "'") in FUNCTION_WORDS else "content"


def answer_words(tokenizer: Any, answer_tokens: Sequence[int]) -> list[Word]:
    """The words of an answer given as token ids, decoded by `tokenizer` one prefix at a time.

    Raises ValueError for an empty answer."""
    if not answer_tokens:
        raise ValueError("no answer tokens to group into words")
    pieces: list[str] = []
    previous = ""
    for end in range(1, len(answer_tokens) + 1):
        text = tokenizer.decode(list(answer_tokens[:end]), skip_special_tokens=False)
        pieces.append(text[len(previous) :] if text.startswith(previous) else text[-1:])
        previous = text
    groups: list[tuple[str, list[int]]] = []
    for index, piece in enumerate(pieces):
        punctuation = piece.strip() != "" and not any(ch.isalnum() for ch in piece)
        after_punctuation = bool(groups) and _is_punctuation(groups[-1][0])
        blank_before = bool(groups) and groups[-1][0].strip() == ""
        starts = not groups or punctuation or after_punctuation or (piece[:1].isspace() and not blank_before)
        if starts:
            groups.append((piece, [index]))
        else:
            groups[-1] = (groups[-1][0] + piece, [*groups[-1][1], index])
    if len(groups) > 1 and groups[-1][0].strip() == "":  # trailing whitespace joins the last word
        text, tokens = groups.pop()
        groups[-1] = (groups[-1][0] + text, [*groups[-1][1], *tokens])
    return [Word(text.strip(), tuple(tokens), word_kind(text)) for text, tokens in groups]


def _is_punctuation(text: str) -> bool:
    return text.strip() != "" and not any(ch.isalnum() for ch in text)


def word_change(
    words: Sequence[Word], blocked: torch.Tensor, full: torch.Tensor
) -> dict[WordKind, torch.Tensor]:
    """Mean percentage change of the words' probabilities per class.

    `blocked`: (L, T) per-token probabilities with a pathway blocked in the window centred on each
    layer; `full`: (T,) unblocked. Returns, for each class that has words, the (L,) mean over its
    words of (p̂_w − p_w) / p_w × 100, with p_w the product of the word's token probabilities."""
    by_kind: dict[WordKind, list[torch.Tensor]] = {}
    for word in words:
        index = torch.tensor(word.tokens)
        p_word = full.double()[index].prod()
        p_blocked = blocked.double()[:, index].prod(dim=-1)
        by_kind.setdefault(word.kind, []).append((p_blocked - p_word) / p_word * 100.0)
    return {kind: torch.stack(changes).mean(dim=0) for kind, changes in by_kind.items()}


__all__ = ["FUNCTION_WORDS", "WORD_KINDS", "Word", "WordKind", "answer_words", "word_change", "word_kind"]
