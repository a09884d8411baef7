"""`vistrace eval`, `vistrace score` and `vistrace build`: a model over a dataset, its scores, and the
correct set that `vistrace trace` reads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from vistrace.cli.options import (
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    ImagesOption,
    ModelOption,
    VisionTowerOption,
    expand_path,
    launched,
    load_model,
)
from vistrace.data.by_name import READERS

RunDirArgument = Annotated[Path, typer.Argument(help="An eval run directory.", callback=expand_path)]


def eval_command(
    model: ModelOption,
    dataset: Annotated[str, typer.Option(help=f"A registered reader: {', '.join(READERS)}.")],
    out: Annotated[Path, typer.Option(help="Run directory (re-running resumes).", callback=expand_path)],
    questions: Annotated[
        Path | None, typer.Option(help="VQAv2 questions file.", callback=expand_path)
    ] = None,
    annotations: Annotated[
        Path | None,
        typer.Option(
            help="VQAv2 annotations / Visual7W / DocVQA / MMHal / TextVQA / ChartQA (a file or a split "
            "folder) / COCO captions (Karpathy dataset_coco.json or captions_*.json) / JSONL file.",
            callback=expand_path,
        ),
    ] = None,
    images: ImagesOption = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Visual7W split (test, val, train); COCO Karpathy splits (test, val, train, restval; "
            "comma-separated)."
        ),
    ] = None,
    batch_size: int = 8,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Default: 25 (VQAv2, Visual7W), 512 (DocVQA, TextVQA, ChartQA, COCO)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Visual7W option order.")] = 42,
    limit: int | None = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
) -> None:
    """Run the model over a dataset with the paper's prompts; predictions with their token ids."""
    from vistrace.runs.config import EvalConfig
    from vistrace.runs.evaluate import run_eval
    from vistrace.runs.folder import ensure_folder

    if annotations is None:
        raise typer.BadParameter("--annotations is required (the dataset file)")
    config = EvalConfig(
        dataset=dataset,
        out=out,
        annotations=annotations,
        questions=questions,
        images=images,
        split=split,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        limit=limit,
    )
    ensure_folder(config.out)
    shard = launched(device, device_map)
    read = config.read()
    for skipped in read.skipped if shard.rank == 0 else ():
        logging.getLogger("vistrace.eval").warning("skipped %s", skipped.reason)
    loaded = load_model(model, dtype, device, device_map, vision_tower, shard)
    summary = run_eval(loaded, config, read, shard)
    if shard.rank == 0:
        typer.echo(
            f"{summary.generated} generated, {summary.resumed} resumed, {summary.skipped} skipped -> {out}"
        )


def score(
    run_dir: RunDirArgument,
    vqa_rule: Annotated[str, typer.Option(help="official or always_normalize.")] = "official",
    mc_rule: Annotated[str, typer.Option(help="paper or official.")] = "paper",
    anls_threshold: float = 0.5,
) -> None:
    """Overall and per-category scores with the official metrics (written as JSON and CSV)."""
    from vistrace.runs.scoring import score_run

    table = score_run(
        run_dir, vqa_rule=cast(Any, vqa_rule), mc_rule=cast(Any, mc_rule), anls_threshold=anls_threshold
    )
    typer.echo(table.format_table())


# One rule a paragraph: each starts a line of the help, whatever the terminal's width.
_RULES_HELP = "\n\n".join(
    (
        "Which questions count as correct.",
        "paper: the FlowTracker code's test per dataset (VQAv2: all ten answers equal the prediction after "
        "its lower-casing, contraction and number-word preprocessing; Visual7W: equal lower-cased "
        "alphanumerics; DocVQA: equal to an answer after lower-casing) and its sampling; TextVQA and "
        "ChartQA: FG-TRACER's test.",
        "all_agree: VQAv2, every annotator's answer equals the prediction as the official metric processes "
        "them (unanimous answers are not normalised, so 'Yes' misses ten 'yes').",
        "score>X, score>=X: the official score (VQA accuracy, ANLS, match) compared with X.",
        "generated: every prediction with generated tokens, the model's own output kept as the answer (COCO "
        "captions, free-form answers).",
    )
)


def build(
    run_dir: RunDirArgument,
    out: Annotated[
        Path, typer.Option(help="Output JSONL (the input of vistrace trace).", callback=expand_path)
    ],
    per_category: Annotated[
        int | None, typer.Option(help="Sample N per category (paper: 1000 for VQAv2 and Visual7W).")
    ] = None,
    seed: int = 42,
    rule: Annotated[str, typer.Option("--rule", "--correct-rule", help=_RULES_HELP)] = "paper",
    vqa_rule: Annotated[
        str, typer.Option(help="How all_agree and score rules process VQAv2: official or always_normalize.")
    ] = "official",
    mc_rule: Annotated[str, typer.Option(help="Visual7W match of score rules: paper or official.")] = (
        "paper"
    ),
    anls_threshold: Annotated[float, typer.Option(help="ANLS threshold for score rules.")] = 0.5,
) -> None:
    """Keep the questions the model got right and sample a balanced analysis set."""
    from vistrace.runs.build import build_analysis_set

    summary = build_analysis_set(
        run_dir,
        out,
        per_category=per_category,
        seed=seed,
        correct_rule=rule,
        vqa_rule=cast(Any, vqa_rule),
        mc_rule=cast(Any, mc_rule),
        anls_threshold=anls_threshold,
    )
    typer.echo(summary.format_table())
