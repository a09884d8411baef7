"""The files of a sharded run: names per rank, ownership of samples, the union read in input order,
stores that know every rank's records, the attention log merged from rank logs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import accelerate
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vistrace.report import detect_kind
from vistrace.runs.attend_io import rank_log, read_log
from vistrace.runs.folder import append_jsonl, check_writable_target, shard_base, shard_name
from vistrace.runs.shard import POSITION, Shard, launched_shard, open_store, read_union, shard_paths

pytestmark = [pytest.mark.unit]

RUN_FILES = ("results.jsonl", "predictions.jsonl", "skipped.jsonl", "layer_probs.jsonl", ".vistrace.lock")


@given(st.sampled_from(RUN_FILES), st.integers(0, 10_000))
def test_a_rank_file_names_its_run_file_and_rank(name: str, rank: int) -> None:
    written = shard_name(name, rank)
    assert shard_base(written) == (name, rank)
    assert (written == name) == (rank == 0)


@given(st.integers(1, 9), st.integers(0, 500))
def test_every_sample_belongs_to_exactly_one_rank(world: int, position: int) -> None:
    owners = [rank for rank in range(world) if Shard(rank, world).owns(position)]
    assert owners == [position % world]


def test_a_shard_outside_its_world_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 of 2 processes"):
        Shard(2, 2)


def test_the_union_is_in_input_order_without_duplicates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    append_jsonl(
        tmp_path / "results.jsonl", [{"id": "old"}, {"id": "a", POSITION: 0}, {"id": "c", POSITION: 2}]
    )
    append_jsonl(tmp_path / "results.rank-1.jsonl", [{"id": "b", POSITION: 1}, {"id": "d", POSITION: 3}])
    append_jsonl(tmp_path / "results.rank-2.jsonl", [{"id": "c", POSITION: 2}])  # left by an earlier run
    (tmp_path / "results.rank-2.jsonl").open("a").write('{"id": "e", "posi')  # a torn last line
    (tmp_path / "results.export.jsonl").write_text('{"id": "x"}\n')  # not a shard

    assert [p.name for p in shard_paths(tmp_path, "results.jsonl")] == [
        "results.jsonl",
        "results.rank-1.jsonl",
        "results.rank-2.jsonl",
    ]
    with caplog.at_level(logging.WARNING):
        union = read_union(tmp_path, "results.jsonl", key=lambda record: record["id"])
    assert [record["id"] for _, _, record in union] == ["old", "a", "b", "c", "d"]
    assert [m for m in caplog.messages if "results.rank-2.jsonl: line 1 skipped" in m]
    assert len(read_union(tmp_path, "results.jsonl")) == 6, "without a key every record is kept"


def test_a_store_knows_what_every_rank_finished(tmp_path: Path) -> None:
    append_jsonl(tmp_path / "results.jsonl", [{"id": "a"}])
    append_jsonl(tmp_path / "results.rank-2.jsonl", [{"id": "b"}])
    store = open_store(tmp_path, "results.jsonl", ("id",), Shard(1, 2))
    assert store.path.name == "results.rank-1.jsonl"
    assert store.done({"id": "a"}) and store.done({"id": "b"}) and not store.done({"id": "c"})
    store.append([{"id": "b"}, {"id": "c"}])
    assert [record["id"] for _, _, record in read_union(tmp_path, "results.jsonl")] == ["a", "c", "b"]


def _log(path: Path, entries: list[dict[str, Any]], mtime: int) -> None:
    path.write_text(json.dumps({"config": {"seed": 0}, "entries": entries}), encoding="utf-8")
    os.utime(path, ns=(mtime, mtime))


def test_the_attention_log_merges_rank_logs_newest_last(tmp_path: Path) -> None:
    _log(tmp_path / "log.json", [{"index": 0, "v": "merged"}, {"index": 1, "v": "merged"}], 1_000)
    _log(rank_log(tmp_path, 3), [{"index": 1, "v": "stale"}, {"index": 4, "v": "stale"}], 2_000)
    _log(rank_log(tmp_path, 0), [{"index": 1, "v": "new"}, {"index": 2, "v": "new"}], 3_000)
    log = read_log(tmp_path)
    assert log["config"] == {"seed": 0}
    assert [(e["index"], e["v"]) for e in log["entries"]] == [
        (0, "merged"),
        (1, "new"),
        (2, "new"),
        (4, "stale"),
    ]
    assert detect_kind(tmp_path) == "attend"
    (tmp_path / "log.json").unlink()
    assert len(read_log(tmp_path)["entries"]) == 3, "rank logs alone are read too"


def test_a_run_with_only_rank_files_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"command": "trace"}))
    append_jsonl(tmp_path / "results.rank-1.jsonl", [{"id": "a"}])
    assert detect_kind(tmp_path) == "trace"
    with pytest.raises(ValueError, match="is a file of the run"):
        check_writable_target(tmp_path / "results.rank-1.jsonl")


class _State:
    """accelerate's state as a launcher it does not know would leave it: one process."""

    num_processes, process_index, distributed_type = 1, 0, "NO"

    def __init__(self, cpu: bool = False, **kwargs: Any) -> None:
        self.cpu = cpu


def test_a_launch_accelerate_does_not_see_stops_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accelerate, "PartialState", _State)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="WORLD_SIZE is 4 but accelerate sees one process"):
        launched_shard(cpu=True)
    monkeypatch.delenv("WORLD_SIZE")
    assert launched_shard(cpu=True) == Shard(0, 1)
