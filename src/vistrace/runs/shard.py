"""Sharded runs: one run folder written by the processes of a launcher, read as one.

Under ``torchrun --nproc_per_node N -m vistrace …`` or ``accelerate launch --num_processes N -m
vistrace …``, :func:`launched_shard` reads this process's rank and the number of processes from
accelerate's state (which reads the launcher's environment). Sample ``i`` of the input (its 0-based
position, kept in each record as ``input_index``) belongs to rank ``i mod N``, counted over the whole
input, so the processes never share a sample, and a resume with another N never gives one sample to
two live processes.

Each rank appends to its own files (:func:`vistrace.runs.folder.shard_name`: rank 0 writes
``results.jsonl``, rank 2 ``results.rank-2.jsonl``) under its own lock, and sees every rank's
finished records when it starts, so nothing is redone. :func:`read_union` reads a run file as the
union of its shards, in input order and without duplicates: ``export``, ``score``, ``build``,
``plot`` and ``report`` see the same records, in the same order, as after a one-process run.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vistrace.runs.folder import iter_jsonl, shard_base, shard_name
from vistrace.runs.store import JsonlStore

__all__ = [
    "POSITION",
    "Shard",
    "launched_shard",
    "open_store",
    "read_union",
    "shard_paths",
]

log = logging.getLogger(__name__)

BARRIER_TIMEOUT = datetime.timedelta(days=7)
"""How long a process waits for the others (at the start and the end of a sharded run)."""

POSITION = "input_index"
"""Record field: the sample's 0-based position in the run's input, the order of a merged run."""


@dataclass(frozen=True)
class Shard:
    """This process's share of a run: rank `rank` of `world` processes. `device`: the accelerator
    the launcher gave this process (``cuda:1`` …), None on the CPU or in a one-process run."""

    rank: int = 0
    world: int = 1
    device: str | None = None

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} of {self.world} processes: not a valid shard")

    def owns(self, position: int) -> bool:
        """Whether the sample at `position` (0-based, over the whole input) is this process's."""
        return position % self.world == self.rank

    def file(self, name: str) -> str:
        """The name of this process's share of the run file `name`."""
        return shard_name(name, self.rank)

    @property
    def label(self) -> str:
        """`` [rank 1/2]`` in a sharded run (for progress bars and messages), else empty."""
        return f" [rank {self.rank}/{self.world}]" if self.world > 1 else ""

    def wait(self) -> None:
        """Wait until every process reaches this point (a no-op in a one-process run)."""
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def total(self, counts: dict[str, int]) -> dict[str, int]:
        """`counts` summed over every process (this process's own in a one-process run)."""
        if self.world == 1:
            return dict(counts)
        import torch
        from accelerate.utils import reduce

        names = sorted(counts)
        summed = reduce(torch.tensor([counts[name] for name in names], dtype=torch.int64), "sum")
        return {name: int(value) for name, value in zip(names, summed.tolist(), strict=True)}


def launched_shard(cpu: bool) -> Shard:
    """The shard of this process, from accelerate's :class:`~accelerate.PartialState`: rank 0 of 1
    when no launcher started it. `cpu`: the model runs on the CPU (the processes then talk over
    gloo). ValueError, in one line, when the environment says several processes were launched but
    accelerate sees one (a launcher convention it does not know)."""
    from accelerate import PartialState

    # A rank that finishes its share early waits for the others at the end; the default timeout of
    # collective calls (30 minutes) would end a long, uneven sweep with an error.
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    world, rank = int(state.num_processes), int(state.process_index)
    launched = os.environ.get("WORLD_SIZE")
    if world == 1 and launched is not None and launched.isdigit() and int(launched) > 1:
        raise ValueError(
            f"WORLD_SIZE is {launched} but accelerate sees one process ({state.distributed_type}); "
            "launch with torchrun or accelerate launch so that each process gets its rank"
        )
    device = None if cpu or world == 1 else str(state.device)
    return Shard(rank=rank, world=world, device=device)


def shard_paths(folder: Path, name: str) -> list[Path]:
    """Every rank's share of the run file `name` in `folder` that exists, rank 0 first."""
    ranks = {}
    for path in folder.glob(f"{Path(name).stem}*{Path(name).suffix}"):
        base, rank = shard_base(path.name)
        if base == name and path.is_file():
            ranks[rank] = path
    return [ranks[rank] for rank in sorted(ranks)]


def read_union(
    folder: Path, name: str, key: Callable[[dict[str, Any]], Hashable | None] | None = None
) -> list[tuple[Path, int, dict[str, Any]]]:
    """(file, line, record) of every record of every shard of `name`, in input order: by
    `input_index`, records without one (written before runs were sharded) first, in file order. With
    `key`, a record whose key an earlier one has is dropped with a warning naming both lines (a key
    of None is never a duplicate)."""
    found: list[tuple[Path, int, dict[str, Any]]] = [
        (path, number, record) for path in shard_paths(folder, name) for number, record in iter_jsonl(path)
    ]

    def order(item: tuple[Path, int, dict[str, Any]]) -> tuple[int, int]:
        position = item[2].get(POSITION)
        if isinstance(position, int) and not isinstance(position, bool):
            return (1, position)
        return (0, 0)

    found.sort(key=order)
    if key is None:
        return found
    seen: dict[Hashable, tuple[Path, int]] = {}
    kept = []
    for path, number, record in found:
        record_key = key(record)
        if record_key is not None and record_key in seen:
            first = seen[record_key]
            log.warning(
                "%s: line %d skipped: the same record as %s line %d", path, number, first[0], first[1]
            )
            continue
        if record_key is not None:
            seen[record_key] = (path, number)
        kept.append((path, number, record))
    return kept


def open_store(folder: Path, name: str, key_fields: tuple[str, ...], shard: Shard) -> JsonlStore:
    """The store this process appends `name`'s records to, knowing the records every other rank
    (of this run or of an earlier one with another number of processes) has finished."""
    store = JsonlStore(folder / shard.file(name), key_fields)
    others = [path for path in shard_paths(folder, name) if path.name != shard.file(name)]
    store.remember(record for path in others for _, record in iter_jsonl(path))
    return store
