"""Bad input across the commands: one clear line naming what and where, the run going on, nothing
lost, duplicated or mixed. The kinds are listed in docs/bad-input.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vistrace.cli import app
from vistrace.data.metrics import exact_match
from vistrace.images import ImageError, open_image
from vistrace.runs.attend_io import read_instances
from vistrace.runs.folder import ConfigMismatchError, read_jsonl
from vistrace.runs.scoring import build_analysis_set, score_run
from vistrace.runs.trace import export_results, trace

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

GOOD = {"image": "scene.png", "prompt": "What color is the block?", "answer": "red"}


def _data(folder: Path, rows: list[Any], prefix: bytes = b"") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    scene_image().save(folder / "scene.png")
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path = folder / "data.jsonl"
    path.write_bytes(prefix + ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _error_line(result: Any) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return str(result.stderr.strip().splitlines()[-1])


# ---- trace: wrong types, duplicates, special tokens, one bad line, a BOM -------------------------


@pytest.mark.parametrize("family", ["llava", "mllama"])
def test_trace_skips_each_bad_record_and_goes_on(tiny_models, tmp_path: Path, family: str) -> None:
    loaded = tiny_models[family]
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    placeholder = "<image>" if family == "llava" else "<|image|>"
    rows: list[Any] = [
        {"id": "ok", **GOOD},
        {"id": "text_tokens", **GOOD, "answer_tokens": "12"},
        {"id": "negative", **GOOD, "answer_tokens": [-1]},
        {"id": "float", **GOOD, "answer_tokens": [192.7]},
        {"id": "huge", **GOOD, "answer_tokens": [vocab + 5]},
        {"id": "bool", **GOOD, "answer_tokens": [True]},
        {"id": "number_answer", **GOOD, "answer": 7},
        {"id": "ok", **GOOD, "prompt": "Again?"},
        {"id": "markup", **GOOD, "prompt": f"What is {placeholder} here?"},
        {"id": "list_category", **GOOD, "category": ["a", "b"]},
        {"id": "empty_prompt", **GOOD, "prompt": "  "},
        {"id": "no_image", **GOOD, "image": "gone.png"},
        "{not json",
        {"id": "ok2", **GOOD},
    ]
    data = _data(tmp_path / "data", rows, prefix=b"\xef\xbb\xbf")
    summary = trace(loaded, data, tmp_path / "run", pathways=["image_to_last"], ks=[1])
    assert (summary.traced, summary.skipped) == (2, 12)
    reasons = {(r["id"], r["line"]): r["reason"] for r in read_jsonl(tmp_path / "run" / "skipped.jsonl")}
    assert "must be a list" in reasons[("text_tokens", 2)]
    assert "outside the vocabulary" in reasons[("negative", 3)]
    assert "non-negative integers" in reasons[("float", 4)]
    assert "outside the vocabulary" in reasons[("huge", 5)]
    assert "non-negative integers" in reasons[("bool", 6)]
    assert "`answer` must be text" in reasons[("number_answer", 7)]
    assert reasons[("ok", 8)] == "duplicate id 'ok' on lines 1 and 8"
    assert placeholder in reasons[("markup", 9)]
    assert "`category` must be text" in reasons[("list_category", 10)]
    assert "prompt" in reasons[("empty_prompt", 11)]
    assert "image not found" in reasons[("no_image", 12)]
    assert "not valid JSON" in reasons[("line13", 13)]
    results = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert sorted(r["id"] for r in results) == ["ok", "ok2"]
    again = trace(loaded, data, tmp_path / "run", pathways=["image_to_last"], ks=[1])
    assert (again.resumed, again.traced, again.skipped) == (2, 0, 12)
    assert len(read_jsonl(tmp_path / "run" / "results.jsonl")) == 2
    assert len(read_jsonl(tmp_path / "run" / "skipped.jsonl")) == 12


def test_trace_resume_with_other_settings_or_into_another_run_is_refused(tiny_models, tmp_path: Path) -> None:
    data = _data(tmp_path / "data", [{"id": "a", **GOOD}])
    run = tmp_path / "run"
    trace(tiny_models["llava"], data, run, pathways=["image_to_last"], ks=[1])
    assert json.loads((run / "config.json").read_text())["command"] == "trace"
    with pytest.raises(ConfigMismatchError, match="temperature"):
        trace(tiny_models["llava"], data, run, pathways=["image_to_last"], ks=[1], temperature=0.5)
    with pytest.raises(ConfigMismatchError, match="mode"):
        trace(tiny_models["llava"], data, run, pathways=["image_to_last"], ks=[1], mode="paper")
    with pytest.raises(ConfigMismatchError, match="model"):
        trace(tiny_models["mllama"], data, run, pathways=["image_to_last"], ks=[1])
    other = _data(tmp_path / "other", [{"id": "a", **GOOD}])
    with pytest.raises(ConfigMismatchError, match="data"):
        trace(tiny_models["llava"], other, run, pathways=["image_to_last"], ks=[1])
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "config.json").write_text(json.dumps({"command": "eval", "dataset": "jsonl"}))
    with pytest.raises(ConfigMismatchError, match="vistrace eval"):
        trace(tiny_models["llava"], data, tmp_path / "eval", pathways=["image_to_last"], ks=[1])
    assert not (tmp_path / "eval" / "skipped.jsonl").exists()
    assert len(read_jsonl(run / "results.jsonl")) == 1


def test_k_larger_than_the_model_is_refused(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    data = _data(tmp_path / "data", [{"id": "a", **GOOD}])
    model = str(tiny_dirs["llava"])
    result = _invoke(
        "trace", "--model", model, "--data", str(data), "--out", str(tmp_path / "r"), "--k", "99"
    )
    assert "larger than the model's" in _error_line(result)
    assert not (tmp_path / "r" / "results.jsonl").exists()


# ---- options checked before the model loads --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--k", "0"], "--k 0"),
        (["--k", "-3"], "--k -3"),
        (["--k", "2"], "--k 2"),
        (["--k", "x"], "--k 'x'"),
        (["--k", "3,3"], "--k repeats"),
        (["--pathways", ","], "--pathways is empty"),
        (["--pathways", "image_to_last,image_to_last"], "--pathways names"),
        (["--pathways", "nonsense"], "--pathways"),
        (["--temperature", "0"], "--temperature 0"),
        (["--temperature", "-1"], "--temperature -1"),
        (["--limit", "-1"], "--limit -1"),
        (["--strategy", "quick"], "--strategy 'quick'"),
        (["--mode", "loose"], "--mode 'loose'"),
    ],
)
def test_trace_options_fail_before_the_model_loads(tmp_path: Path, options: list[str], expected: str) -> None:
    data = _data(tmp_path / "data", [{"id": "a", **GOOD}])
    result = _invoke(
        "trace", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(tmp_path / "run"),
        *options,
    )  # fmt: skip
    line = _error_line(result)
    assert expected in line and "no-model" not in line, line


def test_out_that_is_a_file_and_eval_options_fail_before_the_model_loads(tmp_path: Path) -> None:
    data = _data(tmp_path / "data", [{"id": "a", **GOOD}])
    (tmp_path / "taken").write_text("x")
    model = str(tmp_path / "no-model")
    line = _error_line(
        _invoke("trace", "--model", model, "--data", str(data), "--out", str(tmp_path / "taken"))
    )
    assert "is a file, not a folder" in line
    common = ["eval", "--model", model, "--dataset", "jsonl", "--annotations", str(data)]
    for extra, expected in (
        (["--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["--limit", "-2"], "--limit -2"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--out", str(tmp_path / "taken")], "is a file"),
    ):
        out = [] if "--out" in extra else ["--out", str(tmp_path / "e")]
        assert expected in _error_line(_invoke(*common, *out, *extra))
    attend = ["attend", "--model", model, "--input", str(data), "--out", str(tmp_path / "a")]
    assert "--max-new-tokens 0" in _error_line(_invoke(*attend, "--max-new-tokens", "0"))
    assert "--instance-idx" in _error_line(_invoke(*attend, "--instance-idx", "1,x"))


# ---- export and plot flow: empty, bad lines, own files, colliding names ---------------------------


def _results_run(run: Path, records: list[Any]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"command": "trace"}))
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (run / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    return run


def _result(sample_id: str, category: Any = "colour", **changes: Any) -> dict[str, Any]:
    record = {
        "id": sample_id, "pathway": "image_to_last", "k": 1, "mode": "strict", "temperature": 1.0,
        "model": "m", "category": category, "dataset": "d", "p_full": 0.8, "probs": [0.4, 0.6, 0.8],
    }  # fmt: skip
    return {**record, **changes}


def test_export_and_flow_of_an_empty_run_fail_with_one_line(tmp_path: Path) -> None:
    run = _results_run(tmp_path / "run", [])
    for args in (["export", str(run)], ["plot", "flow", str(run)]):
        assert "no usable result" in _error_line(_invoke(*args))
    assert not (run / "results.csv").exists()


def test_export_never_overwrites_the_runs_files(tmp_path: Path) -> None:
    run = _results_run(tmp_path / "run", [_result("a")])
    before = (run / "results.jsonl").read_text()
    result = _invoke("export", str(run), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert (run / "results.jsonl").read_text() == before
    assert read_jsonl(run / "results.export.jsonl")[0]["id"] == "a"
    line = _error_line(_invoke("export", str(run), "--format", "jsonl", "--out", str(run / "results.jsonl")))
    assert "is a file of the run" in line
    assert (run / "results.jsonl").read_text() == before


def test_bad_result_lines_are_skipped_and_categories_never_overwrite(tmp_path: Path) -> None:
    run = _results_run(
        tmp_path / "run",
        [
            _result("a", category="a/b"),
            _result("b", category="a-b"),
            _result("c", probs="oops"),
            _result("d", category=["x", "y"]),
            _result("e", p_full=None),
            "{torn",
        ],
    )
    rows = export_results(run, tmp_path / "out.csv", "csv").read_text().splitlines()
    assert len(rows) == 3
    result = _invoke("plot", "flow", str(run), "--min-p-full", "0", "--stages", "3")
    assert result.exit_code == 0, result.output
    csvs = sorted(p.name for p in (run / "figures").glob("flow_*.csv"))
    assert len(csvs) == 2, csvs


# ---- score and build: fooled scores, missing and mistyped fields, bad lines ----------------------


def test_distinct_answers_never_match() -> None:
    assert exact_match("蓝色", "红色") == 0.0
    assert exact_match("蓝色。", "蓝色") == 1.0
    assert exact_match("", "red") == 0.0 and exact_match("?", "!") == 0.0
    assert exact_match("Blue!", "blue") == 1.0


def _predictions_run(run: Path, lines: list[Any]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"command": "eval", "dataset": "jsonl"}))
    text = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in lines]
    (run / "predictions.jsonl").write_text("".join(t + "\n" for t in text))
    (run / "skipped.jsonl").write_text('{"id": "z", "reason": "r"}\nnot json\n')
    return run


def test_score_and_build_skip_bad_records_and_never_overwrite_predictions(tmp_path: Path) -> None:
    base = {"dataset": "jsonl", "image": "i.png", "prompt": "Q?", "generated_ids": [5]}
    run = _predictions_run(
        tmp_path / "run",
        [
            {"id": "1", **base, "prediction": "红色", "answers": ["红色"]},
            {"id": "2", **base, "prediction": "蓝色", "answers": ["红色"]},
            {"id": "3", **base, "answers": ["red"]},
            {"id": "4", **base, "prediction": "red", "answers": "red"},
            {"id": "5", **base, "prediction": "red", "answers": ["red"], "generated_ids": ["5"]},
            {**base, "prediction": "red", "answers": ["red"]},
            "{broken",
        ],
    )
    table = score_run(run)
    assert (table.overall.count, table.overall.score) == (2, 0.5)
    assert table.skipped == 1
    before = (run / "predictions.jsonl").read_text()
    with pytest.raises(ValueError, match="is a file of the run"):
        build_analysis_set(run, run / "predictions.jsonl", correct_rule="score>0")
    assert (run / "predictions.jsonl").read_text() == before
    summary = build_analysis_set(run, tmp_path / "set.jsonl", correct_rule="score>0")
    assert summary.overall.kept == 1
    no_image = {"id": "6", **base, "prediction": "red", "answers": ["red"]}
    del no_image["image"]
    with (run / "predictions.jsonl").open("a") as handle:
        handle.write(json.dumps(no_image) + "\n")
    again = build_analysis_set(run, tmp_path / "set2.jsonl", correct_rule="score>0")
    assert again.overall.kept == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "set2.jsonl")] == ["1"]


# ---- images: orientation, 16-bit, bombs, empty and corrupt files ----------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = scene_image(48, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90° clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "r.jpg", exif=exif, quality=95)
    loaded = open_image(tmp_path / "r.jpg")
    assert loaded.size == (48, 32)
    assert np.abs(np.asarray(loaded, dtype=float) - np.asarray(upright, dtype=float)).mean() < 8


def test_sixteen_bit_png_is_scaled_not_white(tmp_path: Path) -> None:
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = np.asarray(open_image(tmp_path / "deep.png"))
    assert loaded.shape == (8, 8, 3) and loaded.min() == 0 and 240 < loaded.max() <= 255
    assert len(np.unique(loaded)) == 64


def test_decompression_bomb_empty_and_corrupt_files_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene_image(48, 32).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="image too large"):
        open_image(tmp_path / "big.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(tmp_path / "empty.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="unreadable"):
        open_image(tmp_path / "bad.png")


def test_trace_skips_a_decompression_bomb(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(tmp_path / "data", [{"id": "a", **GOOD}])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    summary = trace(tiny_models["llava"], data, tmp_path / "run", pathways=["image_to_last"], ks=[1])
    assert summary.skipped == 1
    assert "too large" in read_jsonl(tmp_path / "run" / "skipped.jsonl")[0]["reason"]


# ---- attend input: one bad line, wrong types -----------------------------------------------------


def test_attend_input_with_a_bad_line_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    good = {"image_id": "a", "image_src": "a.png", "question": "Q?"}
    path.write_bytes(
        b"\xef\xbb\xbf"
        + "\n".join(
            [json.dumps(good), "{broken", json.dumps({**good, "question": ["Q"]}), json.dumps(good)]
        ).encode()
    )
    records = read_instances(path)
    assert [type(r).__name__ for r in records] == ["Instance", "InstanceError", "InstanceError", "Instance"]
    assert "line 2" in str(records[1]) and "must be text" in str(records[2])


def test_generation_is_clipped_to_the_context(tiny_models, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from vistrace.capture.generate import _fitting

    loaded = tiny_models["llava"]
    context = loaded.model.config.get_text_config().max_position_embeddings
    inputs = {"input_ids": torch.zeros(1, context - 3, dtype=torch.long)}
    assert _fitting(1024, inputs, loaded) == 3
    assert "clipped to 3" in caplog.text
    assert _fitting(2, inputs, loaded) == 2


# ---- checkpoints: unknown type, no config, truncated weights ---------------------------------------


def test_bad_checkpoints_are_one_line(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    data = _data(tmp_path / "data", [{"id": "a", **GOOD}])
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "bert"}))
    text_only = tmp_path / "text_only"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "llama"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = Path(shutil.copytree(tiny_dirs["llava"], tmp_path / "truncated"))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4])
    for model, expected in (
        (unknown, "no adapter for model type 'bert'"),
        (text_only, "no adapter for model type 'llama'"),
        (empty, "no config.json"),
        (truncated, "truncated or corrupt"),
    ):
        result = _invoke("trace", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "r"))
        assert expected in _error_line(result)


# ---- seeded properties: answer comparison, reader, torn-tail repair ---------------------------------


def test_exact_match_properties() -> None:
    import random

    rng = random.Random(0)
    alphabet = "abcXYZ09 .,!?-蓝红色é\u00a0"
    for _ in range(500):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        assert exact_match(a, a) == 1.0
        assert exact_match(a, b) == exact_match(b, a)
        if exact_match(a, b) == 1.0:
            keep = [c for c in a.casefold() if c.isalnum()], [c for c in b.casefold() if c.isalnum()]
            assert keep[0] == keep[1]


def test_torn_tail_repair_properties(tmp_path: Path) -> None:
    import random

    from vistrace.runs.store import JsonlStore

    rng = random.Random(1)
    for trial in range(30):
        path = tmp_path / f"r{trial}.jsonl"
        records = [{"id": str(i), "v": "é" * rng.randint(0, 3)} for i in range(rng.randint(1, 6))]
        full = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        cut = rng.randint(0, len(full))
        path.write_bytes(full[:cut])
        store = JsonlStore(path, ("id",))
        kept = read_jsonl(path)
        assert kept == records[: len(kept)] and path.read_bytes() == full[: len(path.read_bytes())]
        store.append(records)
        assert read_jsonl(path) == records


# ---- attend and eval: special tokens, another input file, a second real process ----------------


def test_attend_skips_a_question_with_the_image_placeholder_and_refuses_another_input(
    tiny_models, tmp_path: Path
) -> None:
    from vistrace.runs.attend import run_volcano
    from vistrace.runs.attend_io import read_log

    folder = tmp_path / "data"
    folder.mkdir()
    scene_image().save(folder / "scene.png")
    good = {"image_id": "s", "image_src": "scene.png", "question": "What is red?"}
    source = folder / "input.jsonl"
    source.write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "question": "What <image> is it?"}) + "\n"
    )
    run = tmp_path / "run"
    run_volcano(tiny_models["llava"], source, run, volcano=False, max_new_tokens=2)
    entries = {e["index"]: e for e in read_log(run)["entries"]}
    assert "skipped" not in entries[0] and "<image>" in entries[1]["skipped"]
    other = folder / "other.jsonl"
    other.write_text(json.dumps(good) + "\n")
    with pytest.raises(ConfigMismatchError, match="input"):
        run_volcano(tiny_models["llava"], other, run, volcano=False, max_new_tokens=2)


def test_eval_refuses_another_input_file(tiny_models, tmp_path: Path) -> None:
    from vistrace.runs.evaluate import evaluate

    run = tmp_path / "run"
    evaluate(tiny_models["llava"], [], run, dataset="jsonl", source=tmp_path / "a.jsonl")
    with pytest.raises(ConfigMismatchError, match="input"):
        evaluate(tiny_models["llava"], [], run, dataset="jsonl", source=tmp_path / "b.jsonl")


def test_a_second_real_process_on_a_run_folder_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from vistrace.runs.folder import RunLockedError, open_run

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from vistrace.runs.folder import open_run\n"
            "with open_run(sys.argv[1], 'trace', {}):\n    print('held', flush=True); time.sleep(30)",
            str(run),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="another vistrace process"), open_run(run, "trace", {}):
            pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with open_run(run, "trace", {}):
        pass


def test_eval_skips_a_question_with_the_image_placeholder(tiny_models, tmp_path: Path) -> None:
    from vistrace.data import Example
    from vistrace.runs.evaluate import evaluate

    scene_image().save(tmp_path / "scene.png")
    examples = [
        Example(id=str(i), image=tmp_path / "scene.png", question=q, answers=("red",), dataset="jsonl")
        for i, q in enumerate(["What is red?", "What <image> is red?"])
    ]
    summary = evaluate(tiny_models["llava"], examples, tmp_path / "run", dataset="jsonl", max_new_tokens=2)
    assert (summary.generated, summary.skipped) == (1, 1)
    (skipped,) = read_jsonl(tmp_path / "run" / "skipped.jsonl")
    assert skipped["id"] == "1" and "special token(s) <image>" in skipped["reason"]
    assert [r["id"] for r in read_jsonl(tmp_path / "run" / "predictions.jsonl")] == ["0"]


# ---- interrupted runs: Ctrl-C and a full disk, then resume -----------------------------------------


def test_interrupt_and_full_disk_then_resume_lose_and_duplicate_nothing(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import vistrace.knockout.fast
    import vistrace.runs.store

    data = _data(tmp_path / "data", [{"id": f"s{i}", **GOOD} for i in range(3)])
    args = ["trace", "--model", str(tiny_dirs["llava"]), "--data", str(data), "--out", str(tmp_path / "r")]
    args += ["--pathways", "image_to_last", "--k", "1"]
    real_run = vistrace.knockout.fast.FastStrategy.clean
    calls = {"n": 0}

    def interrupted(self: Any, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(vistrace.knockout.fast.FastStrategy, "clean", interrupted)
    assert _invoke(*args).exit_code != 0
    assert [r["id"] for r in read_jsonl(tmp_path / "r" / "results.jsonl")] == ["s0"]
    monkeypatch.setattr(vistrace.knockout.fast.FastStrategy, "clean", real_run)

    def full(*a: Any, **k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vistrace.runs.store, "append_jsonl", full)
    assert "No space left on device" in _error_line(_invoke(*args))
    monkeypatch.undo()
    result = _invoke(*args)
    assert result.exit_code == 0 and "2 traced, 1 already done, 0 skipped" in result.stdout
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "r" / "results.jsonl")) == ["s0", "s1", "s2"]
