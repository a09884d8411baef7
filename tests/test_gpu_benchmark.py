"""The GPU benchmark and the CPU capture benchmark, run at tiny sizes so that neither can rot; the
real configurations they build, checked on the meta device against the published model sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from vistrace.adapters import get_adapter

pytestmark = [pytest.mark.integration]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def _output_attentions_bytes(row: dict[str, Any], self_layers: int, cross_layers: int) -> int:
    """What `output_attentions` returns for a prompt of S tokens and T new tokens, float32: every
    self-attention layer S × S at the prompt, then S + t keys per step; every cross-attention layer
    one row per query over the image keys."""
    prompt, new, heads, keys = row["prompt_tokens"], row["new_tokens"], row["heads"], row["image_keys"]
    self_scores = prompt * prompt + sum(prompt + t for t in range(1, new))
    cross_scores = (prompt + new - 1) * keys
    return 4 * heads * (self_layers * self_scores + cross_layers * cross_scores)


def test_real_configurations_have_the_published_sizes(benchmarks_on_path: None) -> None:
    import _models

    published: dict[_models.Family, int] = {"llava": 7_062_902_784, "mllama": 10_670_220_835}
    for family, parameters in published.items():  # LLaVA with Vicuna's 32,000-token vocabulary
        sizes = _models.REAL[family]
        tokenizer = _models.benchmark_tokenizer(family)
        model = _models.random_model(sizes, tokenizer, device="meta", dtype=torch.bfloat16)
        assert _models.parameter_count(model) == parameters, family
        processor = _models.processor_for(sizes, tokenizer)
        prepared = get_adapter(model).prepare(
            model, processor, _models.benchmark_image(sizes), _models.PROMPT
        )
        inputs = prepared.inputs
        if family == "llava":
            assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)
            assert prepared.image_keys is not None and len(prepared.image_keys) == sizes.image_keys == 576
        else:
            assert tuple(inputs["pixel_values"].shape) == (1, 1, 4, 3, 560, 560)
            assert int(inputs["aspect_ratio_ids"]) == 6  # [2, 2]: four real tiles
            assert sizes.image_keys == 6404
            assert model.config.text_config.cross_attention_layers == list(range(3, 40, 5))


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(BENCHMARKS / "gpu.py"), "--tiny", "--repeats", "1", "--new-tokens", "3"]
    completed = subprocess.run(
        [*command, "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "capture" in completed.stdout and "faster than naive" in completed.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["family"] for row in rows] == ["llava", "mllama"]
    for row in rows:
        assert row["failures"] == {}
        assert all(seconds > 0 for seconds in row["seconds"].values())
        assert row["naive_layer_evals"] > row["fast_layer_evals"]
        assert row["fast_naive_max_relative_difference"] < 1e-4
        layers = 2 if row["family"] == "mllama" else 4
        heads = 4
        assert row["kept_bytes"]["capture"] == 3 * layers * heads * row["image_keys"] * 4


def test_capture_benchmark_runs_tiny(benchmarks_on_path: None, tmp_path: Path) -> None:
    import capture as capture_benchmark

    out = tmp_path / "capture.json"
    rows = capture_benchmark.main(
        ["--tiny", "--repeats", "1", "--new-tokens", "3", "--threads", "1", "--json", str(out)]
    )
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    assert [row["family"] for row in rows] == ["llava", "mllama"]
    for row in rows:
        layers = {"llava": (4, 0), "mllama": (8, 2)}[row["family"]]
        captured = row["captured_layers"]
        assert captured == (layers[1] or layers[0])
        expected_capture = row["new_tokens"] * captured * row["heads"] * row["image_keys"] * 4
        assert row["kept_bytes"]["capture"] == expected_capture
        assert row["kept_bytes"]["output_attentions"] == _output_attentions_bytes(row, *layers)
        assert all(seconds > 0 for seconds in row["seconds"].values())
        if capture_benchmark.can_measure_rss():
            assert all(rise > 0 for rise in row["rss_rise_kib"].values())


def test_packing_benchmark_runs_tiny(benchmarks_on_path: None, tmp_path: Path) -> None:
    import packing

    out = tmp_path / "packing.json"
    rows = packing.main(["--tiny", "--samples", "4", "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
    assert [row["model"] for row in rows] == ["tiny LLaVA", "tiny Mllama"]
    for row in rows:
        assert row["rerun_calls"]["packed"] < row["rerun_calls"]["alone"]
        assert row["max_relative_difference"] < 1e-5
        assert all(seconds > 0 for seconds in row["seconds_per_sample"].values())
