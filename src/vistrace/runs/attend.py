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
    rank_log,
    rank_logs,
    read_instances,
    read_log,
    read_record,
    save_instance,
    write_json,
)
from vistrace.runs.config import AttendConfig
from vistrace.runs.folder import open_run
from vistrace.runs.samples import special_token_problem
from vistrace.runs.shard import Shard, launched_shard
from vistrace.volcano.loop import volcano_instance

logger = logging.getLogger(__name__)


@dataclass
class _RunLog:
    path: Path
    config: dict[str, Any]
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, index: int, entry: dict[str, Any]) -> None:
        self.entries[index] = entry
        self.write()

    def write(self) -> None:
        write_json(
            self.path, {"config": self.config, "entries": [self.entries[i] for i in sorted(self.entries)]}
        )


def _check_log_config(run_dir: Path, config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The entries of the run's log so far (:func:`read_log`, rank logs merged); ValueError when it
    was made with another configuration."""
    try:
        previous = read_log(run_dir)
    except FileNotFoundError:
        return {}
    if previous.get("config") != config:
        raise ValueError(
            f"{run_dir} holds a run with another configuration ({previous.get('config')}); "
            f"this run is {config}. Use another output directory."
        )
    return {int(entry["index"]): entry for entry in previous["entries"]}


def _open_log(run_dir: Path, config: dict[str, Any], shard: Shard, selected: set[int]) -> _RunLog:
    """The log this process writes: `log.json` in a one-process run (rank logs left by a sharded run
    merged into it), else its rank log, with the entries it held of instances this call does not
    run (those it runs get their entries anew, from whichever rank owns them now)."""
    entries = _check_log_config(run_dir, config)
    if shard.world == 1:
        log = _RunLog(run_dir / LOG_FILE, config, entries)
        log.write()
        for merged in rank_logs(run_dir):
            merged.unlink()
        return log
    path = rank_log(run_dir, shard.rank)
    kept = {}
    if path.is_file():
        own = json.loads(path.read_text(encoding="utf-8")).get("entries", [])
        kept = {int(e["index"]): e for e in own if int(e["index"]) not in selected}
    return _RunLog(path, config, kept)


def _merge_logs(run_dir: Path, config: dict[str, Any]) -> None:
    """Rank 0's last step: every rank log merged into `log.json`, then removed."""
    merged = _RunLog(run_dir / LOG_FILE, config, _check_log_config(run_dir, config))
    merged.write()
    for path in rank_logs(run_dir):
        path.unlink()


def _skip(log: _RunLog, index: int, instance: Instance | None, reason: str) -> None:
    logger.warning("skipped instance %d: %s", index, reason)
    base = instance.to_dict() if instance is not None else {"index": index}
    log.add(index, {**base, "skipped": reason})


def run_attend(
    loaded: LoadedModel,
    config: AttendConfig,
    instances: Sequence[Instance | InstanceError] | None = None,
    shard: Shard | None = None,
) -> Path:
    """Run every instance (or those of `config.instance_idx`) and write the run folder; return
    `log.json`.

    `instances`: the records already read, else those of `config.input` (JSON list or JSONL).
    Finished instances of an earlier run with the same settings are not run again; skipped ones
    (missing image, unreachable URL, bad record, prompt too long) are retried. Sampling is seeded
    per instance with `seed + index`, so a resumed run draws what an uninterrupted one would. A
    relative `image_src` is resolved against `config.images`, else the input file's folder.
    `shard`: this process's share of a sharded run (:mod:`vistrace.runs.shard`; default: the
    launcher's, one process when none): instance `i` of the input is rank `i mod N`'s.
    """
    if instances is None:
        if config.input is None:
            raise ValueError("--input is required (a JSON list or JSONL file of instances)")
        instances = read_instances(config.input)
    settings = config.run_settings(loaded)
    shard = launched_shard(cpu=loaded.device.type == "cpu") if shard is None else shard
    with open_run(config.out, "attend", settings, rank=shard.rank) as run_dir:
        shard.wait()  # every rank holds its lock before any of them reads or writes
        _run_instances(loaded, list(instances), run_dir, settings, config, shard)
        shard.wait()
        if shard.world > 1 and shard.rank == 0:
            _merge_logs(run_dir, settings)
        shard.wait()  # every process returns once `log.json` holds the whole run
    return run_dir / LOG_FILE


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
    """:func:`run_attend` with the :class:`AttendConfig` of these arguments; `instances` is an input
    file (JSON list or JSONL) or records already read."""
    records: list[Instance | InstanceError] | None = None
    if isinstance(instances, str | Path):
        source: Path | None = Path(instances)
    else:
        source, records = None, list(instances)
    config = AttendConfig(
        input=source,
        out=Path(out_dir),
        volcano=volcano,
        engineered=engineered,
        sample=sample,
        max_new_tokens=max_new_tokens,
        instance_idx=None if instance_idx is None else tuple(instance_idx),
        seed=seed,
        timeout=timeout,
        images=None if images_dir is None else Path(images_dir),
    )
    return run_attend(loaded, config, records)


def _run_instances(
    loaded: LoadedModel,
    records: list[Instance | InstanceError],
    run_dir: Path,
    settings: dict[str, Any],
    config: AttendConfig,
    shard: Shard,
) -> None:
    """Run the selected instances `shard` owns into the locked `run_dir`."""
    wanted = None if config.instance_idx is None else set(config.instance_idx)
    selected = [
        (position, record)
        for position, record in enumerate(records)
        if wanted is None or _index_of(record, position) in wanted
    ]
    log = _open_log(run_dir, settings, shard, {_index_of(record, position) for position, record in selected})
    mine = [(position, record) for position, record in selected if shard.owns(position)]
    bar = tqdm(mine, desc=f"attention{shard.label}", unit="instance", position=shard.rank)
    for position, record in bar:
        index = _index_of(record, position)
        if isinstance(record, InstanceError):
            _skip(log, index, None, str(record))
            continue
        directory = run_dir / record.dir_name
        finished = read_record(directory)
        if finished is not None and finished.get("config") == settings:
            log.add(index, finished["log"])
            continue
        try:
            problem = special_token_problem(loaded, record.question)
            if problem:
                raise InstanceError(f"instance {index} ({record.image_id}): {problem}", index)
            image = load_image(record, timeout=config.timeout, images_dir=config.images)
            if config.sample:
                torch.manual_seed(config.seed + index)
            result = volcano_instance(
                loaded,
                image,
                record.question,
                loop=config.volcano,
                engineered=config.engineered,
                sample=config.sample,
                max_new_tokens=config.max_new_tokens,
            )
        except (InstanceError, PromptTooLongError) as error:
            _skip(log, index, record, str(error))
            continue
        entry = {**record.to_dict(), "dir": record.dir_name, **result.to_dict()}
        save_instance(
            directory, result.stages, {"instance": record.to_dict(), "config": settings, "log": entry}, image
        )
        log.add(index, entry)


def _index_of(record: Instance | InstanceError, position: int) -> int:
    index = record.index
    return position if index is None else int(index)


__all__ = ["AttendConfig", "run_attend", "run_volcano"]
