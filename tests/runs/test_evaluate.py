"""Evaluation runs on tiny checkpoints of both families, resume, bad examples, scoring and the correct set."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from vistrace.data import Example, load_image, read_vqav2, shuffle_options, visual7w_prompt, vqav2_prompt
from vistrace.demo.world import make_split
from vistrace.demo.writers import write_vqav2
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import FAMILIES
from vistrace.roles import render_prompt
from vistrace.runs.evaluate import ConfigMismatchError, EvalSummary, evaluate, read_jsonl
from vistrace.runs.scoring import build_analysis_set, is_correct, score_record, score_run, summary_path

pytestmark = [pytest.mark.integration]

BATCH = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny matmuls gain nothing from more, and a busy machine makes them crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vqa_examples(tmp_path_factory: pytest.TempPathFactory) -> list[Example]:
    """The 18 questions of a 6-scene synthetic split in the VQAv2 format."""
    root = tmp_path_factory.mktemp("vqa")
    files = write_vqav2(make_split(6, seed=0), root)
    result = read_vqav2(files.questions, files.annotations, root / "images")
    assert result.skipped == []
    return result.examples


@pytest.fixture(scope="module")
def runs(
    tiny_models: dict[str, LoadedModel], vqa_examples: list[Example], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, int], Path]:
    """Run folders of a full VQAv2 evaluation per (family, batch size) for batch sizes 4 and 1."""
    root = tmp_path_factory.mktemp("runs")
    out: dict[tuple[str, int], Path] = {}
    for family in FAMILIES:
        for batch_size in (BATCH, 1):
            run_dir = root / f"{family}-b{batch_size}"
            evaluate(tiny_models[family], vqa_examples, run_dir, dataset="vqav2", batch_size=batch_size)
            out[family, batch_size] = run_dir
    return out


def _records(run_dir: Path) -> dict[str, dict[str, Any]]:
    records = read_jsonl(run_dir / "predictions.jsonl")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate ids in predictions.jsonl"
    return {r["id"]: r for r in records}


@pytest.mark.parametrize("family", FAMILIES)
def test_records_hold_the_paper_prompt_and_the_model_tokens(
    family: str, runs: dict[tuple[str, int], Path], vqa_examples: list[Example], tiny_models: dict
) -> None:
    loaded = tiny_models[family]
    tokenizer = loaded.processor.tokenizer
    records = _records(runs[family, BATCH])
    assert list(records) == [e.id for e in vqa_examples]
    eos = loaded.model.generation_config.eos_token_id
    for example in vqa_examples:
        record = records[example.id]
        assert record["prompt"] == vqav2_prompt(example.question)
        assert record["prompt_text"] == render_prompt(loaded.processor, record["prompt"]).text
        assert record["dataset"] == "vqav2" and record["options"] is None
        assert Path(record["image"]).is_absolute() and Path(record["image"]).is_file()
        assert record["answers"] == list(example.answers) and len(record["answers"]) == 10
        assert record["category"] == example.category
        assert record["question_type"] == example.extra["question_type"]
        ids = record["generated_ids"]
        assert len(ids) <= 25 and eos not in ids
        assert record["finish_reason"] in ("eos", "max_new_tokens")
        assert record["prediction"] == tokenizer.decode(ids, skip_special_tokens=True).strip()
    config = json.loads((runs[family, BATCH] / "config.json").read_text())
    assert (config["dataset"], config["batch_size"], config["max_new_tokens"], config["seed"]) == (
        "vqav2",
        BATCH,
        25,
        42,
    )
    assert set(config["versions"]) == {"transformers", "torch", "vistrace"}


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_equals_one_by_one(
    family: str, runs: dict[tuple[str, int], Path], tiny_models: dict
) -> None:
    tokenizer = tiny_models[family].processor.tokenizer
    batched, single = _records(runs[family, BATCH]), _records(runs[family, 1])
    assert list(batched) == list(single)
    ids = list(batched)
    lengths = [len(tokenizer(batched[i]["prompt_text"])["input_ids"]) for i in ids]
    padded_batches = [
        lengths[s : s + BATCH] for s in range(0, len(ids), BATCH) if len(set(lengths[s : s + BATCH])) > 1
    ]
    assert padded_batches, "no batch mixed prompt lengths: left padding was not exercised"
    for key in ids:
        assert batched[key]["generated_ids"] == single[key]["generated_ids"], key
        assert batched[key]["prediction"] == single[key]["prediction"]


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_continues_without_duplicates(
    family: str,
    runs: dict[tuple[str, int], Path],
    vqa_examples: list[Example],
    tiny_models: dict,
    tmp_path: Path,
) -> None:
    loaded = tiny_models[family]
    side = loaded.processor.tokenizer.padding_side
    first = evaluate(loaded, vqa_examples, tmp_path, dataset="vqav2", batch_size=BATCH, limit=3)
    assert loaded.processor.tokenizer.padding_side == side
    assert (first.total, first.resumed, first.generated, first.skipped) == (3, 0, 3, 0)
    with (tmp_path / "predictions.jsonl").open("a") as handle:
        handle.write('{"id": "cut short by a cra')
    second = evaluate(loaded, vqa_examples, tmp_path, dataset="vqav2", batch_size=BATCH)
    assert (second.total, second.resumed, second.generated) == (18, 3, 15)
    assert _records(tmp_path) == _records(runs[family, BATCH])
    third = evaluate(loaded, vqa_examples, tmp_path, dataset="vqav2", batch_size=BATCH)
    assert (third.resumed, third.generated) == (18, 0)
    with pytest.raises(ConfigMismatchError, match="batch_size"):
        evaluate(loaded, vqa_examples, tmp_path, dataset="vqav2", batch_size=2)
    assert len(read_jsonl(tmp_path / "predictions.jsonl")) == 18


def _prompt_length(loaded: LoadedModel, example: Example, question: str) -> int:
    """Tokens of the processor's input for the example's image and the VQAv2 prompt of ``question``."""
    prompt = render_prompt(loaded.processor, vqav2_prompt(question))
    inputs = loaded.processor(
        images=[[load_image(example)]],
        text=[prompt.text],
        add_special_tokens=prompt.add_special_tokens,
        return_tensors="pt",
    )
    return int(inputs["input_ids"].shape[1])


def test_bad_examples_are_skipped_and_the_rest_finishes(
    runs: dict[tuple[str, int], Path],
    vqa_examples: list[Example],
    tiny_models: dict,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded = tiny_models["llava"]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    good = vqa_examples[:5]
    bad = [
        replace(good[0], id="missing", image=tmp_path / "nowhere.jpg"),
        replace(good[1], id="empty", question="   "),
        replace(good[2], id="corrupt", image=corrupt),
        replace(good[3], id="long", question="the red car a cat on the mat " * 80),
    ]
    base = _prompt_length(loaded, good[4], "cat")
    per_word = (_prompt_length(loaded, good[4], "cat" + " cat" * 10) - base) / 10
    near = "cat" + " cat" * int((505 - base) / per_word)
    edge = replace(good[4], id="edge", question=near)
    examples = [good[0], bad[0], good[1], bad[1], good[2], bad[2], bad[3], good[3], good[4], good[0], edge]
    with caplog.at_level(logging.WARNING, logger="vistrace.runs.evaluate"):
        summary = evaluate(loaded, examples, tmp_path / "run", dataset="vqav2", batch_size=BATCH)
    assert (summary.generated, summary.skipped) == (6, 5)
    reasons = {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "run" / "skipped.jsonl")}
    assert set(reasons) == {"missing", "empty", "corrupt", "long", good[0].id}
    assert "image not found" in reasons["missing"]
    assert reasons["empty"] == "empty question"
    assert "cannot decode" in reasons["corrupt"]
    assert "longer than the model's context" in reasons["long"]
    assert "duplicate id" in reasons[good[0].id]
    assert sum("skipped example" in r.getMessage() for r in caplog.records) == 5
    records = _records(tmp_path / "run")
    room = loaded.model.config.text_config.max_position_embeddings - _prompt_length(loaded, edge, near) + 1
    assert 0 < room < 25
    edge_record = records.pop("edge")
    assert (edge_record["finish_reason"], len(edge_record["generated_ids"])) == ("context", room)
    reference = _records(runs["llava", BATCH])
    for key, record in records.items():
        assert record["generated_ids"] == reference[key]["generated_ids"]


def test_visual7w_option_order_is_recorded_and_reused(
    vqa_examples: list[Example], tiny_models: dict, tmp_path: Path
) -> None:
    examples = [
        replace(e, dataset="visual7w", answers=(e.answers[0],), choices=(e.answers[0], "pink", "none", "ten"))
        for e in vqa_examples[:4]
    ]
    run = tmp_path / "v7w"
    loaded = tiny_models["llava"]
    evaluate(loaded, examples, run, dataset="visual7w", batch_size=2, max_new_tokens=4, seed=7, limit=2)
    evaluate(loaded, examples, run, dataset="visual7w", batch_size=2, max_new_tokens=4, seed=7)
    records = _records(run)
    assert all(len(r["generated_ids"]) <= 4 for r in records.values())
    for example in examples:
        options = shuffle_options(example.choices or (), 7, example.id)
        assert records[example.id]["options"] == options
        assert records[example.id]["prompt"] == visual7w_prompt(example.question, options)
    assert any(records[e.id]["options"] != list(e.choices or ()) for e in examples)
    with pytest.raises(ConfigMismatchError, match="seed"):
        evaluate(loaded, examples, run, dataset="visual7w", batch_size=2, max_new_tokens=4, seed=8)
    lines = read_jsonl(run / "predictions.jsonl")
    for line in lines:
        line["prediction"] = line["answers"][0].upper() + "."
    _write_jsonl(run / "predictions.jsonl", lines)
    assert score_run(run).overall.score == 1.0
    assert score_run(run, mc_rule="official").overall.score == 0.0
    build = build_analysis_set(run, tmp_path / "v7w.jsonl")
    assert build.overall.kept == 4
    for traced in read_jsonl(tmp_path / "v7w.jsonl"):
        assert traced["options"] == records[traced["id"]]["options"]
        assert traced["prompt"] == records[traced["id"]]["prompt"]


def test_score_and_build_end_to_end(runs: dict[tuple[str, int], Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["mllama", BATCH], run)
    lines = read_jsonl(run / "predictions.jsonl")
    fixed = {line["id"] for line in lines[::2]}
    for line in lines:
        if line["id"] in fixed:
            line["prediction"] = line["answers"][0]
    _write_jsonl(run / "predictions.jsonl", lines)
    table = score_run(run)
    assert table.overall.count == 18
    assert table.overall.score == pytest.approx(len(fixed) / 18)
    assert json.loads((run / "scores.json").read_text())["overall"]["count"] == 18
    assert (run / "scores.csv").read_text().splitlines()[1].startswith("vqa_accuracy,overall,18,")
    assert "overall" in table.format_table()
    build = build_analysis_set(run, tmp_path / "set" / "analysis.jsonl")
    traced = read_jsonl(tmp_path / "set" / "analysis.jsonl")
    by_id = {line["id"]: line for line in lines}
    expected = sorted((key for key in fixed if by_id[key]["generated_ids"]), key=int)
    assert [t["id"] for t in traced] == expected
    for record in traced:
        source = by_id[record["id"]]
        assert record["prompt"] == vqav2_prompt(source["question"])
        assert record["answer_tokens"] == source["generated_ids"]
        assert record["answer"] == source["prediction"]
        assert Path(record["image"]).is_file()
        assert (record["category"], record["dataset"]) == (source["category"], "vqav2")
    assert build.summary_file == tmp_path / "set" / "analysis.summary.json"
    assert build.overall.correct == build.overall.kept == len(expected) > 0
    assert "correct" in build.format_table()


# ------------------------------------------------------------- hand-written predictions


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _vqa(key: int, prediction: str, answers: list[str], category: str, n_tokens: int = 2) -> dict[str, Any]:
    return {
        "id": str(key),
        "dataset": "vqav2",
        "image": f"/data/{key}.jpg",
        "question": f"q{key}?",
        "prompt": vqav2_prompt(f"q{key}?"),
        "options": None,
        "prediction": prediction,
        "generated_ids": list(range(10, 10 + n_tokens)),
        "answers": answers,
        "category": category,
        "question_type": "what",
    }


def test_vqa_scores_and_rules(tmp_path: Path) -> None:
    records = [
        _vqa(3, "yes", ["yes"] * 10, "yes/no"),
        _vqa(1, "Yes", ["yes"] * 10, "yes/no"),
        _vqa(2, "2", ["2"] * 9 + ["two"], "number"),
        _vqa(10, "two", ["2"] * 3 + ["3"] * 7, "number", n_tokens=4),
        _vqa(4, "", ["2"] * 10, "number", n_tokens=0),
    ]
    _write_jsonl(tmp_path / "predictions.jsonl", records)
    table = score_run(tmp_path)
    assert {c.category: c.count for c in table.categories} == {"number": 3, "yes/no": 2}
    assert table.overall.score == pytest.approx((1 + 0 + 1 + 0.9 + 0) / 5)
    assert score_run(tmp_path, vqa_rule="always_normalize").categories[1].score == 1.0
    assert is_correct(records[2]) and not is_correct(records[3]) and not is_correct(records[4])
    assert is_correct(records[3], "score>=0.9") and not is_correct(records[3], "score>0.9")
    summary = build_analysis_set(tmp_path, tmp_path / "a.jsonl", correct_rule="score>=0.9")
    assert [r["id"] for r in read_jsonl(tmp_path / "a.jsonl")] == ["2", "3", "10"]
    assert {c.category: (c.correct, c.total, c.kept) for c in summary.categories} == {
        "number": (2, 3, 2),
        "yes/no": (1, 2, 1),
    }
    assert summary.overall.mean_answer_tokens == pytest.approx(8 / 3)
    saved = json.loads(summary_path(tmp_path / "a.jsonl").read_text())
    assert saved["categories"][0]["category"] == "number" and saved["rule"] == "score>=0.9"
    with pytest.raises(ValueError, match="unknown correct-set rule"):
        build_analysis_set(tmp_path, tmp_path / "b.jsonl", correct_rule="majority")


def test_per_category_sampling_is_seeded_and_sorted(tmp_path: Path) -> None:
    records = [_vqa(k, "red", ["red"] * 10, "other" if k % 3 else "color") for k in range(1, 61)]
    _write_jsonl(tmp_path / "predictions.jsonl", records)
    first = build_analysis_set(tmp_path, tmp_path / "x.jsonl", per_category=5, seed=42)
    ids = [r["id"] for r in read_jsonl(tmp_path / "x.jsonl")]
    build_analysis_set(tmp_path, tmp_path / "y.jsonl", per_category=5, seed=42)
    build_analysis_set(tmp_path, tmp_path / "z.jsonl", per_category=5, seed=3)
    assert ids == [r["id"] for r in read_jsonl(tmp_path / "y.jsonl")]
    assert ids != [r["id"] for r in read_jsonl(tmp_path / "z.jsonl")]
    assert ids == sorted(ids, key=int) and len(ids) == 10
    assert {(c.category, c.correct, c.total, c.kept) for c in first.categories} == {
        ("color", 20, 20, 5),
        ("other", 40, 40, 5),
    }
    traced = read_jsonl(tmp_path / "x.jsonl")[0]
    assert traced["answer_tokens"] == [10, 11] and traced["answer"] == "red"
    assert traced["question_type"] == "what" and "generated_ids" not in traced


def test_docvqa_anls_rules(tmp_path: Path) -> None:
    def doc(key: int, prediction: str) -> dict[str, Any]:
        record = _vqa(key, prediction, ["INV-2041", "INV 2041"], "handwritten")
        return {**record, "dataset": "docvqa"}

    records = [doc(1, "INV-2041"), doc(2, "INV2041"), doc(3, "receipt")]
    _write_jsonl(tmp_path / "predictions.jsonl", records)
    assert [score_record(r) for r in records] == [1.0, pytest.approx(0.875), 0.0]
    assert score_run(tmp_path).metric == "anls"
    assert score_record(records[1], anls_threshold=0.9) == 0.0
    # the paper keeps ANLS 1 only (create_docvqa.py); ANLS > 0 is a score rule
    assert build_analysis_set(tmp_path, tmp_path / "p.jsonl").overall.kept == 1
    assert build_analysis_set(tmp_path, tmp_path / "s.jsonl", correct_rule="score>0").overall.kept == 2
    assert build_analysis_set(tmp_path, tmp_path / "t.jsonl", correct_rule="score>=0.9").overall.kept == 1
    with pytest.raises(ValueError, match="all_agree"):
        build_analysis_set(tmp_path, tmp_path / "u.jsonl", correct_rule="all_agree")


def test_summary_type() -> None:
    summary = EvalSummary(Path("."), Path("p"), Path("s"), Path("c"), 10, 2, 6, 2, 4.0)
    assert summary.samples_per_second == 2.0
