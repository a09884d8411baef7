"""`vistrace trace`, `vistrace export` and `vistrace plot flow`: the knockout workflow."""

from __future__ import annotations

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
    integers,
    launched,
    load_model,
)

RunDirArgument = Annotated[Path, typer.Argument(help="A trace run directory.", callback=expand_path)]


def trace(
    model: ModelOption,
    data: Annotated[
        Path,
        typer.Option(
            help="JSONL of samples: id, image, prompt, answer_tokens|answer, category.", callback=expand_path
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run directory (re-running resumes).", callback=expand_path)],
    pathways: Annotated[str, typer.Option(help="Comma-separated src_to_dst pathways.")] = (
        "last_to_last,question_to_last,image_to_last,image_to_question"
    ),
    k: Annotated[str, typer.Option(help="Window size(s), e.g. 9 or 1,3,9.")] = "9",
    mode: Annotated[
        str, typer.Option(help="strict (true knockout) or paper (FlowTracker's numbers).")
    ] = "strict",
    strategy: Annotated[
        str, typer.Option(help="fast, or naive (one full pass per window, the reference).")
    ] = "fast",
    temperature: Annotated[
        float | None, typer.Option(help="Softmax temperature (strict: 1, paper: 0.6).")
    ] = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
    images: ImagesOption = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N samples.")] = None,
    score: Annotated[
        str,
        typer.Option(
            help="Score of p_full and probs: product (the answer's probability), geometric (its "
            "per-token mean), first (first token) or mean-log (mean log-probability per token)."
        ),
    ] = "product",
    layer_probs: Annotated[
        bool,
        typer.Option(
            "--layer-probs",
            help="Also store each sample's clean answer probability after every decoder layer "
            "(logit lens) in layer_probs.jsonl.",
            metavar="",
        ),
    ] = False,
    pack_memory: Annotated[
        float | None,
        typer.Option(
            help="GiB of clean passes the fast strategy holds to pack several samples' re-runs into "
            "shared calls (same numbers up to float rounding). Default: a tenth of the GPU's memory "
            "on CUDA, none elsewhere; 0 turns packing off.",
        ),
    ] = None,
) -> None:
    """Knockout sweep: block each pathway in sliding windows of k layers and score the answer."""
    from vistrace.runs.config import TraceConfig
    from vistrace.runs.folder import ensure_folder
    from vistrace.runs.trace import run_trace

    config = TraceConfig(
        data=data,
        out=out,
        pathways=tuple(p.strip() for p in pathways.split(",") if p.strip()),
        ks=tuple(integers(k, "--k")),
        mode=cast(Any, mode),
        strategy=strategy,
        temperature=temperature,
        limit=limit,
        images=images,
        score=score,
        layer_probs=layer_probs,
        pack_memory=pack_memory,
    )
    ensure_folder(config.out)
    shard = launched(device, device_map)
    loaded = load_model(model, dtype, device, device_map, vision_tower, shard)
    config.check_model(loaded.adapter.num_layers(loaded.model))
    summary = run_trace(loaded, config, shard)
    if shard.rank == 0:
        typer.echo(
            f"{summary.traced} traced, {summary.resumed} already done, {summary.skipped} skipped; "
            f"{summary.records} records in {summary.out_dir / 'results.jsonl'}"
            + (f" and its {shard.world - 1} rank file(s)" if shard.world > 1 else "")
        )


def export(
    run_dir: RunDirArgument,
    format: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet.")] = "csv",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output file (default: RUN_DIR/results.<format>; jsonl: RUN_DIR/results.export.jsonl).",
            callback=expand_path,
        ),
    ] = None,
) -> None:
    """Export trace results: one row per (id, pathway, k, mode) with p_full, probs and every score.

    Per score (product, geometric, first, mean-log): score_<name> of the unblocked answer and
    change_<name> per layer, recomputed from the per-token probabilities."""
    from vistrace.runs.export import export_results

    default = run_dir / ("results.export.jsonl" if format == "jsonl" else f"results.{format}")
    typer.echo(export_results(run_dir, out or default, format))


def plot_flow(
    run_dir: RunDirArgument,
    out: Annotated[
        Path | None,
        typer.Option(help="Figure directory (default: RUN_DIR/figures).", callback=expand_path),
    ] = None,
    min_p_full: Annotated[
        float, typer.Option(help="Drop samples with p_full below this (paper: 0.5).")
    ] = 0.5,
    clip_increases: Annotated[
        bool, typer.Option(help="Clip increases to 0 as the paper does.", metavar="")
    ] = True,
    stages: Annotated[int, typer.Option(help="Layer groups for the stage bars.")] = 4,
    score: Annotated[
        str | None,
        typer.Option(
            help="Recompute the curves under this score (product, geometric, first, mean-log) from "
            "the per-token probabilities (default: the run's own score)."
        ),
    ] = None,
    by_word: Annotated[
        bool,
        typer.Option(
            "--by-word",
            help="Also draw, per pathway, the mean change per layer of content words, function "
            "words (NLTK's English stop words) and punctuation.",
            metavar="",
        ),
    ] = False,
) -> None:
    """Mean change in answer probability per layer for each pathway, and per-stage bars."""
    from vistrace.plots.flow import FlowOptions
    from vistrace.plots.flow import plot_flow as draw

    paths = draw(
        run_dir,
        out,
        FlowOptions(
            min_p_full=min_p_full or None,
            clip_increases=clip_increases,
            stages=stages,
            score=score,
            by_word=by_word,
        ),
    )
    typer.echo(f"{len(paths)} files written to {paths[0].parent}")
