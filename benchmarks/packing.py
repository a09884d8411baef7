"""Packed fast sweeps: several samples' re-runs in shared calls, against one sample at a time.

A fast sweep of one sample re-runs few rows per window (one for the `*_to_last` pathways), so its
calls are small; `KnockoutRunner.sweep(..., pack_bytes=...)` packs the windows of several samples
into the same calls (what `vistrace trace --pack-memory` does). This benchmark sweeps the same
samples both ways, side by side in one run, and prints per family: seconds per sample, their ratio,
the re-run calls each made, and the largest relative difference of any probability (the numbers must
agree up to float rounding), and the ATen operators each dispatches per sample (about one kernel
launch each on a GPU, where small calls are bound by launches: counted on any device).

Samples: the paper's VQAv2 prompt with questions of different lengths over the benchmark image, each
scored on the same 2-token answer; 4 pathways, k = 9. Models: random weights with the real image
geometry (576 LLaVA positions; 4 tiles x 1601 Mllama keys), the decoder as deep as the real one and
narrow by default so that it runs on a CPU (`--width real`: the published configurations, for a GPU).

    python benchmarks/packing.py                      # CPU, narrow decoders
    python benchmarks/packing.py --width real --device cuda --dtype bfloat16
    python benchmarks/packing.py --tiny               # seconds, for CI
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vistrace.knockout.fast as fast_module
from vistrace.data.prompts import vqav2_prompt
from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutRunner, Pathway, SampleSweep
from vistrace.models.loading import LoadedModel, resolve_dtype

from _models import FAMILIES, REAL, TINY, Family, Sizes, answer_tokens, benchmark_image, build, narrow

K = 9
QUESTIONS = (
    "What color is the circle?",
    "Is there a square?",
    "What is in the top left corner of the picture?",
    "Which shape is blue?",
    "How many shapes are there in this image, counting both of them?",
    "Is it red?",
    "What is the color of the square at the bottom right?",
    "What shape is red?",
)
# The real depth (40 and 32 decoder layers) at a width a CPU sweeps in seconds.
NARROW: dict[Family, dict[str, int]] = {
    "llava": {"text_layers": 32, "text_hidden": 256, "text_heads": 8},
    "mllama": {"text_layers": 40, "text_hidden": 256, "text_heads": 8},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, run: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    result = run()
    _sync(device)
    return time.perf_counter() - start, result


def _swept(
    runner: KnockoutRunner,
    samples: list[tuple[int, Any, list[int]]],
    pathways: list[Pathway],
    pack_bytes: int,
) -> list[SampleSweep[int]]:
    return list(runner.sweep(samples, pathways, [K], pack_bytes=pack_bytes))


def _leaf_ops(run: Callable[[], Any]) -> int:
    """ATen operators `run` dispatches that call no other (about one kernel launch each on a GPU),
    counted with torch's profiler in a run of its own (untimed)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return sum(
        1
        for event in profile.events()
        if event.name.startswith("aten::")
        and not any(c.name.startswith("aten::") for c in event.cpu_children)
    )


def _max_relative_difference(packed: list[SampleSweep[int]], alone: list[SampleSweep[int]]) -> float:
    worst = 0.0
    for p, a in zip(packed, alone, strict=True):
        for name, per_layer in a.results[K].token_probs.items():
            want = torch.tensor(per_layer, dtype=torch.float64)
            got = torch.tensor(p.results[K].token_probs[name], dtype=torch.float64)
            worst = max(worst, float(((got - want).abs() / want.abs().clamp_min(1e-300)).max()))
    return worst


def bench(
    sizes: Sizes, device: torch.device, dtype: torch.dtype, samples: int, repeats: int, mode: str
) -> dict[str, Any]:
    """Both ways, `repeats` times taking turns (after one warm-up each); medians."""
    loaded: LoadedModel = build(sizes, device=device, dtype=dtype)
    image = benchmark_image(sizes)
    answer = answer_tokens(loaded)
    prepared = [
        (
            i,
            loaded.adapter.prepare(
                loaded.model, loaded.processor, image, vqav2_prompt(QUESTIONS[i % len(QUESTIONS)])
            ),
            answer,
        )
        for i in range(samples)
    ]
    pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    calls: list[int] = []
    real_rerun = fast_module.rerun

    def counting_rerun(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[4]))
        return real_rerun(*args, **kwargs)

    fast_module.rerun = counting_rerun
    ways: dict[str, int] = {"alone": 0, "packed": 1 << 50}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    results: dict[str, list[SampleSweep[int]]] = {}
    counted: dict[str, int] = {}
    try:
        for repeat in range(repeats + 1):
            for name, pack_bytes in ways.items():
                calls.clear()
                sweep = functools.partial(_swept, runner, prepared, pathways, pack_bytes)
                elapsed, outcome = _timed(device, sweep)
                if repeat:  # the first round warms up
                    seconds[name].append(elapsed)
                results[name], counted[name] = outcome, len(calls)
    finally:
        fast_module.rerun = real_rerun
    ops = {
        name: _leaf_ops(functools.partial(_swept, runner, prepared, pathways, pack_bytes)) / samples
        for name, pack_bytes in ways.items()
    }
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "model": sizes.name,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "samples": samples,
        "prompt_tokens": sorted({int(p.input_ids.shape[1]) for _, p, _ in prepared}),
        "seconds_per_sample": {name: value / samples for name, value in median.items()},
        "alone_vs_packed": median["alone"] / median["packed"],
        "rerun_calls": counted,
        "leaf_ops_per_sample": ops,
        "max_relative_difference": _max_relative_difference(results["packed"], results["alone"]),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "model",
        "device, dtype",
        "samples (prompt tokens)",
        "alone s/sample",
        "packed s/sample",
        "alone / packed",
        "re-run calls alone → packed",
        "ATen ops / sample alone → packed",
        "max rel. diff",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        tokens = ", ".join(str(t) for t in r["prompt_tokens"])
        lines.append(
            f"| {r['model']} | {r['device']}, {r['dtype']} | {r['samples']} ({tokens}) "
            f"| {r['seconds_per_sample']['alone']:.3f} | {r['seconds_per_sample']['packed']:.3f} "
            f"| **{r['alone_vs_packed']:.2f}×** | {r['rerun_calls']['alone']} → {r['rerun_calls']['packed']} "
            f"| {r['leaf_ops_per_sample']['alone']:,.0f} → {r['leaf_ops_per_sample']['packed']:,.0f} "
            f"| {r['max_relative_difference']:.1e} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=[*FAMILIES, "both"], default="both")
    parser.add_argument("--width", choices=["narrow", "real"], default="narrow", help="decoder width")
    parser.add_argument("--tiny", action="store_true", help="tiny look-alike models (seconds, for CI)")
    parser.add_argument("--samples", type=int, default=8, help="samples swept (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way (median)")
    parser.add_argument("--mode", choices=["paper", "strict"], default="paper")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype)
    assert dtype is not None
    families: tuple[Family, ...] = FAMILIES if args.family == "both" else (args.family,)
    rows = []
    for family in families:
        if args.tiny:
            sizes = TINY[family]
        else:
            sizes = REAL[family] if args.width == "real" else narrow(family, **NARROW[family])
        rows.append(bench(sizes, device, dtype, args.samples, args.repeats, args.mode))
    threads = torch.get_num_threads()
    print(
        f"{args.mode} mode, k = {K}, 4 pathways, 2-token answer; torch {torch.__version__}, {threads} threads"
    )
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
