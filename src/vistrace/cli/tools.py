"""`vistrace check`, `vistrace tiny`, `vistrace demo` and `vistrace report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer

from vistrace.cli.options import (
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    VisionTowerOption,
    expand_path,
    load_model,
)


def check(
    model: ModelOption,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    device_map: DeviceMapOption = None,
    vision_tower: VisionTowerOption = None,
) -> None:
    """Check the contracts with the installed transformers, then the seam's invariants on MODEL.

    The tolerances follow the model's dtype. Exit code 0 only when all pass.
    """
    from vistrace.check import format_results, run_checks

    results = run_checks(load_model(model, dtype, device, device_map, vision_tower))
    typer.echo(format_results(results))
    failed = [r for r in results if not r.passed]
    if failed:
        typer.echo(f"{len(failed)} check(s) failed: {', '.join(r.name for r in failed)}", err=True)
        raise typer.Exit(1)


def tiny(
    family: Annotated[
        str,
        typer.Argument(
            help="llava, mllama, qwen2_vl, qwen2_5_vl, qwen3_vl, llava_next, llava_onevision, internvl, "
            "idefics3, gemma3 or smolvlm"
        ),
    ],
    out: Annotated[
        Path, typer.Argument(help="Directory to write the checkpoint into.", callback=expand_path)
    ],
    seed: int = 0,
) -> None:
    """Write a tiny random checkpoint of FAMILY (for tests and trying commands)."""
    from vistrace.models.tiny import write_tiny

    typer.echo(write_tiny(cast(Any, family), out, seed=seed))


def demo(
    out: Annotated[Path, typer.Option(help="Output folder.", callback=expand_path)] = Path("vistrace-demo"),
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


def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders of eval, trace or attend.", callback=expand_path)
    ],
    out: Annotated[Path, typer.Option(help="The HTML file to write.", callback=expand_path)] = Path(
        "report.html"
    ),
    pools: Annotated[
        str, typer.Option(help="Comma-separated head poolings to store (top_k_mean, mean, max).")
    ] = "top_k_mean,mean,max",
    layer_groups: Annotated[
        int, typer.Option(help="Layer groups in the layer menu, besides all layers (0: no menu).")
    ] = 3,
    bits: Annotated[
        int, typer.Option(help="Bits per stored map value (1-8; fewer make a smaller file).")
    ] = 4,
) -> None:
    """One self-contained interactive HTML page of RUNS, opened offline in any browser."""
    from vistrace.report import write_report

    chosen = [p.strip() for p in pools.split(",") if p.strip()]
    path = write_report(runs, out, pools=chosen, layer_groups=layer_groups, bits=bits)
    typer.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
