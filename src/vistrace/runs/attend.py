"""`vistrace attend`: the Volcano loop over a file of instances, resumable, one folder per instance."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vistrace.capture.generate import PromptTooLongError
from vistrace.models.loading import LoadedModel
from vistrace.runs.attend_io import (
    LOG_FILE,
    Instance,
    InstanceError,
    load_image,
    read_instances,
    read_record,
    save_instance,
    write_json,
)
from vistrace.runs.folder import open_run
from vistrace.runs.trace import special_token_problem
from vistrace.volcano.loop import MAX_ROUNDS, SAMPLE_TEMPERATURE, volcano_instance

logger = logging.getLogger(__name__)


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


__all__ = ["run_volcano"]
