"""The Volcano critique / revise / decide loop with image-attention capture at every stage.

Per instance: `initial` = answer(question); then up to three rounds r = 1, 2, 3 of
`feedback_r` = answer(F), `revision_r` = answer(R) and a decision = answer(D), always greedy. The
revision is adopted (it becomes the answer that the next round critiques) when the decision picks B;
the loop stops when it picks A, or when the decision names neither option. The initial answer,
feedbacks and revisions are captured; decisions are only recorded.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from tqdm.auto import tqdm

from vistrace.attend_io import (
    LOG_FILE,
    Instance,
    InstanceError,
    load_image,
    read_instances,
    read_record,
    save_instance,
    write_json,
)
from vistrace.capture import PromptTooLongError, StageCapture, capture, generate_text
from vistrace.demo.volcano_data import DECISION_PROMPT, FEEDBACK_PROMPT, REVISION_PROMPT
from vistrace.loading import LoadedModel
from vistrace.runs import open_run
from vistrace.trace import special_token_problem

logger = logging.getLogger(__name__)

ENGINEERED_FEEDBACK_PROMPT = (
    "Question: {question}\nInitial response: {outputs}\nCritique the initial response given question "
    "and image. Please you should NOT use the term 'reference answer'!!!!!!!!!!"
)
ENGINEERED_REVISION_PROMPT = (
    "Adjust the initial response considering the feedback and image.\n"
    "Question: {question}\nInitial response: {outputs}\nFeedback: {feedback}"
)
MAX_ROUNDS = 3
SAMPLE_TEMPERATURE = 0.5
Choice = Literal["A", "B"]
StopReason = Literal["kept", "unparseable", "max_rounds", "no_loop"]


@dataclass(frozen=True)
class VolcanoPrompts:
    """The feedback (F), revision (R) and decision (D) templates, filled with `str.format`."""

    feedback: str
    revision: str
    decision: str = DECISION_PROMPT


ORIGINAL_PROMPTS = VolcanoPrompts(FEEDBACK_PROMPT, REVISION_PROMPT)
ENGINEERED_PROMPTS = VolcanoPrompts(ENGINEERED_FEEDBACK_PROMPT, ENGINEERED_REVISION_PROMPT)

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


@dataclass
class _RunLog:
    path: Path
    config: dict[str, Any]
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, index: int, entry: dict[str, Any]) -> None:
        self.entries[index] = entry
        write_json(
            self.path, {"config": self.config, "entries": [self.entries[i] for i in sorted(self.entries)]}
        )


def _open_log(run_dir: Path, config: dict[str, Any]) -> _RunLog:
    path = run_dir / LOG_FILE
    log = _RunLog(path, config)
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous.get("config") != config:
            raise ValueError(
                f"{run_dir} holds a run with another configuration ({previous.get('config')}); "
                f"this run is {config}. Use another output directory."
            )
        log.entries = {int(entry["index"]): entry for entry in previous.get("entries", [])}
    return log


def _skip(log: _RunLog, index: int, instance: Instance | None, reason: str) -> None:
    logger.warning("skipped instance %d: %s", index, reason)
    base = instance.to_dict() if instance is not None else {"index": index}
    log.add(index, {**base, "skipped": reason})


def run_volcano(
    loaded: LoadedModel,
    instances: str | Path | Sequence[Instance | InstanceError],
    out_dir: str | Path,
    *,
    volcano: bool = True,
    engineered: bool = False,
    sample: bool = False,
    max_new_tokens: int = 1024,
    instance_idx: Iterable[int] | None = None,
    seed: int = 0,
    timeout: float = 20.0,
    images_dir: str | Path | None = None,
) -> Path:
    """Run every instance (or those of `instance_idx`) and write the run directory; return `log.json`.

    `instances` is an input file (JSON list or JSONL) or records already read. Finished instances
    of an earlier run with the same configuration are not run again; skipped ones (missing image,
    unreachable URL, bad record, prompt too long) are retried. Sampling is seeded per instance with
    `seed + index`, so a resumed run draws what an uninterrupted one would. A relative
    `image_src` is resolved against `images_dir`, else the input file's folder.
    """
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    records = read_instances(instances) if isinstance(instances, str | Path) else list(instances)
    config = {
        "model": str(loaded.path),
        "dtype": str(getattr(loaded.model, "dtype", "")).removeprefix("torch."),
        "input": str(Path(instances).resolve()) if isinstance(instances, str | Path) else None,
        "volcano": volcano,
        "engineered": engineered,
        "sample": sample,
        "temperature": SAMPLE_TEMPERATURE if sample else None,
        "max_new_tokens": max_new_tokens,
        "max_rounds": MAX_ROUNDS if volcano else 0,
        "seed": seed,
    }
    with open_run(out_dir, "attend", config) as run_dir:
        return _run_instances(
            loaded,
            records,
            run_dir,
            config,
            volcano,
            engineered,
            sample,
            max_new_tokens,
            instance_idx,
            seed,
            timeout,
            images_dir,
        )


def _run_instances(
    loaded: LoadedModel,
    records: list[Instance | InstanceError],
    run_dir: Path,
    config: dict[str, Any],
    volcano: bool,
    engineered: bool,
    sample: bool,
    max_new_tokens: int,
    instance_idx: Iterable[int] | None,
    seed: int,
    timeout: float,
    images_dir: str | Path | None,
) -> Path:
    """Run the selected instances into the locked `run_dir`; the path of `log.json`."""
    log = _open_log(run_dir, config)
    wanted = None if instance_idx is None else {int(i) for i in instance_idx}
    selected = [
        (position, record)
        for position, record in enumerate(records)
        if wanted is None or _index_of(record, position) in wanted
    ]
    for position, record in tqdm(selected, desc="attention", unit="instance"):
        index = _index_of(record, position)
        if isinstance(record, InstanceError):
            _skip(log, index, None, str(record))
            continue
        directory = run_dir / record.dir_name
        finished = read_record(directory)
        if finished is not None and finished.get("config") == config:
            log.add(index, finished["log"])
            continue
        try:
            problem = special_token_problem(loaded, record.question)
            if problem:
                raise InstanceError(f"instance {index} ({record.image_id}): {problem}", index)
            image = load_image(record, timeout=timeout, images_dir=images_dir)
            if sample:
                torch.manual_seed(seed + index)
            result = volcano_instance(
                loaded,
                image,
                record.question,
                loop=volcano,
                engineered=engineered,
                sample=sample,
                max_new_tokens=max_new_tokens,
            )
        except (InstanceError, PromptTooLongError) as error:
            _skip(log, index, record, str(error))
            continue
        entry = {**record.to_dict(), "dir": record.dir_name, **result.to_dict()}
        save_instance(
            directory, result.stages, {"instance": record.to_dict(), "config": config, "log": entry}, image
        )
        log.add(index, entry)
    return log.path


def _index_of(record: Instance | InstanceError, position: int) -> int:
    index = record.index
    return position if index is None else int(index)


__all__ = [
    "ENGINEERED_FEEDBACK_PROMPT",
    "ENGINEERED_PROMPTS",
    "ENGINEERED_REVISION_PROMPT",
    "MAX_ROUNDS",
    "ORIGINAL_PROMPTS",
    "VolcanoPrompts",
    "VolcanoResult",
    "parse_decision",
    "run_loop",
    "run_volcano",
    "volcano_instance",
]
