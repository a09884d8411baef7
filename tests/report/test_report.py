"""The HTML report: built from real `attend`, `trace` and `eval` runs of the tiny models, checked as
a file (self-contained, escaped, numbers that match `vistrace.capture.pooling`) and in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import pool_tokens
from vistrace.cli import app
from vistrace.plots.attention_maps import draw_order, normalized_raster, stage_map
from vistrace.report import POOLS, detect_kind, write_report
from vistrace.report.attend import _figure5_stages, layer_groups, map_sets, stage_maps, stored_sets
from vistrace.report.encode import (
    MAP_BITS,
    dequantize_rows,
    image_data_uri,
    pack_maps,
    quantize_rows,
    script_json,
    unpack_maps,
)
from vistrace.runs.attend_io import load_stages, read_log

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
    """The report with the default settings: three poolings, all layers and three layer groups."""
    path = write_report(list(runs.values()), runs["trace"].parent / "out" / "report.html")
    print(f"report: {path} ({path.stat().st_size / 1e3:.1f} kB)")
    return path


def _data(page: str) -> dict[str, Any]:
    match = DATA_RE.search(page)
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def _assert_maps_match(
    maps: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    stage: StageCapture,
    pools: list[str],
    groups: int,
    bits: int,
) -> None:
    """`maps` ((layer set, pooling) → decoded values and row scales) are the pooling of `stage` on
    every layer set and head pooling, each value within half a quantisation step of its row
    (float32 rounding aside)."""
    sets = map_sets(stage, groups)
    assert set(maps) == {(label, pool) for label, _ in sets for pool in pools}
    for label, part in sets:
        attention = stage.image_attention if part is None else stage.image_attention[:, part]
        for pool in pools:
            values, scales = maps[label, pool]
            expected = pool_tokens(attention, pool, 3).numpy().astype(np.float64)
            assert values.shape == expected.shape == (stage.num_tokens, stage.geometry.num_features)
            step = np.asarray(scales)[:, None] / ((1 << bits) - 1)
            assert np.all(np.abs(values - expected) <= step / 2 + 1e-5 * step + 1e-9), (label, pool)


def test_quantized_rows_round_trip() -> None:
    values = np.abs(np.random.default_rng(0).normal(size=(5, 7)))
    values[2] = 0.0
    packed = quantize_rows(values)
    step = np.asarray(packed["scale"])[:, None] / 255.0
    assert np.all(np.abs(dequantize_rows(packed) - values) <= step / 2 + 1e-6)
    assert "<" not in script_json({"a": "</script><!--"}) and "\u2028" not in script_json("\u2028")


@pytest.mark.parametrize("bits", [1, 4, 5, 8])
def test_packed_maps_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    maps = [np.abs(rng.normal(size=(5, 7))) ** 3 for _ in range(3)]
    maps[1][2] = 0.0
    packed = pack_maps(maps, bits)
    assert (packed["rows"], packed["cols"], packed["sets"], packed["bits"]) == (5, 7, 3, bits)
    values, scales = unpack_maps(packed)
    maxima = np.stack([m.max(axis=1) for m in maps])
    maxima[1][2] = 1.0  # an all-zero row has scale 1
    assert np.array_equal(scales, maxima.astype(np.float32).astype(np.float64))
    step = scales[:, :, None] / ((1 << bits) - 1)
    assert np.all(np.abs(values - np.stack(maps)) <= step / 2 + 1e-6 * step)
    with pytest.raises(ValueError, match="bits"):
        pack_maps(maps, 9)


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
        assert run["pools"] == ["top_k_mean", "mean", "max"] and run["bits"] == MAP_BITS
        for instance in run["instances"]:
            directory = next(folder.glob(f"{instance['index']}_*"))
            stages = load_stages(directory)
            assert list(instance["stages"]) == list(stages)
            for name, stage in instance["stages"].items():
                geometry = run["geometries"][stage["geometry"]]
                assert len(geometry["boxes"]) == 4 * stages[name].geometry.num_features
                assert geometry["order"] == draw_order(stages[name].geometry).tolist()
                assert len(stage["pieces"]) == stages[name].num_tokens
                labels = [label for label, _ in layer_groups(stages[name].layers, 3)]
                assert stage["maps"]["groups"] == ["all", *labels]
                assert stage["maps"]["stored"] == [
                    list(k) for k in stored_sets(stage["maps"]["groups"], POOLS)
                ]
                assert ["all", "max"] not in stage["maps"]["stored"]  # the groups' maximum
                _assert_maps_match(stage_maps(stage["maps"]), stages[name], run["pools"], 3, MAP_BITS)
    assert data["runs"][0]["figure5"]["maps"]["initial"]


def _chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--virtual-time-budget=3000", *args,
        ],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_in_headless_chromium(report: Path, runs: dict[str, Path], tmp_path: Path) -> None:
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
        assert overlay["layer_options"] >= 3 and overlay["group"] > 0  # the first layer group is drawn
    assert any(overlay["changed"] for overlay in result["overlays"])
    assert result["sample_lines"] == 2 and result["sample_image"]  # a row shows its curves and image
    assert result["flow_lines_unfiltered"] == 2  # one line per pathway (tiny models: p_full < 0.5)
    # The page's own decoder (inflate in the browser, bit planes, scales) gives the pooling's maps.
    decoded = result["decoded"]
    stages = load_stages(next(runs["attend_llava"].glob("0_*")))
    assert decoded["run"] == "attend_llava" and decoded["stage"] == next(iter(stages))
    instance = _data(report.read_text(encoding="utf-8"))["runs"][0]["instances"][0]
    scales = {key: maps[1] for key, maps in stage_maps(instance["stages"][decoded["stage"]]["maps"]).items()}
    shape = (stages[decoded["stage"]].num_tokens, stages[decoded["stage"]].geometry.num_features)
    in_page = {
        (label, pool): (np.asarray(values, dtype=np.float64).reshape(shape), scales[label, pool])
        for (label, pool), values in zip(decoded["sets"], decoded["values"], strict=True)
    }
    _assert_maps_match(in_page, stages[decoded["stage"]], ["top_k_mean", "mean", "max"], 3, MAP_BITS)
    assert result["overlays"][0]["map_ms"] >= 0 and result["decode_ms"] >= 0
    shot = tmp_path / "report.png"  # the page after the self-test clicked its first token
    _chromium(profile, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri() + "#selftest")
    assert shot.is_file() and shot.stat().st_size > 0


def test_fewer_poolings_groups_and_bits_make_a_smaller_file(
    runs: dict[str, Path], report: Path, tmp_path: Path
) -> None:
    small = write_report([runs["attend_mllama"]], tmp_path / "small.html", pools=["max"])
    run = _data(small.read_text(encoding="utf-8"))["runs"][0]
    assert run["pools"] == ["max"] and all(
        stage["maps"]["stored"] == [[label, "max"] for label in stage["maps"]["groups"][1:]]
        for instance in run["instances"]
        for stage in instance["stages"].values()
    )
    assert small.stat().st_size < report.stat().st_size
    folder = runs["attend_llava"]
    sizes = {}
    for groups, bits in ((0, 4), (3, 4), (3, 8), (3, 2)):
        page = write_report([folder], tmp_path / f"g{groups}b{bits}.html", layer_groups=groups, bits=bits)
        sizes[groups, bits] = page.stat().st_size
        run = _data(page.read_text(encoding="utf-8"))["runs"][0]
        instance = run["instances"][0]
        stages = load_stages(next(folder.glob(f"{instance['index']}_*")))
        for name, stage in instance["stages"].items():
            _assert_maps_match(stage_maps(stage["maps"]), stages[name], run["pools"], groups, bits)
    assert sizes[0, 4] < sizes[3, 4] and sizes[3, 2] < sizes[3, 4] < sizes[3, 8]
    with pytest.raises(ValueError, match="unknown pooling method"):
        write_report([runs["attend_mllama"]], tmp_path / "bad.html", pools=["median"])
    with pytest.raises(ValueError, match="bits"):
        write_report([runs["attend_mllama"]], tmp_path / "bad.html", bits=0)
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
    assert len(stage.layers) >= 2 and data["maps"]["groups"] == ["all", *labels]
    maps = stage_maps(data["maps"])
    for label, part in zip(["all", *labels], (slice(None), slice(0, half), slice(half, None)), strict=True):
        values, scales = maps[label, "top_k_mean"]
        expected = pool_tokens(stage.image_attention[:, part], "top_k_mean", run["top_k"]).numpy()
        step = scales[:, None] / ((1 << run["bits"]) - 1)
        assert np.all(np.abs(values - expected) <= step / 2 + 1e-5 * step + 1e-9)


def test_figure5_is_the_mean_of_the_stage_maps(report: Path, runs: dict[str, Path]) -> None:
    """Figure 5 from the page's per-token maps equals it from the captures (`stage_map`, EOS dropped)."""
    figure5 = _data(report.read_text(encoding="utf-8"))["runs"][0]["figure5"]
    entries = [e for e in read_log(runs["attend_llava"])["entries"] if e.get("dir")]
    chosen = [e for e in entries if e.get("adopted_round")] or entries
    assert figure5["n"] == len(chosen)
    for pool in POOLS:
        rasters: dict[str, list[np.ndarray]] = {}
        for entry in chosen:
            stages = load_stages(runs["attend_llava"] / entry["dir"])
            for group, name in _figure5_stages(entry, list(stages)).items():
                values = stage_map(stages[name], pool, 3, "mean", None)
                rasters.setdefault(group, []).append(normalized_raster(values, stages[name].geometry))
        for group, stack in rasters.items():
            expected = np.nanmean(np.stack(stack), axis=0).reshape(1, -1)
            packed = figure5["maps"][group][pool]
            step = packed["scale"][0] / 255.0
            got = dequantize_rows(packed)
            assert np.all(np.abs(got - np.nan_to_num(expected)) <= step / 2 + 1e-5 * step + 1e-9), (
                group,
                pool,
            )


def test_report_size_benchmark_runs_tiny(tmp_path: Path) -> None:
    """benchmarks/report_size.py --tiny: synthetic runs through the real writers, the default report,
    its size and (with Chromium) its load in the browser, so that the benchmark cannot rot."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "report_size.py"
    shown = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "--instances" in shown.stdout
    out = tmp_path / "size.json"
    done = subprocess.run(
        [sys.executable, str(script), "--tiny", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| realistic |" in done.stdout and "| uniform |" in done.stdout
    rows = {row["maps"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"realistic", "uniform"}
    for row in rows.values():
        assert row["instances"] == 3 and row["file_mb"] > row["maps_mb"] > 0 and row["images_mb"] > 0
        if CHROMIUM.is_file():
            assert row["errors"] == [] and row["overlay_drawn"]
            assert row["ready_ms"] > 0 and row["largest_contentful_paint_ms"] > 0
    assert rows["realistic"]["maps_mb"] < rows["uniform"]["maps_mb"]  # noise is the worst case
