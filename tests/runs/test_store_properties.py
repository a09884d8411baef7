"""Property-based tests (hypothesis) of the run folders' JSONL files: a write cut anywhere in its
last line loses that line only, and the next append never merges into it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vistrace.runs.folder import append_jsonl, read_jsonl, repair_tail

pytestmark = [pytest.mark.unit]

values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
records = st.lists(
    st.dictionaries(st.text(min_size=1, max_size=6), values, max_size=4), min_size=1, max_size=6
)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records, records, st.data())
def test_a_torn_last_line_is_dropped_and_the_rest_kept(
    tmp_path: Path, first: list[dict[str, object]], later: list[dict[str, object]], data: st.DataObject
) -> None:
    path = tmp_path / "results.jsonl"
    path.unlink(missing_ok=True)
    append_jsonl(path, first)
    payload = path.read_bytes()
    last_line = len(json.dumps(first[-1], ensure_ascii=False).encode("utf-8")) + 1
    cut = data.draw(st.integers(len(payload) - last_line + 1, len(payload) - 1), label="cut")
    path.write_bytes(payload[:cut])  # a write interrupted inside the last record

    assert repair_tail(path) == cut - (len(payload) - last_line)
    assert read_jsonl(path) == first[:-1]
    append_jsonl(path, later)
    assert read_jsonl(path) == first[:-1] + later
    assert repair_tail(path) == 0


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records)
def test_complete_files_are_left_alone(tmp_path: Path, written: list[dict[str, object]]) -> None:
    path = tmp_path / "results.jsonl"
    path.unlink(missing_ok=True)
    append_jsonl(path, written)
    before = path.read_bytes()
    assert repair_tail(path) == 0
    assert path.read_bytes() == before
    assert read_jsonl(path) == written
