"""TextVQA, ChartQA and COCO captions through the CLI on a tiny model: eval -> score -> build -> trace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vistrace.cli import app
from vistrace.data import read_dataset
from vistrace.data.metrics import metric_for

pytestmark = [pytest.mark.integration]

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"
CASES = {
    "textvqa": ("textvqa_val_example.json", None, "textvqa_accuracy"),
    "chartqa": ("chartqa_test_human_example.json", None, "relaxed_accuracy"),
    "coco": ("coco_karpathy_example.json", "test,val", "exact_match"),
}


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"vistrace {' '.join(args)}:\n{result.output}\n{result.exception!r}"
    return result.stdout


def _with_images(dataset: str, tmp_path: Path) -> Path:
    """The format example copied next to drawn images at the paths its reader resolves."""
    name, split, _ = CASES[dataset]
    data = tmp_path / name
    shutil.copy(FORMATS / name, data)
    for example in read_dataset(dataset, data, split=split).examples:
        example.image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 28), (200, 40, 40)).save(example.image)
    return data


@pytest.mark.parametrize("model_name", ["tiny", "demo:llava"])
@pytest.mark.parametrize("dataset", CASES)
def test_eval_score_build_trace(
    dataset: str, model_name: str, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    _, split, metric = CASES[dataset]
    assert metric_for(dataset).name == metric
    data = _with_images(dataset, tmp_path)
    run = tmp_path / "eval"
    model = str(tiny_dirs["llava"]) if model_name == "tiny" else model_name
    split_option = ["--split", split] if split else []
    _invoke("eval", "--model", model, "--dataset", dataset, "--annotations", str(data), "--out", str(run),
            "--max-new-tokens", "3", "--limit", "2", *split_option)  # fmt: skip
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and all(p["dataset"] == dataset for p in predictions)
    assert metric in _invoke("score", str(run))
    rule = "generated" if dataset == "coco" else "score>=0"
    _invoke("build", str(run), "--out", str(tmp_path / "trace.jsonl"), "--rule", rule)
    samples = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    trace_input, traced = str(tmp_path / "trace.jsonl"), str(tmp_path / "trace")
    _invoke("trace", "--model", model, "--data", trace_input, "--out", traced, "--k", "3",
            "--pathways", "image_to_last", "--score", "geometric", "--layer-probs")  # fmt: skip
    results = [json.loads(line) for line in (tmp_path / "trace" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 and all(r["score"] == "geometric" for r in results)
    assert len((tmp_path / "trace" / "layer_probs.jsonl").read_text().splitlines()) == 2
    _invoke("plot", "flow", traced, "--min-p-full", "0", "--by-word")
    assert list((tmp_path / "trace").rglob("words_*.png"))


def test_paper_rule_for_coco_is_refused_with_one_line(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    data = _with_images("coco", tmp_path)
    run = tmp_path / "eval"
    _invoke("eval", "--model", str(tiny_dirs["llava"]), "--dataset", "coco", "--annotations", str(data),
            "--out", str(run), "--max-new-tokens", "2", "--limit", "1")  # fmt: skip
    result = CliRunner().invoke(
        app, ["build", str(run), "--out", str(tmp_path / "t.jsonl"), "--rule", "paper"]
    )
    assert result.exit_code == 1
    assert "generated" in result.output and "Traceback" not in result.output
