"""The Volcano critique / revise / decide loop with image-attention capture at every stage.

Per instance: `initial` = answer(question); then up to three rounds r = 1, 2, 3 of
`feedback_r` = answer(F), `revision_r` = answer(R) and a decision = answer(D), always greedy. The
revision is adopted (it becomes the answer that the next round critiques) when the decision picks B;
the loop stops when it picks A, or when the decision names neither option. The initial answer,
feedbacks and revisions are captured; decisions are only recorded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from vistrace.capture.generate import StageCapture, capture, generate_text
from vistrace.models.loading import LoadedModel
from vistrace.volcano.prompts import ENGINEERED_PROMPTS, ORIGINAL_PROMPTS, VolcanoPrompts

logger = logging.getLogger(__name__)

MAX_ROUNDS = 3
SAMPLE_TEMPERATURE = 0.5
Choice = Literal["A", "B"]
StopReason = Literal["kept", "unparseable", "max_rounds", "no_loop"]


_OPTION = re.compile(r"(?<![A-Za-z0-9])([AB])(?![A-Za-z0-9])", re.IGNORECASE)


def parse_decision(text: str) -> Choice | None:
    """The first standalone A or B in `text` (case-insensitive), or None when there is none."""
    match = _OPTION.search(text)
    return None if match is None else ("A" if match.group(1).upper() == "A" else "B")


@dataclass(frozen=True)
class VolcanoResult:
    """The loop's record for one instance.

    `stages`: `initial`, `feedback_<r>`, `revision_<r>` captures, r = 1 … `stop_iter`.
    `outputs`: the initial answer, then every adopted revision. `feedbacks`, `revisions`,
    `decisions` (raw decision texts) and `choices` (parsed, None when unparseable): one per round.
    `stop_iter`: rounds run (0 without the loop). `adopted_round`: the last round whose revision was
    adopted, or None. `stop_reason`: `kept` (A), `unparseable`, `max_rounds` or `no_loop`.
    """

    stages: Mapping[str, StageCapture]
    outputs: tuple[str, ...]
    feedbacks: tuple[str, ...] = ()
    revisions: tuple[str, ...] = ()
    decisions: tuple[str, ...] = ()
    choices: tuple[Choice | None, ...] = ()
    stop_iter: int = 0
    adopted_round: int | None = None
    stop_reason: StopReason = "no_loop"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record (no tensors)."""
        return {
            "outputs": list(self.outputs),
            "feedback": list(self.feedbacks),
            "revision": list(self.revisions),
            "decisions": list(self.decisions),
            "choices": list(self.choices),
            "stop_iter": self.stop_iter,
            "adopted_round": self.adopted_round,
            "stop_reason": self.stop_reason,
            "stages": list(self.stages),
        }


StageFn = Callable[[str], StageCapture]
DecideFn = Callable[[str], str]


def run_loop(
    question: str,
    answer: StageFn,
    decide: DecideFn,
    *,
    prompts: VolcanoPrompts = ORIGINAL_PROMPTS,
    max_rounds: int = MAX_ROUNDS,
) -> VolcanoResult:
    """The loop over any `answer(prompt) -> StageCapture` and `decide(prompt) -> text`."""
    initial = answer(question)
    stages: dict[str, StageCapture] = {"initial": initial}
    outputs = [initial.text]
    feedbacks: list[str] = []
    revisions: list[str] = []
    decisions: list[str] = []
    choices: list[Choice | None] = []
    adopted: int | None = None
    reason: StopReason = "max_rounds"
    current = initial.text
    for round_number in range(1, max_rounds + 1):
        feedback = answer(prompts.feedback.format(question=question, outputs=current))
        revision = answer(prompts.revision.format(question=question, outputs=current, feedback=feedback.text))
        decision = decide(prompts.decision.format(question=question, outputs=current, revision=revision.text))
        stages[f"feedback_{round_number}"] = feedback
        stages[f"revision_{round_number}"] = revision
        feedbacks.append(feedback.text)
        revisions.append(revision.text)
        decisions.append(decision)
        choice = parse_decision(decision)
        choices.append(choice)
        if choice == "B":
            current = revision.text
            outputs.append(current)
            adopted = round_number
            continue
        reason = "kept" if choice == "A" else "unparseable"
        break
    return VolcanoResult(
        stages=stages,
        outputs=tuple(outputs),
        feedbacks=tuple(feedbacks),
        revisions=tuple(revisions),
        decisions=tuple(decisions),
        choices=tuple(choices),
        stop_iter=len(decisions),
        adopted_round=adopted,
        stop_reason=reason,
    )


def volcano_instance(
    loaded: LoadedModel,
    image: Image.Image,
    question: str,
    *,
    loop: bool = True,
    engineered: bool = False,
    sample: bool = False,
    max_new_tokens: int = 1024,
) -> VolcanoResult:
    """Run the loop (or, with `loop=False`, only the initial answer) on one image and question.

    Answers, feedbacks and revisions are sampled at temperature 0.5 when `sample`; decisions are
    always greedy.
    """

    def answer(prompt: str) -> StageCapture:
        return capture(
            loaded,
            image,
            prompt,
            max_new_tokens=max_new_tokens,
            sample=sample,
            temperature=SAMPLE_TEMPERATURE,
        )

    def decide(prompt: str) -> str:
        return generate_text(loaded, image, prompt, max_new_tokens=max_new_tokens)

    if not loop:
        initial = answer(question)
        return VolcanoResult(stages={"initial": initial}, outputs=(initial.text,))
    prompts = ENGINEERED_PROMPTS if engineered else ORIGINAL_PROMPTS
    return run_loop(question, answer, decide, prompts=prompts)
