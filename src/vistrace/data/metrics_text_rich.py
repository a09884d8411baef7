"""Answer metrics for TextVQA and ChartQA, and FG-TRACER's correct-set tests for both.

Drafted outside the repository against the post-move layout; to integrate, append the metric part
to ``vistrace/data/metrics.py`` (adding ``textvqa_accuracy`` and ``relaxed_accuracy`` to
``METRICS``) and the ``fgtracer_*`` part to ``vistrace/data/paper_rules.py`` (or a sibling
``fgtracer_rules.py``). Every function scores one question.

- TextVQA: :func:`textvqa_accuracy`, the official evaluator (EvalAI / MMF
  ``TextVQAAccuracyEvaluator``), which is VQA accuracy with a different answer processing than
  VQAv2's: see its docstring for the three differences.
- ChartQA: :func:`relaxed_correctness` / :func:`relaxed_accuracy`, the ChartQA paper's relaxed
  accuracy as google-research/pix2struct implements it.
- COCO captions: no per-question metric (see ``datasets.md``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vistrace.data.metrics import ScoreRules, normalize_vqa_answer, register_metric
from vistrace.data.paper_rules import paper_vqa_preprocess

__all__ = [
    "extract_final_answer",
    "fgtracer_chartqa_kept",
    "fgtracer_textvqa_kept",
    "normalize_textvqa_answer",
    "relaxed_accuracy",
    "relaxed_correctness",
    "textvqa_accuracy",
]


# ---------------------------------------------------------------- TextVQA


def normalize_textvqa_answer(text: str) -> str:
    """An answer as the official TextVQA evaluation compares it (``EvalAIAnswerProcessor.__call__``).

    ``word_tokenize`` (lower-case; delete every ``,`` and ``?``; ``'s`` becomes `` 's``; strip), then
    the VQA steps of :func:`vistrace.data.metrics.normalize_vqa_answer` (newlines/tabs to spaces,
    ``processPunctuation``, ``processDigitArticle``). The VQA comma rule (``(\\d)(,)(\\d)``) never
    fires here, because ``word_tokenize`` has already removed every comma (``"1,000"`` -> ``"1000"``).
    """
    tokenized = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(tokenized)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA accuracy of one prediction against the annotators' answers, in [0, 1].

    Follows the evaluation behind the TextVQA leaderboard (EvalAI), as released in
    facebookresearch/mmf ``mmf/utils/m4c_evaluators.py`` (``TextVQAAccuracyEvaluator``; LLaVA's
    ``llava/eval/m4c_evaluator.py`` and lmms-eval's ``textvqa_process_results`` are copies):
    prediction and every answer go through :func:`normalize_textvqa_answer`; for each annotator,
    the other annotators whose answer equals the prediction are counted and the subset scores
    ``min(1, matches / 3)``; the result is the mean over annotators.

    The leave-one-out formula is VQAv2's (:func:`vistrace.data.metrics.vqa_accuracy`); the answer
    processing is not. It differs from ``vqa_accuracy`` in three ways:

    1. answers are always processed (VQAv2 skips processing when the ten answers are identical,
       so ``"Coca-Cola"`` scores 0 there against ten ``"coca-cola"`` and 1 here);
    2. every ``,`` and ``?`` is deleted and ``'s`` split off before the VQA steps;
    3. the text is lower-cased before the punctuation step (no effect on the result).

    On text without ``,``, ``?`` or ``'s`` it equals ``vqa_accuracy(..., always_normalize=True)``
    (a property test checks this). The official evaluator asserts exactly ten answers; any other
    number ``n >= 1`` is scored like :func:`~vistrace.data.metrics.vqa_accuracy` does (leave-one-out
    over ``n``; a single answer scores ``min(1, match / 3)``). Raises ValueError when ``answers`` is
    empty, TypeError when it is a single string.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("TextVQA accuracy needs at least one reference answer")
    res = normalize_textvqa_answer(prediction)
    matches = [normalize_textvqa_answer(answer) == res for answer in answers]
    if len(matches) == 1:
        return min(1.0, float(matches[0]) / 3)
    total = sum(matches)
    scores = [min(1.0, (total - int(own)) / 3) for own in matches]
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- ChartQA


def _to_float(text: str) -> float | None:
    """pix2struct's ``_to_float``: ``float(text)``, a trailing ``%`` divided by 100, None when invalid."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed correctness of one prediction against one answer.

    A line-for-line port of ``relaxed_correctness`` in google-research/pix2struct
    ``pix2struct/metrics.py`` (the implementation lmms-eval's ``chartqa/utils.py``, Qwen-VL's
    ``eval_mm/evaluate_vqa.py`` and VLMEvalKit copy), which implements the ChartQA paper
    (Masry et al., ACL Findings 2022, arXiv:2203.10244, end of section 5.1): "We consider an answer
    to be correct if it is within 5% of the gold answer. For non-numeric answers, we still need an
    exact match to consider an answer to be correct."

    - both strings are read as numbers with Python ``float()`` (so ``" 12"``, ``"1e3"``, ``"1_000"``,
      ``"nan"``, ``"inf"`` are numbers), a trailing ``%`` meaning /100 (``"50%"`` == ``0.5``);
    - when the prediction is a number and the target a *non-zero* number, the answer is correct when
      ``|prediction - target| / |target| <= max_relative_change``;
    - otherwise (either is not a number, or the target is 0) the texts are compared with
      ``lower()``, without stripping: ``"0.0"`` does not match the target ``"0"``, ``"Yes "`` does not
      match ``"Yes"`` (vistrace strips predictions when it records them).

    Quirks kept: a target ``"nan"`` or ``"inf"`` never matches (the difference is NaN), even the
    same text; a thousands separator makes a number text (``"1,000"`` vs ``"1000"`` is a miss).
    """
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        relative_change = abs(prediction_float - target_float) / abs(target_float)
        return relative_change <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str], max_relative_change: float = 0.05) -> float:
    """ChartQA relaxed accuracy of one prediction: 1.0 when :func:`relaxed_correctness` holds for
    any reference answer (pix2struct's ``aggregate_metrics`` takes the max over targets; ChartQA has
    one), else 0.0. Raises ValueError when ``answers`` is empty, TypeError when it is a string."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("relaxed accuracy needs at least one reference answer")
    return float(any(relaxed_correctness(answer, prediction, max_relative_change) for answer in answers))


# ---------------------------------------------------------------- FG-TRACER's correct-set tests


_FINAL_MARKERS = ("Answer:**", "Answer*:", "Answer**:", "Answer:", "**FINAL ANSWER:**", "FINAL ANSWER:")
_LAST_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")
_NOT_NUMBER_CHAR = re.compile(r"[^\d\.\-]")


def extract_final_answer(text: str) -> str:
    """The final answer of a chain-of-thought output, as FG-TRACER's ``eval/eval_chartqa.py``
    (``extract_final_answer``) cuts it: the text after the last occurrence of the first marker found
    among ``Answer:**``, ``Answer*:``, ``Answer**:``, ``Answer:``, ``**FINAL ANSWER:**``,
    ``FINAL ANSWER:`` (tried in that order, case-sensitive), stripped; without a marker, the last
    line of the stripped text."""
    for marker in _FINAL_MARKERS:
        if marker in text:
            return text.split(marker)[-1].strip()
    return text.strip().split("\n")[-1].strip()


def _is_numeric(value: str) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _numeric_relaxed_match(pred: str, gold: str) -> bool:
    try:
        pred_val, gold_val = float(pred), float(gold)
    except (TypeError, ValueError):
        return False
    if gold_val == 0:
        return pred_val == 0
    return abs(pred_val - gold_val) / abs(gold_val) <= 0.05


def fgtracer_chartqa_kept(prediction: str, label: str) -> bool:
    """Whether FG-TRACER keeps a ChartQA question (``eval/eval_chartqa.py``, ``main``).

    The prediction is cut by :func:`extract_final_answer`. A numeric label (``float(label)``
    succeeds): the last number of the answer (commas deleted, ``[-+]?\\d*\\.\\d+|\\d+``; a leading
    ``-`` is lost on integers) against the label with every character outside ``[\\d.-]`` deleted;
    a 0 label needs exactly 0, otherwise within 5% relative. A text label: a final ``.`` of the answer
    is dropped, both are stripped and lower-cased; with ``[`` in the label the answer must be a
    substring of it, otherwise it must equal the label or contain it. This is not relaxed accuracy
    (a text answer containing the label counts); it selects the knockout set only.
    """
    raw_pred = extract_final_answer(prediction)
    if _is_numeric(label):
        pred = next(iter(reversed(_LAST_NUMBER.findall(raw_pred.replace(",", "")))), None)
        if not pred:
            return False
        return _numeric_relaxed_match(pred.lower().rstrip("."), _NOT_NUMBER_CHAR.sub("", label))
    pred = raw_pred[:-1] if raw_pred.endswith(".") else raw_pred
    pred_n, gold_n = pred.strip().lower(), label.strip().lower()
    if "[" in label:
        return pred_n in gold_n
    return pred_n == gold_n or gold_n in pred_n


def fgtracer_textvqa_kept(prediction: str, answers: Sequence[str]) -> bool:
    """Whether FG-TRACER keeps a TextVQA question (``eval/eval_textvqa.py``: ``score > 0``).

    Prediction and answers go through the FlowTracker ``preprocess_text``
    (:func:`vistrace.data.paper_rules.paper_vqa_preprocess`, identical in both papers' code);
    the score is ``min(1, n / 3)`` where ``n`` counts the answers that are a *substring* of the
    prediction, so the question is kept when any processed answer occurs in the processed
    prediction (an answer that processes to ``""``, such as ``"the"``, always occurs)."""
    if isinstance(answers, str) or not answers:
        raise ValueError("FG-TRACER's TextVQA rule needs a list of reference answers")
    processed = paper_vqa_preprocess(prediction)
    return any(paper_vqa_preprocess(answer) in processed for answer in answers)


def _textvqa(prediction: str, answers: Sequence[str], rules: ScoreRules) -> float:
    return textvqa_accuracy(prediction, answers)


def _chartqa(prediction: str, answers: Sequence[str], rules: ScoreRules) -> float:
    """Relaxed accuracy of the final answer (the text after `FINAL ANSWER:` of a step-by-step output,
    :func:`extract_final_answer`; a short answer is its own last line)."""
    return relaxed_accuracy(extract_final_answer(prediction), answers)


register_metric("textvqa_accuracy", _textvqa, datasets=("textvqa",))
register_metric("relaxed_accuracy", _chartqa, datasets=("chartqa",))
