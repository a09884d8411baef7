"""The correct-set tests of the FlowTracker code, reproduced for ``vistrace build --rule paper``.

The paper's pipeline (aimagelab/MLLMs-FlowTracker) keeps a question for the knockout analysis when
its evaluation script marks the prediction correct and its dataset script keeps it:

- VQAv2 — ``eval/eval_vqa.py``: ``preprocess_text`` is applied to the prediction and to each of the
  ten annotators' answers; the question is kept when all ten equal the prediction
  (``perc_matches == 1.0``). ``tracing_information_flow/create_vqa.py`` keeps every such question.
- Visual7W — ``eval/eval_visual7w.py``: kept when ``re.sub('[^a-z0-9]', '', s.lower())`` of the
  prediction equals that of the correct answer (:func:`vistrace.data.metrics.mc_accuracy`, rule
  ``paper``); ``create_visual7w.py`` keeps every such question.
- DocVQA — ``eval/eval_docvqa.py`` keeps a question whose best ``NLS`` over the answers is > 0
  and stores it rounded to 4 digits as ``anls_score``; ``create_docvqa.py`` then keeps only
  ``anls_score >= 1.0``: in effect the prediction equals an answer after ``lower()``.

The prediction is the decoded answer, special tokens skipped, stripped — as vistrace records it.
``preprocess_text`` calls two libraries, ``contractions.fix`` and ``word2number.w2n.word_to_num``;
vistrace calls the same ones (imported when the VQAv2 rule first runs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from vistrace.data.metrics import levenshtein, mc_accuracy

__all__ = [
    "PAPER_DATASETS",
    "paper_docvqa_kept",
    "paper_nls",
    "paper_visual7w_kept",
    "paper_vqa_kept",
    "paper_vqa_preprocess",
]

PAPER_DATASETS: tuple[str, ...] = ("vqav2", "visual7w", "docvqa")

_NUMBER_WORDS = (
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|"
    r"eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|"
    r"eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|"
    r"eighty|ninety|hundred|thousand|million|billion|trillion)(?:[\s-](?:zero|one|two|three|four|five|"
    r"six|seven|eight|nine|ten|"
    r"eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|"
    r"eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|"
    r"eighty|ninety))*\b"
)
"""``eval_vqa.py``'s pattern: a number word, then any number of the words ``zero`` … ``ninety``
joined by a space or a hyphen (``hundred``, ``thousand`` … only as the first word)."""
_NUMBER_RUN = re.compile(_NUMBER_WORDS)
_ARTICLE = re.compile(r"\b(a|an|the)\b")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_PUNCTUATION = re.compile(r"[^\w\s':,]")
_SPACES = re.compile(r"\s+")


@cache
def _libraries() -> tuple[Callable[[str], str], Callable[[str], Any]]:
    """(``contractions.fix``, ``word2number.w2n.word_to_num``), the functions the paper's code calls."""
    try:
        from contractions import fix
        from word2number.w2n import word_to_num
    except ImportError as error:
        raise ImportError(
            "the paper's VQAv2 rule (eval_vqa.py) needs the libraries its code calls: "
            "pip install contractions==0.1.73 word2number==1.1"
        ) from error
    return fix, word_to_num


def paper_vqa_preprocess(text: str) -> str:
    """``preprocess_text`` of the paper's ``eval/eval_vqa.py``, step by step:

    1. lower-case; 2. ``contractions.fix`` (its defaults: leftovers and slang on, so ``dont`` →
    ``do not``, ``i'm`` → ``I am``); 3. each run of number words matched by the paper's pattern
    becomes ``str(word_to_num(run))`` (``two`` → ``2``, ``twenty one`` → ``21``; a run the library
    refuses with ValueError stays as it is); 4. the whole words ``a``, ``an``, ``the`` are deleted;
    5. periods not between digits are deleted (``(?<!\\d)\\.(?!\\d)``); 6. every character outside
    ``[\\w\\s':,]`` becomes a space — so a period kept in step 5 becomes one too (``3.5`` → ``3 5``),
    and commas, apostrophes and colons stay (the code's special case for commas is never reached,
    its pattern does not match a comma); 7. runs of whitespace become one space, ends stripped.

    Where the paper's code would stop with an exception instead of returning — ``word_to_num``
    raising IndexError on a run that starts with ``thousand``, ``million`` or ``billion`` followed
    by more number words (``thousand two``) — vistrace keeps the words as they are.
    """
    fix, word_to_num = _libraries()
    text = fix(text.lower())

    def number(match: re.Match[str]) -> str:
        try:
            return str(word_to_num(match.group(0)))
        except (ValueError, IndexError):
            return match.group(0)

    text = _NUMBER_RUN.sub(number, text)
    text = _ARTICLE.sub("", text)
    text = _PERIOD.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def paper_vqa_kept(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the paper keeps a VQAv2 question: every answer equals the prediction after
    :func:`paper_vqa_preprocess` (``eval_vqa.py``: ``perc_matches == 1.0``)."""
    if isinstance(answers, str) or not answers:
        raise ValueError("the paper's VQAv2 rule needs a list of reference answers")
    processed = paper_vqa_preprocess(prediction)
    return all(paper_vqa_preprocess(answer) == processed for answer in answers)


def paper_visual7w_kept(prediction: str, answer: str) -> bool:
    """Whether the paper keeps a Visual7W question (``eval_visual7w.py``: lower-cased, every
    character outside ``[a-z0-9]`` removed, equal)."""
    return mc_accuracy(prediction, answer, rule="paper") == 1.0


def paper_nls(prediction: str, answer: str, threshold: float = 0.5) -> float:
    """``NLS`` of the paper's ``eval/eval_docvqa.py``: both strings ``lower()``-ed (no strip, no
    whitespace collapsing), ``1 − levenshtein / max(len)``, returned when ``> threshold``, else 0;
    1.0 for two empty strings."""
    first, second = str(prediction).lower(), str(answer).lower()
    longest = max(len(first), len(second))
    if longest == 0:
        return 1.0
    similarity = 1 - levenshtein(first, second) / longest
    return similarity if similarity > threshold else 0.0


def paper_docvqa_kept(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the paper keeps a DocVQA question: the best :func:`paper_nls` over the answers is
    > 0 (``eval_docvqa.py``) and, rounded to 4 digits, at least 1.0 (``create_docvqa.py``)."""
    if isinstance(answers, str) or not answers:
        raise ValueError("the paper's DocVQA rule needs a list of reference answers")
    best = max(paper_nls(prediction, answer) for answer in answers)
    return best > 0 and round(best, 4) >= 1.0
