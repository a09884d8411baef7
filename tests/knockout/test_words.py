"""Answer tokens grouped into words and word classes; the change per word class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vistrace.knockout.words import FUNCTION_WORDS, answer_words, word_change, word_kind
from vistrace.models.loading import load

pytestmark = [pytest.mark.unit]


class _Pieces:
    """A tokenizer whose token i decodes to PIECES[i] (SentencePiece style: a space starts a word)."""

    PIECES: ClassVar[list[str]] = [
        " The",
        " red",
        "dish",
        " circle",
        ".",
        " is",
        " n",
        "'t",
        " big",
        "!",
        "?",
    ]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.PIECES[i] for i in ids).lstrip()


def test_words_follow_the_spaces_and_punctuation_stands_alone() -> None:
    words = answer_words(_Pieces(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert [(w.text, w.tokens, w.kind) for w in words] == [
        ("The", (0,), "function"),
        ("reddish", (1, 2), "content"),
        ("circle", (3,), "content"),
        (".", (4,), "punctuation"),
        ("is", (5,), "function"),
        ("n't", (6, 7), "content"),
        ("big", (8,), "content"),
        ("!", (9,), "punctuation"),
        ("?", (10,), "punctuation"),
    ]


def test_word_kinds() -> None:
    assert len(FUNCTION_WORDS) == 179
    assert word_kind("The") == word_kind("of") == word_kind("isn’t") == "function"
    assert word_kind("circle") == word_kind("42") == "content"
    assert word_kind("...") == word_kind("—") == "punctuation"


@given(
    st.lists(st.floats(0.01, 1.0), min_size=11, max_size=11),
    st.lists(st.floats(0.01, 1.0), min_size=11, max_size=11),
)
def test_a_word_changes_as_the_product_of_its_tokens(full: list[float], blocked: list[float]) -> None:
    words = answer_words(_Pieces(), list(range(11)))
    changes = word_change(
        words, torch.tensor([blocked], dtype=torch.float64), torch.tensor(full, dtype=torch.float64)
    )
    reddish = (blocked[1] * blocked[2] - full[1] * full[2]) / (full[1] * full[2]) * 100
    content = [w for w in words if w.kind == "content"]
    assert len(content) == 4
    full64, blocked64 = torch.tensor(full, dtype=torch.float64), torch.tensor(blocked, dtype=torch.float64)
    manual = [
        (blocked64[list(w.tokens)].prod() - full64[list(w.tokens)].prod())
        / full64[list(w.tokens)].prod()
        * 100
        for w in content
    ]
    assert changes["content"].shape == (1,)
    assert float(changes["content"][0]) == pytest.approx(float(torch.stack(manual).mean()), rel=1e-6)
    assert float(manual[0]) == pytest.approx(reddish, rel=1e-6)


@pytest.mark.integration
def test_a_real_tokenizer_gives_back_the_answer(tiny_dirs: dict[str, Path]) -> None:
    loaded = load(tiny_dirs["llava"])
    tokenizer = loaded.processor.tokenizer
    answer = "the red circle, left of it"
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    words = answer_words(tokenizer, ids)
    assert "".join(w.text for w in words).replace(" ", "") == answer.replace(" ", "")
    assert sorted(i for w in words for i in w.tokens) == list(range(len(ids)))
    assert [w.kind for w in words if w.text in {"the", "of", "it"}] == ["function"] * 3


def test_no_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="no answer tokens"):
        answer_words(_Pieces(), [])
