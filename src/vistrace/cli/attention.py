"""`vistrace attend` and the attention figures (`vistrace plot avg-attention | text-heatmap |
image-heatmap`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

RunDirArgument = Annotated[Path, typer.Argument(help="An attend run directory.", callback=expand_path)]
FiguresOption = Annotated[
    Path | None, typer.Option(help="Figure directory (default: RUN_DIR/figures).", callback=expand_path)
]


def attend(
    model: ModelOption,
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            help="JSON list or JSONL: image_id, image_src, question, gold_answer.",
            callback=expand_path,
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Run directory (re-running skips finished instances).", callback=expand_path)
    ],
    instance_idx: Annotated[str | None, typer.Option(help="Only these instances, e.g. 3,88.")] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Sample at temperature 0.5 instead of greedy.", metavar="")
    ] = False,
    engineered_prompt: Annotated[
        bool, typer.Option("--engineered-prompt", help="The engineered F/R prompts.", metavar="")
    ] = False,
    volcano: Annotated[
        bool,
        typer.Option(
            "--volcano/--no-volcano",
            help="The critique-and-revise loop; --no-volcano captures a single answer.",
            metavar="",
        ),
    ] = True,
    max_new_tokens: int = 1024,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
    images: ImagesOption = None,
) -> None:
    """Generate (answer, feedback, revision) and record every token's attention to the image."""
    from vistrace.runs.attend import run_attend
    from vistrace.runs.config import AttendConfig
    from vistrace.runs.folder import ensure_folder

    indices = integers(instance_idx, "--instance-idx") if instance_idx else None
    config = AttendConfig(
        input=input,
        out=out,
        volcano=volcano,
        engineered=engineered_prompt,
        sample=sample,
        max_new_tokens=max_new_tokens,
        instance_idx=None if indices is None else tuple(indices),
        images=images,
    )
    ensure_folder(config.out)
    shard = launched(device, device_map)
    log_path = run_attend(
        load_model(model, dtype, device, device_map, vision_tower, shard), config, shard=shard
    )
    if shard.rank == 0:
        typer.echo(f"log: {log_path}")


def plot_avg_attention(
    run_dir: RunDirArgument,
    out: FiguresOption = None,
    pool: Annotated[str, typer.Option(help="top_k_mean, mean or max.")] = "top_k_mean",
    top_k: int = 3,
    instances: Annotated[
        str, typer.Option(help="adopted (the paper: revision adopted) or all (every instance with feedback).")
    ] = "adopted",
) -> None:
    """Figure 5: average map of Initial vs Feedback over instances whose revision was adopted."""
    from vistrace.plots.attention import plot_avg_attention as draw

    paths = draw(run_dir, out or run_dir / "figures", pool=pool, top_k=top_k, instances=instances)
    typer.echo(f"{len(paths)} files written")


def plot_text_heatmap(
    run_dir: RunDirArgument,
    instance_idx: Annotated[int, typer.Option(help="Instance index.")],
    out: FiguresOption = None,
) -> None:
    """Figure 4 (2): output text coloured per token by its image attention."""
    from vistrace.plots.attention import plot_text_heatmap as draw

    paths = draw(run_dir, instance_idx, out or run_dir / "figures")
    typer.echo(f"{len(paths)} files written")


def plot_image_heatmap(
    run_dir: RunDirArgument,
    instance_idx: Annotated[int, typer.Option(help="Instance index.")],
    spans: Annotated[
        list[str] | None, typer.Option(help="Token spans, e.g. rather,silver,. (repeatable).")
    ] = None,
    out: FiguresOption = None,
) -> None:
    """Figure 4 (3): Initial, Feedback and per-span maps, as grids and over the image."""
    from vistrace.plots.attention import plot_image_heatmap as draw

    paths = draw(run_dir, instance_idx, spans or [], out or run_dir / "figures")
    typer.echo(f"{len(paths)} files written")
