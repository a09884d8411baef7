"""The HTML report: built from real `attend`, `trace` and `eval` runs of the tiny models, checked as
a file (self-contained, escaped, numbers that match `vistrace.capture.pooling`) and in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vistrace.capture.pooling import pool_tokens
from vistrace.cli import app
from vistrace.report import detect_kind, write_report
from vistrace.report.encode import dequantize_rows, image_data_uri, quantize_rows, script_json
from vistrace.runs.attend_io import load_stages

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
INJECTION = '<script>window.__pwned=1</script> "><img src=x onerror="window.__pwned=2"> \u2028 </script>'
DATA_RE = re.compile(r'<script type="application/json" id="vistrace-data">(.*?)</script>', re.S)


def _invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"vistrace {' '.join(args)}:\n{result.output}\n{result.exception!r}"


def _inputs(folder: Path) -> dict[str, Path]:
    """Input files of the three commands; every text field of the first sample is an injection."""
    folder.mkdir(parents=True, exist_ok=True)
    scene_image(48, 32).save(folder / "wide.png")
    scene_image(32, 48).save(folder / "tall.png")
    questions = [f"What is {INJECTION}?", "What shape?"]
    attend = [
        {"image_id": "wide", "image_src": "wide.png", "question": questions[0], "gold_answer": INJECTION},
        {"image_id": "tall", "image_src": "tall.png", "question": questions[1], "gold_answer": "square"},
    ]
    trace = [
        {"id": f"s{i}", "image": image, "prompt": q, "answer": "red", "category": ["color", "shape"][i]}
        for i, (image, q) in enumerate(zip(("wide.png", "tall.png"), questions, strict=True))
    ]
    evals = [
        {"id": str(i), "image": image, "question": q, "answers": [INJECTION], "category": "c"}
        for i, (image, q) in enumerate(zip(("wide.png", "tall.png"), questions, strict=True))
    ]
    paths = {"attend": folder / "attend.json", "trace": folder / "trace.jsonl", "eval": folder / "eval.jsonl"}
    paths["attend"].write_text(json.dumps(attend), encoding="utf-8")
    paths["trace"].write_text("".join(json.dumps(r) + "\n" for r in trace), encoding="utf-8")
    paths["eval"].write_text("".join(json.dumps(r) + "\n" for r in evals), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def runs(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    inputs = _inputs(root / "data")
    llava, mllama = str(tiny_dirs["llava"]), str(tiny_dirs["mllama"])
    out = {name: root / name for name in ("attend_llava", "attend_mllama", "trace", "eval")}
    common = ["--input", str(inputs["attend"]), "--max-new-tokens", "3"]
    _invoke("attend", "--model", llava, *common, "--out", str(out["attend_llava"]))
    _invoke("attend", "--model", mllama, *common, "--no-volcano", "--out", str(out["attend_mllama"]))
    _invoke(
        "trace", "--model", llava, "--data", str(inputs["trace"]), "--out", str(out["trace"]),
        "--pathways", "image_to_last,question_to_last", "--k", "1",
    )  # fmt: skip
    _invoke(
        "eval", "--model", llava, "--dataset", "jsonl", "--annotations", str(inputs["eval"]),
        "--out", str(out["eval"]), "--max-new-tokens", "3",
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def report(runs: dict[str, Path]) -> Path:
    path = write_report(list(runs.values()), runs["trace"].parent / "out" / "report.html", layer_groups=2)
    print(f"report: {path} ({path.stat().st_size / 1e3:.1f} kB)")
    return path


def _data(page: str) -> dict[str, Any]:
    match = DATA_RE.search(page)
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_quantized_rows_round_trip() -> None:
    values = np.abs(np.random.default_rng(0).normal(size=(5, 7)))
    values[2] = 0.0
    packed = quantize_rows(values)
    step = np.asarray(packed["scale"])[:, None] / 255.0
    assert np.all(np.abs(dequantize_rows(packed) - values) <= step / 2 + 1e-6)
    assert "<" not in script_json({"a": "</script><!--"}) and "\u2028" not in script_json("\u2028")


def test_images_are_png_or_a_smaller_jpeg() -> None:
    rows, cols = np.mgrid[0:200, 0:300]
    noise = np.random.default_rng(0).normal(0, 12, (200, 300, 3))
    photo = np.stack([cols * 0.8, rows * 1.2, (rows + cols) * 0.5], -1) + noise
    assert image_data_uri(Image.fromarray(photo.clip(0, 255).astype("uint8"))).startswith("data:image/jpeg")
    assert image_data_uri(scene_image(600, 400)).startswith("data:image/png")


def test_kinds_are_detected(runs: dict[str, Path], tmp_path: Path) -> None:
    kinds = {name: detect_kind(path) for name, path in runs.items()}
    assert kinds == {"attend_llava": "attend", "attend_mllama": "attend", "trace": "trace", "eval": "eval"}
    with pytest.raises(ValueError, match="not a vistrace run folder"):
        detect_kind(tmp_path)


def test_one_self_contained_file_with_escaped_text(report: Path) -> None:
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script>window.__pwned" not in page and 'onerror="window' not in page
    assert page.count("</script>") == 2 and "\u2028" not in page
    data = _data(page)
    assert [run["kind"] for run in data["runs"]] == ["attend", "attend", "trace", "eval"]
    first = data["runs"][0]["instances"][0]
    assert first["question"] == f"What is {INJECTION}?"
    assert re.match(r"data:image/(png|jpeg);base64,", first["image"])
    trace = data["runs"][2]
    assert {r["pathway"] for r in trace["results"]} == {"image_to_last", "question_to_last"}
    assert trace["samples"][0]["question"] == f"What is {INJECTION}?"
    assert all(s["image"].startswith("data:image/png;base64,") for s in trace["samples"])
    evaluation = data["runs"][3]
    assert evaluation["metric"] == "exact_match" and evaluation["scores"][0]["category"] == "overall"
    assert all(m["answers"] == [INJECTION] for m in evaluation["mistakes"])
    assert all(m["image"].startswith("data:image/png;base64,") for m in evaluation["mistakes"])


def test_token_maps_match_pooling(report: Path, runs: dict[str, Path]) -> None:
    data = _data(report.read_text(encoding="utf-8"))
    for run, folder in zip(data["runs"][:2], (runs["attend_llava"], runs["attend_mllama"]), strict=True):
        assert run["pools"] == ["top_k_mean", "mean", "max"]
        for instance in run["instances"]:
            directory = next(folder.glob(f"{instance['index']}_*"))
            stages = load_stages(directory)
            assert list(instance["stages"]) == list(stages)
            for name, stage in instance["stages"].items():
                geometry = run["geometries"][stage["geometry"]]
                assert len(geometry["boxes"]) == 4 * stages[name].geometry.num_features
                assert len(stage["pieces"]) == stages[name].num_tokens
                for pool in run["pools"]:
                    expected = pool_tokens(stages[name].image_attention, pool, run["top_k"]).numpy()
                    packed = stage["maps"][pool]
                    step = np.asarray(packed["scale"])[:, None] / 255.0
                    got = dequantize_rows(packed)
                    assert got.shape == expected.shape
                    assert np.all(np.abs(got - expected) <= step / 2 + 1e-5 * step + 1e-9)
    assert data["runs"][0]["figure5"]["maps"]["initial"]


def _chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--virtual-time-budget=3000", *args,
        ],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    done = _chromium(profile, "--dump-dom", report.as_uri() + "#selftest")
    match = re.search(r'<pre id="selftest-result">(.*?)</pre>', done.stdout, re.S)
    assert match is not None, done.stderr[-2000:]
    result = json.loads(html.unescape(match.group(1)))
    assert result["errors"] == [] and result["pwned"] is None
    assert result["tokens"] > 0 and len(result["overlays"]) == 2  # llava, mllama
    for overlay in result["overlays"]:
        assert overlay["before"] == 0 and overlay["after"] > 0 and overlay["selected"] == 1
        assert overlay["group"] > 0  # the map of the first layer group is drawn
    assert any(overlay["changed"] for overlay in result["overlays"])
    assert result["sample_lines"] == 2 and result["sample_image"]  # a row shows its curves and image
    assert result["flow_lines_unfiltered"] == 2  # one line per pathway (tiny models: p_full < 0.5)
    shot = tmp_path / "report.png"  # the page after the self-test clicked its first token
    _chromium(profile, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri() + "#selftest")
    assert shot.is_file() and shot.stat().st_size > 0


def test_fewer_poolings_make_a_smaller_file(runs: dict[str, Path], report: Path, tmp_path: Path) -> None:
    small = write_report([runs["attend_mllama"]], tmp_path / "small.html", pools=["max"])
    run = _data(small.read_text(encoding="utf-8"))["runs"][0]
    assert run["pools"] == ["max"] and all(
        list(stage["maps"]) == ["max"]
        for instance in run["instances"]
        for stage in instance["stages"].values()
    )
    assert small.stat().st_size < report.stat().st_size
    with pytest.raises(ValueError, match="unknown pooling method"):
        write_report([runs["attend_mllama"]], tmp_path / "bad.html", pools=["median"])
    with pytest.raises(ValueError, match="not a vistrace run folder"):
        write_report([tmp_path], tmp_path / "none.html")


def test_layer_groups(runs: dict[str, Path], tmp_path: Path) -> None:
    folder = runs["attend_llava"]
    page = write_report([folder], tmp_path / "groups.html", pools=["top_k_mean"], layer_groups=2)
    run = _data(page.read_text(encoding="utf-8"))["runs"][0]
    instance = run["instances"][0]
    stages = load_stages(next(folder.glob(f"{instance['index']}_*")))
    stage, data = stages["initial"], instance["stages"]["initial"]
    half = round(len(stage.layers) / 2)
    labels = [f"{stage.layers[0]}-{stage.layers[half - 1]}", f"{stage.layers[half]}-{stage.layers[-1]}"]
    assert len(stage.layers) >= 2 and list(data["groups"]) == labels
    for label, part in zip(labels, (slice(0, half), slice(half, None)), strict=True):
        expected = pool_tokens(stage.image_attention[:, part], "top_k_mean", run["top_k"]).numpy()
        packed = data["groups"][label]["top_k_mean"]
        step = np.asarray(packed["scale"])[:, None] / 255.0
        assert np.all(np.abs(dequantize_rows(packed) - expected) <= step / 2 + 1e-5 * step + 1e-9)
