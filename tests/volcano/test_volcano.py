"""The Volcano loop: decision parsing, adoption and stopping, the run directory, resuming, skipping."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import vistrace.runs.attend as attend_module
import vistrace.volcano.loop as volcano_module
from vistrace.adapters import Geometry
from vistrace.capture.generate import StageCapture
from vistrace.models.loading import LoadedModel, load
from vistrace.runs.attend import run_volcano
from vistrace.runs.attend_io import instance_dir, load_stages, read_instances, read_log
from vistrace.volcano.loop import parse_decision, run_loop
from vistrace.volcano.prompts import (
    DECISION_PROMPT,
    ENGINEERED_PROMPTS,
    FEEDBACK_PROMPT,
    ORIGINAL_PROMPTS,
    REVISION_PROMPT,
)

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; one avoids oversubscribing a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def llava(tiny_dirs: dict[str, Path]) -> LoadedModel:
    return load(tiny_dirs["llava"])


def _input_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    scene_image().save(directory / "scene.png")
    scene_image(32, 48).save(directory / "tall.png")
    records = [
        {
            "image_id": "scene",
            "image_src": "scene.png",
            "question": "What color is the circle?",
            "gold_answer": "red",
        },
        {"image_id": "gone", "image_src": "missing.png", "question": "Is it there?", "gold_answer": "no"},
        {
            "image_id": "web",
            "image_src": "http://127.0.0.1:9/x.png",
            "question": "Where?",
            "gt_answer": "left",
        },
        {"image_id": "noq", "image_src": "scene.png"},
        {
            "image_id": "tall/1",
            "image_src": str(directory / "tall.png"),
            "question": "What shape is the blue object?",
            "gt_answer": "square",
            "question_type": "shape",
        },
    ]
    path = directory / "input.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("B", "B"),
        ("a", "A"),
        ("The answer is B.", "B"),
        ("(A) is better", "A"),
        ("b) revision", "B"),
        ("Both are fine", None),
        ("ABBA", None),
        ("", None),
        ("Option B, not A", "B"),
    ],
)
def test_parse_decision(text: str, choice: str | None) -> None:
    assert parse_decision(text) == choice


def test_prompts_are_byte_exact() -> None:
    assert ORIGINAL_PROMPTS.feedback == FEEDBACK_PROMPT
    assert ORIGINAL_PROMPTS.revision == REVISION_PROMPT
    assert ENGINEERED_PROMPTS.decision == DECISION_PROMPT
    assert ENGINEERED_PROMPTS.feedback.format(question="Q", outputs="O") == (
        "Question: Q\nInitial response: O\nCritique the initial response given question and image. "
        "Please you should NOT use the term 'reference answer'!!!!!!!!!!"
    )
    assert ENGINEERED_PROMPTS.revision.format(question="Q", outputs="O", feedback="F") == (
        "Adjust the initial response considering the feedback and image.\n"
        "Question: Q\nInitial response: O\nFeedback: F"
    )


def _fake_stage(text: str) -> StageCapture:
    geometry = Geometry(torch.zeros(1, 4).numpy(), ("patch",), (), (1, 1))
    return StageCapture("", (), (1,), ("x",), text, (0,), torch.zeros(1, 1, 1, 1), geometry)


@pytest.mark.parametrize(
    ("decisions", "stop_iter", "adopted", "reason", "outputs"),
    [
        (["B", "B", "B"], 3, 3, "max_rounds", ["answer", "revision 1", "revision 2", "revision 3"]),
        (["A"], 1, None, "kept", ["answer"]),
        (["B", "A"], 2, 1, "kept", ["answer", "revision 1"]),
        (["I cannot tell"], 1, None, "unparseable", ["answer"]),
    ],
)
def test_loop_adopts_on_b_and_stops_on_a(
    decisions: list[str], stop_iter: int, adopted: int | None, reason: str, outputs: list[str]
) -> None:
    prompts: list[str] = []
    counts = {"feedback": 0, "revision": 0}

    def answer(prompt: str) -> StageCapture:
        prompts.append(prompt)
        if prompt == "Q?":
            return _fake_stage("answer")
        kind = "revision" if prompt.startswith("Adjust") else "feedback"
        counts[kind] += 1
        return _fake_stage(f"{kind} {counts[kind]}")

    pending = iter(decisions)
    result = run_loop("Q?", answer, lambda prompt: next(pending))
    assert result.stop_iter == stop_iter
    assert result.adopted_round == adopted
    assert result.stop_reason == reason
    assert list(result.outputs) == outputs
    expected_stages = ["initial"] + [
        f"{k}_{r}" for r in range(1, stop_iter + 1) for k in ("feedback", "revision")
    ]
    assert list(result.stages) == expected_stages
    if stop_iter >= 2:
        second_feedback = prompts[3]
        assert second_feedback == FEEDBACK_PROMPT.format(question="Q?", outputs=outputs[1])


def test_run_writes_skips_and_resumes(
    llava: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = _input_file(tmp_path / "data")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="vistrace.volcano.loop"):
        log_path = run_volcano(llava, source, run_dir, max_new_tokens=MAX_NEW_TOKENS, timeout=5)
    log = read_log(run_dir)
    assert log_path == run_dir / "log.json"
    entries = {entry["index"]: entry for entry in log["entries"]}
    assert sorted(entries) == [0, 1, 2, 3, 4]
    assert "no such file" in entries[1]["skipped"]
    assert "127.0.0.1" in entries[2]["skipped"]
    assert "missing question" in entries[3]["skipped"]
    assert sum("skipped instance" in r.getMessage() for r in caplog.records) == 3
    for index in (0, 4):
        entry = entries[index]
        assert 1 <= entry["stop_iter"] <= 3
        assert len(entry["feedback"]) == len(entry["revision"]) == entry["stop_iter"]
        assert entry["question_type" if index == 4 else "image_id"]
        directory = instance_dir(run_dir, index)
        assert directory.name == entry["dir"] == ("0_scene" if index == 0 else "4_tall_1")
        stages = load_stages(directory)
        expected = ["initial"] + [
            f"{k}_{r}" for r in range(1, entry["stop_iter"] + 1) for k in ("feedback", "revision")
        ]
        assert list(stages) == expected
        with safe_open(str(directory / "attention.safetensors"), framework="pt") as handle:
            names = sorted(handle.keys())
            assert names == sorted(f"{stage}.image_attention" for stage in expected)
            for name in names:
                tensor = handle.get_tensor(name)
                assert tensor.dtype == torch.float16
                assert tensor.shape[1:] == (4, 4, 16) and 1 <= tensor.shape[0] <= MAX_NEW_TOKENS
        record = json.loads((directory / "attention.json").read_text())
        stage = record["stages"]["initial"]
        assert {
            "prompt_text",
            "input_ids",
            "output_ids",
            "output_tokens",
            "text",
            "layers",
            "geometry",
        } <= set(stage)
        assert stage["prompt_text"].endswith(f"USER: <image>\n{entry['question']} ASSISTANT:")
        assert (directory / "image.png").is_file()
        assert not list(directory.glob("*.tmp"))

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished instance was run again")

    monkeypatch.setattr(attend_module, "volcano_instance", must_not_run)
    run_volcano(llava, source, run_dir, max_new_tokens=MAX_NEW_TOKENS, instance_idx=[0, 4], timeout=5)
    assert read_log(run_dir) == log
    with pytest.raises(ValueError, match="other settings"):
        run_volcano(llava, source, run_dir, max_new_tokens=MAX_NEW_TOKENS + 1)


def test_run_without_loop_and_adopted_revision(
    llava: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _input_file(tmp_path / "data")
    initial_only = run_volcano(
        llava, source, tmp_path / "plain", volcano=False, max_new_tokens=3, instance_idx=[0]
    )
    entry = read_log(initial_only.parent)["entries"][0]
    assert entry["stop_iter"] == 0 and entry["stages"] == ["initial"]
    decisions = iter(["B", "A"])
    monkeypatch.setattr(volcano_module, "generate_text", lambda *a, **k: next(decisions))
    run_volcano(llava, source, tmp_path / "adopt", engineered=True, max_new_tokens=3, instance_idx=[0])
    entry = read_log(tmp_path / "adopt")["entries"][0]
    assert entry["adopted_round"] == 1 and entry["stop_iter"] == 2 and entry["choices"] == ["B", "A"]
    assert entry["outputs"] == [entry["outputs"][0], entry["revision"][0]]
    feedback_prompt = load_stages(instance_dir(tmp_path / "adopt", 0))["feedback_2"].prompt_text
    assert f"Initial response: {entry['revision'][0]}\nCritique" in feedback_prompt


def test_read_instances_keeps_extra_keys(tmp_path: Path) -> None:
    source = _input_file(tmp_path)
    records = read_instances(source)
    assert [getattr(r, "image_id", None) for r in records] == ["scene", "gone", "web", None, "tall/1"]
    tall = records[4]
    assert not isinstance(tall, Exception)
    assert tall.gold_answer == "square" and tall.extra == {"question_type": "shape"}
    listed = tmp_path / "input.json"
    listed.write_text(json.dumps([json.loads(line) for line in source.read_text().splitlines()]))
    assert [getattr(r, "image_id", None) for r in read_instances(listed)] == [
        "scene",
        "gone",
        "web",
        None,
        "tall/1",
    ]
