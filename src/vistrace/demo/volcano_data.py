"""Text training examples in the Volcano critique-revise-decide format for the synthetic world.

For each sample an initial answer is drawn (wrong with probability ``p_wrong``); the model is then
taught four turns: the plain answer, the feedback on the initial answer (a verdict and the fact,
e.g. ``"The answer is wrong. The circle is red."``), the revised answer, and the decision between
the initial answer (A) and the revision (B). The prompt templates are Volcano's own, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vistrace.demo.world import (
    FEEDBACK_CORRECT,
    FEEDBACK_WRONG,
    QA,
    Sample,
    answer_space,
    tokenize,
    vocabulary,
)
from vistrace.volcano.prompts import DECISION_PROMPT, FEEDBACK_PROMPT, REVISION_PROMPT

STAGES: tuple[str, ...] = ("answer", "feedback", "revision", "decision")


@dataclass(frozen=True)
class TrainingTurn:
    """One supervised turn: the user ``prompt``, the assistant ``target``, and its ``stage`` in `STAGES`."""

    prompt: str
    target: str
    stage: str


def _normalise(answer: str) -> str:
    return " ".join(tokenize(answer))


def is_correct(qa: QA, answer: str) -> bool:
    """Whether ``answer`` equals ``qa.answer`` up to case, spacing and punctuation spacing."""
    return _normalise(answer) == _normalise(qa.answer)


def wrong_answer(qa: QA, rng: np.random.Generator) -> str:
    """A plausible wrong answer of the same kind as ``qa.answer`` (another colour, shape, count...)."""
    choices = [answer for answer in answer_space(qa.question_kind) if not is_correct(qa, answer)]
    return choices[int(rng.integers(len(choices)))]


def initial_answer(qa: QA, rng: np.random.Generator, p_wrong: float = 0.5) -> str:
    """``qa.answer``, or with probability ``p_wrong`` a `wrong_answer`."""
    if not 0.0 <= p_wrong <= 1.0:
        raise ValueError(f"p_wrong must be in [0, 1], got {p_wrong}")
    return wrong_answer(qa, rng) if rng.random() < p_wrong else qa.answer


def feedback_text(qa: QA, initial: str) -> str:
    """The verdict on ``initial`` followed by the fact that answers the question."""
    verdict = FEEDBACK_CORRECT if is_correct(qa, initial) else FEEDBACK_WRONG
    return f"{verdict} {qa.fact}" if qa.fact else verdict


def decision_letter(qa: QA, initial: str, revision: str) -> str:
    """``"B"`` when ``revision`` is correct and differs from ``initial``, else ``"A"``."""
    changed = _normalise(revision) != _normalise(initial)
    return "B" if changed and is_correct(qa, revision) else "A"


def volcano_turns(
    sample: Sample,
    rng: np.random.Generator,
    p_wrong: float = 0.5,
    contrast_decision: bool = False,
) -> list[TrainingTurn]:
    """The answer, feedback, revision and decision turns of one sample, in that order.

    With ``contrast_decision`` a second decision turn is appended whose option A is the true answer
    and option B a wrong one (target ``"A"``), so that the decision cannot be learnt from whether
    the two options differ.
    """
    qa = sample.qa
    initial = initial_answer(qa, rng, p_wrong)
    feedback = feedback_text(qa, initial)
    revision = qa.answer
    turns = [
        TrainingTurn(qa.question, qa.answer, "answer"),
        TrainingTurn(FEEDBACK_PROMPT.format(question=qa.question, outputs=initial), feedback, "feedback"),
        TrainingTurn(
            REVISION_PROMPT.format(question=qa.question, outputs=initial, feedback=feedback),
            revision,
            "revision",
        ),
        TrainingTurn(
            DECISION_PROMPT.format(question=qa.question, outputs=initial, revision=revision),
            decision_letter(qa, initial, revision),
            "decision",
        ),
    ]
    if contrast_decision:
        wrong = wrong_answer(qa, rng)
        turns.append(
            TrainingTurn(
                DECISION_PROMPT.format(question=qa.question, outputs=qa.answer, revision=wrong),
                decision_letter(qa, qa.answer, wrong),
                "decision",
            )
        )
    return turns


def volcano_training_set(
    samples: Sequence[Sample],
    seed: int,
    p_wrong: float = 0.5,
    contrast_decision: bool = False,
) -> list[TrainingTurn]:
    """`volcano_turns` of every sample, concatenated in sample order; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        turn
        for sample in samples
        for turn in volcano_turns(sample, rng, p_wrong=p_wrong, contrast_decision=contrast_decision)
    ]


def volcano_vocabulary() -> list[str]:
    """`vocabulary` plus every token of the three prompt templates and the option letters."""
    template_text = re.sub(r"\{\w+\}", " ", " ".join((FEEDBACK_PROMPT, REVISION_PROMPT, DECISION_PROMPT)))
    return sorted(set(vocabulary()) | set(tokenize(template_text)) | {"a", "b"})
