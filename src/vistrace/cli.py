"""The `vistrace` command line: a thin shell that parses options and calls one library function."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from typer.core import TyperGroup

from vistrace import __version__


class _Commands(TyperGroup):
    """Reports the library's errors about the user's input (missing file, bad record, settings that
    cannot work, an optional package not installed) as one `Error:` line and exit code 1; the
    traceback is logged with --verbose."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (ValueError, OSError, ImportError) as error:
            self._report(error)
        except Exception as error:
            from vistrace.compat import TransformersContractError
            from vistrace.data import DatasetError

            if not isinstance(error, (DatasetError, TransformersContractError)):
                raise
            self._report(error)

    @staticmethod
    def _report(error: Exception) -> NoReturn:
        logging.getLogger("vistrace.cli").debug("traceback", exc_info=error)
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from error


app = typer.Typer(
    cls=_Commands,
    name="vistrace",
    help="How a vision-language model uses the image: attention capture and attention-knockout flow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plot_app = typer.Typer(help="Draw figures from a run directory.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="Checkpoint directory (HF or original LLaVA format), or tiny:llava / tiny:mllama / demo:llava / "
        "demo:mllama for the built-in models.",
    ),
]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: cpu).")]
DeviceMapOption = Annotated[str | None, typer.Option("--device-map", help="e.g. auto: shard over GPUs.")]
VisionTowerOption = Annotated[
    str | None,
    typer.Option(
        "--vision-tower",
        help="CLIP tower directory for an original-format LLaVA checkpoint (default: its mm_vision_tower).",
    ),
]
# The model options above are the whole of what every model-loading command (check, eval, trace,
# attend) takes to load its model, each command listing all five and passing them to _load.
ImagesOption = Annotated[
    Path | None,
    typer.Option(help="Folder that relative image paths are resolved against (default: the data file's)."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vistrace {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("transformers", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _integers(text: str, option: str) -> list[int]:
    """Comma-separated integers; ValueError naming `option` for anything else."""
    values = []
    for part in text.split(","):
        try:
            values.append(int(part.strip()))
        except ValueError:
            raise ValueError(f"{option} {text!r}: {part.strip()!r} is not an integer") from None
    return values


def _load(
    model: str,
    dtype: str = "float32",
    device: str | None = None,
    device_map: str | None = None,
    vision_tower: str | None = None,
) -> Any:
    from safetensors import SafetensorError

    from vistrace.models.builtin import resolve_model_dir
    from vistrace.models.loading import load

    try:
        return load(
            resolve_model_dir(model),
            dtype=dtype,
            device=device,
            device_map=device_map,
            vision_tower=vision_tower,
        )
    except SafetensorError as error:
        raise ValueError(f"--model {model}: a weight file is truncated or corrupt ({error})") from error


@app.command()
def check(
    model: ModelOption,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
) -> None:
    """Check the contracts with the installed transformers, then the seam's invariants on MODEL.

    Exit code 0 only when all pass.
    """
    from vistrace.check import format_results, run_checks

    results = run_checks(_load(model, dtype, device, device_map, vision_tower))
    typer.echo(format_results(results))
    failed = [r for r in results if not r.passed]
    if failed:
        typer.echo(f"{len(failed)} check(s) failed: {', '.join(r.name for r in failed)}", err=True)
        raise typer.Exit(1)


@app.command()
def tiny(
    family: Annotated[
        str,
        typer.Argument(
            help="llava, mllama, qwen2_vl, qwen2_5_vl, qwen3_vl, llava_next, llava_onevision, idefics3 "
            "or internvl"
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint into.")],
    seed: int = 0,
) -> None:
    """Write a tiny random checkpoint of FAMILY (for tests and trying commands)."""
    from vistrace.models.tiny import write_tiny

    typer.echo(write_tiny(cast(Any, family), out, seed=seed))


@app.command()
def trace(
    model: ModelOption,
    data: Annotated[
        Path, typer.Option(help="JSONL of samples: id, image, prompt, answer_tokens|answer, category.")
    ],
    out: Annotated[Path, typer.Option(help="Run directory (re-running resumes).")],
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
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
    images: ImagesOption = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N samples.")] = None,
) -> None:
    """Knockout sweep: block each pathway in sliding windows of k layers and score the answer."""
    from vistrace.runs.folder import ensure_folder
    from vistrace.runs.trace import check_trace_options
    from vistrace.runs.trace import trace as run_trace

    pathway_names = [p.strip() for p in pathways.split(",") if p.strip()]
    ks = _integers(k, "--k")
    check_trace_options(pathway_names, ks, mode=mode, strategy=strategy, temperature=temperature, limit=limit)
    if not data.is_file():
        raise ValueError(f"--data {data}: no such file")
    ensure_folder(out)
    loaded = _load(model, dtype, device, device_map, vision_tower)
    check_trace_options(pathway_names, ks, n_layers=loaded.adapter.num_layers(loaded.model))
    summary = run_trace(
        loaded,
        data,
        out,
        pathways=pathway_names,
        ks=ks,
        mode=cast(Any, mode),
        strategy=strategy,
        temperature=temperature,
        limit=limit,
        images_dir=images,
    )
    typer.echo(
        f"{summary.traced} traced, {summary.resumed} already done, {summary.skipped} skipped; "
        f"{summary.records} records in {summary.out_dir / 'results.jsonl'}"
    )


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A trace run directory.")],
    format: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet.")] = "csv",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output file (default: RUN_DIR/results.<format>; jsonl: RUN_DIR/results.export.jsonl)."
        ),
    ] = None,
) -> None:
    """Export trace results: one row per (id, pathway, k, mode) with p_full and per-layer probs."""
    from vistrace.runs.trace import export_results

    default = run_dir / ("results.export.jsonl" if format == "jsonl" else f"results.{format}")
    typer.echo(export_results(run_dir, out or default, format))


@plot_app.command("flow")
def plot_flow(
    run_dir: Annotated[Path, typer.Argument(help="A trace run directory.")],
    out: Annotated[Path | None, typer.Option(help="Figure directory (default: RUN_DIR/figures).")] = None,
    min_p_full: Annotated[
        float, typer.Option(help="Drop samples with p_full below this (paper: 0.5).")
    ] = 0.5,
    clip_increases: Annotated[bool, typer.Option(help="Clip increases to 0 as the paper does.")] = True,
    stages: Annotated[int, typer.Option(help="Layer groups for the stage bars.")] = 4,
) -> None:
    """Mean change in answer probability per layer for each pathway, and per-stage bars."""
    from vistrace.plots.flow import FlowOptions
    from vistrace.plots.flow import plot_flow as draw

    paths = draw(
        run_dir, out, FlowOptions(min_p_full=min_p_full or None, clip_increases=clip_increases, stages=stages)
    )
    typer.echo(f"{len(paths)} files written to {paths[0].parent}")


@app.command()
def attend(
    model: ModelOption,
    input: Annotated[
        Path, typer.Option("--input", help="JSON list or JSONL: image_id, image_src, question, gold_answer.")
    ],
    out: Annotated[Path, typer.Option(help="Run directory (re-running skips finished instances).")],
    instance_idx: Annotated[str | None, typer.Option(help="Only these instances, e.g. 3,88.")] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Sample at temperature 0.5 instead of greedy.")
    ] = False,
    engineered_prompt: Annotated[
        bool, typer.Option("--engineered-prompt", help="The engineered F/R prompts.")
    ] = False,
    no_volcano: Annotated[
        bool, typer.Option("--no-volcano", help="Capture a single answer, no critique loop.")
    ] = False,
    max_new_tokens: int = 1024,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
    images: ImagesOption = None,
) -> None:
    """Generate (answer, feedback, revision) and record every token's attention to the image."""
    from vistrace.runs.attend import run_volcano
    from vistrace.runs.folder import ensure_folder

    indices = _integers(instance_idx, "--instance-idx") if instance_idx else None
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    if not input.is_file():
        raise ValueError(f"--input {input}: no such file")
    ensure_folder(out)
    log_path = run_volcano(
        _load(model, dtype, device, device_map, vision_tower),
        input,
        out,
        volcano=not no_volcano,
        engineered=engineered_prompt,
        sample=sample,
        max_new_tokens=max_new_tokens,
        instance_idx=indices,
        images_dir=images,
    )
    typer.echo(f"log: {log_path}")


@app.command("eval")
def eval_command(
    model: ModelOption,
    dataset: Annotated[str, typer.Option(help="vqav2, visual7w, docvqa, mmhal or jsonl.")],
    out: Annotated[Path, typer.Option(help="Run directory (re-running resumes).")],
    questions: Annotated[Path | None, typer.Option(help="VQAv2 questions file.")] = None,
    annotations: Annotated[
        Path | None, typer.Option(help="VQAv2 annotations / Visual7W / DocVQA / MMHal / JSONL file.")
    ] = None,
    images: ImagesOption = None,
    split: Annotated[str | None, typer.Option(help="Visual7W split: test (default), val or train.")] = None,
    batch_size: int = 8,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Default: 25 (VQAv2, Visual7W), 512 (DocVQA).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Visual7W option order.")] = 42,
    limit: int | None = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
) -> None:
    """Run the model over a dataset with the paper's prompts; predictions with their token ids."""
    from vistrace.data import read_dataset
    from vistrace.runs.evaluate import DATASETS, evaluate
    from vistrace.runs.folder import ensure_folder

    if annotations is None:
        raise typer.BadParameter("--annotations is required (the dataset file)")
    if dataset not in DATASETS:
        raise ValueError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    for name, value, least in (("--batch-size", batch_size, 1), ("--max-new-tokens", max_new_tokens, 1)):
        if value is not None and value < least:
            raise ValueError(f"{name} {value}: must be at least {least}")
    if limit is not None and limit < 0:
        raise ValueError(f"--limit {limit}: must be 0 or more")
    ensure_folder(out)
    read = read_dataset(dataset, annotations, questions=questions, images=images, split=split)
    for skipped in read.skipped:
        logging.getLogger("vistrace.eval").warning("skipped %s", skipped.reason)
    summary = evaluate(
        _load(model, dtype, device, device_map, vision_tower),
        read.examples,
        out,
        dataset=dataset,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        limit=limit,
        unreadable=read.skipped,
        source=annotations,
    )
    typer.echo(
        f"{summary.generated} generated, {summary.resumed} resumed, {summary.skipped} skipped -> {out}"
    )


@app.command()
def score(
    run_dir: Annotated[Path, typer.Argument(help="An eval run directory.")],
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


_RULES_HELP = (
    "Which questions count as correct. paper: the FlowTracker code's test per dataset (VQAv2: all ten "
    "answers equal the prediction after its lower-casing, contraction and number-word preprocessing; "
    "Visual7W: equal lower-cased alphanumerics; DocVQA: equal to an answer after lower-casing) and its "
    "sampling. all_agree: VQAv2, every annotator's answer equals the prediction as the official metric "
    "processes them (unanimous answers are not normalised, so 'Yes' misses ten 'yes'). score>X, score>=X: "
    "the official score (VQA accuracy, ANLS, match) compared with X."
)


@app.command()
def build(
    run_dir: Annotated[Path, typer.Argument(help="An eval run directory.")],
    out: Annotated[Path, typer.Option(help="Output JSONL (the input of vistrace trace).")],
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
    from vistrace.runs.scoring import build_analysis_set

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


@plot_app.command("avg-attention")
def plot_avg_attention(
    run_dir: Annotated[Path, typer.Argument(help="An attend run directory.")],
    out: Annotated[Path | None, typer.Option(help="Figure directory (default: RUN_DIR/figures).")] = None,
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


@plot_app.command("text-heatmap")
def plot_text_heatmap(
    run_dir: Annotated[Path, typer.Argument(help="An attend run directory.")],
    instance_idx: Annotated[int, typer.Option(help="Instance index.")],
    out: Annotated[Path | None, typer.Option(help="Figure directory (default: RUN_DIR/figures).")] = None,
) -> None:
    """Figure 4 (2): output text coloured per token by its image attention."""
    from vistrace.plots.attention import plot_text_heatmap as draw

    paths = draw(run_dir, instance_idx, out or run_dir / "figures")
    typer.echo(f"{len(paths)} files written")


@plot_app.command("image-heatmap")
def plot_image_heatmap(
    run_dir: Annotated[Path, typer.Argument(help="An attend run directory.")],
    instance_idx: Annotated[int, typer.Option(help="Instance index.")],
    spans: Annotated[
        list[str] | None, typer.Option(help="Token spans, e.g. rather,silver,. (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Figure directory (default: RUN_DIR/figures).")] = None,
) -> None:
    """Figure 4 (3): Initial, Feedback and per-span maps, as grids and over the image."""
    from vistrace.plots.attention import plot_image_heatmap as draw

    paths = draw(run_dir, instance_idx, spans or [], out or run_dir / "figures")
    typer.echo(f"{len(paths)} files written")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("vistrace-demo"),
    family: Annotated[str, typer.Option(help="llava, mllama or both.")] = "both",
) -> None:
    """Every workflow on the built-in models: eval, score, build, trace, attend and all figures."""
    from vistrace.demo.run import run_demo

    if family not in ("llava", "mllama", "both"):
        message = f"unknown family {family!r}; choose llava, mllama or both"
        raise typer.BadParameter(message, param_hint="--family")
    families = ["llava", "mllama"] if family == "both" else [family]
    typer.echo(run_demo(out, families))
    from vistrace.report import write_report

    runs = [out / name / kind for name in families for kind in ("eval", "trace", "attend")]
    typer.echo(f"report: {write_report([r for r in runs if r.is_dir()], out / 'report.html')}")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of eval, trace or attend.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    pools: Annotated[
        str, typer.Option(help="Comma-separated head poolings to store (top_k_mean, mean, max).")
    ] = "top_k_mean,mean,max",
    layer_groups: Annotated[
        int, typer.Option(help="Add a layer menu with this many layer groups (0: none).")
    ] = 0,
) -> None:
    """One self-contained interactive HTML page of RUNS, opened offline in any browser."""
    from vistrace.report import write_report

    chosen = [p.strip() for p in pools.split(",") if p.strip()]
    path = write_report(runs, out, pools=chosen, layer_groups=layer_groups)
    typer.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    # Figures are written to files: no window system needed (a notebook keeps its own backend).
    os.environ.setdefault("MPLBACKEND", "Agg")
    app()


if __name__ == "__main__":
    main()
