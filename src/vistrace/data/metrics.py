"""Official answer-scoring metrics: VQAv2 accuracy, DocVQA ANLS and Visual7W accuracy.

Every function scores one question. The definitions, their sources and their quirks are written
down in ``docs/metrics.md``. Which metric scores a dataset's predictions is a registry
(:func:`register_metric`, :func:`metric_for`): VQAv2 accuracy for ``vqav2``, ANLS for ``docvqa``,
Visual7W accuracy for ``visual7w``, exact match for any other dataset.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from vistrace.data.vqa_tables import ARTICLES, CONTRACTIONS, MANUAL_MAP, PUNCTUATION

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "MANUAL_MAP",
    "METRICS",
    "PUNCTUATION",
    "AnswerMetric",
    "McRule",
    "RegisteredMetric",
    "ScoreRules",
    "VqaRule",
    "anls",
    "exact_match",
    "levenshtein",
    "mc_accuracy",
    "metric_for",
    "normalize_answer",
    "normalize_vqa_answer",
    "register_metric",
    "vqa_accuracy",
    "vqa_all_agree",
]

# "(?!<=\d)" is a negative look-ahead for the text "<=" + digit, not a look-behind: the official
# pattern removes every period that is not followed by a digit, whatever precedes it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The official call is ``periodStrip.sub("", outText, re.UNICODE)``: the flag lands in the
# ``count`` parameter, so at most re.UNICODE (32) periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _clean_whitespace(text: str) -> str:
    """Newlines and tabs replaced by spaces, then leading/trailing whitespace stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``."""
    out = text
    strip_all = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        remove = strip_all or p + " " in text or " " + p in text
        out = out.replace(p, "" if remove else " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``."""
    words = [MANUAL_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """A VQA answer after the official whitespace, punctuation and digit/article/contraction steps.

    This is the full normalisation the official evaluation applies when the annotators' answers
    differ; :func:`vqa_accuracy` decides when to apply it.
    """
    return _process_digit_article(_process_punctuation(_clean_whitespace(text)))


def _vqa_processed(prediction: str, answers: Sequence[str], always_normalize: bool) -> tuple[str, list[str]]:
    """Prediction and reference answers as the official evaluation compares them."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("VQA accuracy needs at least one reference answer")
    gts = [_clean_whitespace(a) for a in answers]
    res = _clean_whitespace(prediction)
    if always_normalize or len(set(gts)) > 1:
        gts = [_process_digit_article(_process_punctuation(a)) for a in gts]
        res = _process_digit_article(_process_punctuation(res))
    return res, gts


def vqa_accuracy(prediction: str, answers: Sequence[str], *, always_normalize: bool = False) -> float:
    """VQAv2 accuracy of one prediction against the annotators' answers, in [0, 1].

    Follows the official evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``, ``VQAEval.evaluate``):

    1. newlines and tabs become spaces and both ends are stripped, for the prediction and for
       every reference answer;
    2. only when the reference answers are not all identical (``len(set(gtAnswers)) > 1``), the
       prediction and every reference answer go through ``processPunctuation`` and
       ``processDigitArticle`` (see :func:`normalize_vqa_answer`); when all annotators gave the
       same string, nothing else is normalised, so ``"Yes"`` does not match ten ``"yes"``;
    3. for each annotator, the other annotators whose answer equals the prediction are counted and
       the subset scores ``min(1, matches / 3)``; the result is the mean over annotators.

    With the usual ten answers this is the mean over the ten leave-one-out subsets of nine
    annotators. Any other number ``n >= 2`` of answers is scored the same way over the ``n``
    leave-one-out subsets of ``n - 1``. A single answer has no leave-one-out subset; it is scored
    against itself, ``min(1, matches / 3)``, so at most 1/3.

    ``always_normalize=True`` applies step 2 whatever the annotators answered (the variant some
    toolkits use, e.g. lmms-eval after its PR #794); it is not the official number.

    Raises ValueError when ``answers`` is empty.
    """
    res, gts = _vqa_processed(prediction, answers, always_normalize)
    if len(gts) == 1:
        return min(1.0, float(gts[0] == res) / 3)
    matches = [gt == res for gt in gts]
    total = sum(matches)
    scores = [min(1.0, (total - int(own)) / 3) for own in matches]
    return sum(scores) / len(scores)


def vqa_all_agree(prediction: str, answers: Sequence[str], *, always_normalize: bool = False) -> bool:
    """Whether every annotator's answer equals the prediction, both processed as in :func:`vqa_accuracy`.

    This is ``vistrace build``'s ``all_agree`` rule: "all ten annotators agree" as the official
    metric processes the answers (so ``"Yes"`` does not agree with ten ``"yes"``). The paper's own
    rule lower-cases first: :func:`vistrace.data.paper_rules.paper_vqa_kept`. Raises ValueError when
    ``answers`` is empty.
    """
    res, gts = _vqa_processed(prediction, answers, always_normalize)
    return all(gt == res for gt in gts)


def levenshtein(a: str, b: str) -> int:
    """Levenshtein edit distance (insertions, deletions, substitutions, each of cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """DocVQA ANLS of one prediction against the reference answers, in [0, 1].

    Follows the per-question computation of the official DocVQA / InfographicVQA evaluation script
    (docvqa.org, rrc.cvc.uab.es; function ``evaluate_method``):

    - both strings are lower-cased and their whitespace collapsed:
      ``" ".join(s.strip().lower().split())``;
    - ``NL = levenshtein(gt, pred) / max(len(raw_gt.upper()), len(raw_pred.upper()))``: the
      denominator uses the lengths of the *raw* strings, before stripping and collapsing, as the
      script does; when both raw strings are empty, ``NL = 0``;
    - the score is ``1 - min(NL)`` over the reference answers, replaced by 0 when it is
      ``< threshold``. At the boundary (``NL == 0.5`` with ``threshold = 0.5``) the score is 0.5,
      not 0: the script tests ``score < threshold``, whereas the ST-VQA paper writes
      ``NL < tau`` for a non-zero score.

    An empty prediction scores 0 against non-empty answers and 1 against an empty answer.
    Raises ValueError when ``answers`` is empty.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("ANLS needs at least one reference answer")
    det = " ".join(prediction.strip().lower().split())
    values = []
    for answer in answers:
        gt = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else levenshtein(gt, det) / length)
    score = 1 - min(values)
    return 0.0 if score < threshold else score


_NON_ALNUM = re.compile(r"[^a-z0-9]")


def mc_accuracy(prediction: str, answer: str, *, rule: Literal["official", "paper"] = "paper") -> float:
    """Visual7W multiple-choice accuracy of one prediction: 1.0 on a match, else 0.0.

    - ``"official"``: ``prediction.strip().lower() == answer.strip().lower()``; the Visual7W toolkit
      (``evaluate.py``) compares ``str(x).lower()`` of the selected candidate and the answer; the
      strip only forgives leading/trailing whitespace of generated text.
    - ``"paper"``: both strings lower-cased, every character outside ``[a-z0-9]`` removed (spaces,
      punctuation, non-ASCII letters), then compared; ``"a red-kite!"`` matches ``"A red kite."``.
    """
    if rule == "official":
        return float(prediction.strip().lower() == answer.strip().lower())
    if rule == "paper":
        return float(_NON_ALNUM.sub("", prediction.lower()) == _NON_ALNUM.sub("", answer.lower()))
    raise ValueError(f"unknown Visual7W rule {rule!r}; expected 'official' or 'paper'")


def normalize_answer(text: str) -> str:
    """A free-form answer as compared by :func:`exact_match`: Unicode NFKC, case-folded, every
    character that is not a letter or digit of any script removed (``"Blue!"`` -> ``"blue"``,
    ``"蓝色。"`` -> ``"蓝色"``)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the two answers are equal after :func:`normalize_answer`, else 0.0.

    Letters and digits of every script count, so distinct non-ASCII answers never match; when an
    answer has no letter or digit at all (``"?"``, ``"…"``), the stripped, case-folded texts are
    compared instead; an empty prediction matches only an empty answer."""
    left, right = normalize_answer(prediction), normalize_answer(answer)
    if left or right:
        return float(left == right)
    return float(prediction.strip().casefold() == answer.strip().casefold())


METRICS: dict[str, Callable[..., float]] = {
    "vqa_accuracy": vqa_accuracy,
    "anls": anls,
    "mc_accuracy": mc_accuracy,
    "exact_match": exact_match,
}


VqaRule = Literal["official", "always_normalize"]
McRule = Literal["paper", "official"]


@dataclass(frozen=True)
class ScoreRules:
    """How the registered metrics read an answer: ``vqa_rule`` (:func:`vqa_accuracy`:
    ``always_normalize`` or not), ``mc_rule`` (:func:`mc_accuracy`), ``anls_threshold``
    (:func:`anls`)."""

    vqa_rule: VqaRule = "official"
    mc_rule: McRule = "paper"
    anls_threshold: float = 0.5


AnswerMetric = Callable[[str, Sequence[str], ScoreRules], float]
"""``(prediction, reference answers (at least one), rules) -> score in [0, 1]``."""


@dataclass(frozen=True)
class RegisteredMetric:
    """A metric of the registry: its ``name`` (recorded in ``scores.json``), its function and the
    :class:`ScoreRules` fields it reads (recorded with the scores)."""

    name: str
    score: AnswerMetric
    settings: tuple[str, ...] = ()


FALLBACK_METRIC = "exact_match"
_REGISTERED: dict[str, RegisteredMetric] = {}
_BY_DATASET: dict[str, str] = {}


def register_metric(
    name: str,
    metric: AnswerMetric,
    *,
    datasets: Sequence[str] = (),
    settings: Sequence[str] = (),
    replace: bool = False,
) -> None:
    """Add ``metric`` under ``name``; it scores the predictions of ``datasets`` (their ``dataset``
    field) from then on. ``settings``: the :class:`ScoreRules` fields it reads."""
    if name in _REGISTERED and not replace:
        raise ValueError(f"a metric named {name!r} exists; pass replace=True to override it")
    fields = tuple(ScoreRules.__dataclass_fields__)
    unknown = [field for field in settings if field not in fields]
    if unknown:
        raise ValueError(f"settings {unknown}: not fields of ScoreRules ({', '.join(fields)})")
    _REGISTERED[name] = RegisteredMetric(name, metric, tuple(settings))
    _BY_DATASET.update(dict.fromkeys(datasets, name))


def metric_for(dataset: str) -> RegisteredMetric:
    """The metric of ``dataset``: the last registered for it, else exact match."""
    return _REGISTERED[_BY_DATASET.get(dataset, FALLBACK_METRIC)]


def _vqa(prediction: str, answers: Sequence[str], rules: ScoreRules) -> float:
    return vqa_accuracy(prediction, answers, always_normalize=rules.vqa_rule == "always_normalize")


def _anls(prediction: str, answers: Sequence[str], rules: ScoreRules) -> float:
    return anls(prediction, answers, threshold=rules.anls_threshold)


def _choice(prediction: str, answers: Sequence[str], rules: ScoreRules) -> float:
    """Visual7W: the correct answer is the first."""
    return mc_accuracy(prediction, answers[0], rule=rules.mc_rule)


def _best_match(prediction: str, answers: Sequence[str], rules: ScoreRules) -> float:
    return max(exact_match(prediction, answer) for answer in answers)


register_metric("vqa_accuracy", _vqa, datasets=("vqav2",), settings=("vqa_rule",))
register_metric("anls", _anls, datasets=("docvqa",), settings=("anls_threshold",))
register_metric("mc_accuracy", _choice, datasets=("visual7w",), settings=("mc_rule",))
register_metric(FALLBACK_METRIC, _best_match)
