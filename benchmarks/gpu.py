"""vistrace at real size on one GPU: random-weight LLaVA-1.5-7B and Llama-3.2-11B-Vision, side by side.

The models have the real configurations (see `_models.py`: 7.06 B and 10.67 B parameters; 576
inline image positions; 4 tiles × 1601 = 6,404 cross-attention image keys) and transformers' own
random initialisation, made directly on the GPU in bf16; the processors are the real ones built
offline with a small tokenizer. Prompt: the paper's VQAv2 prompt (about 100 text tokens). Per family,
each run `--repeats` times (the runs taking turns, medians reported), with the peak GPU memory of each:

- `forward`: one forward pass over the prompt and the image;
- `generate`: `vistrace.capture.generate.generate_text`, N new tokens (EOS never stops it);
- `capture`: `vistrace.capture.generate.capture`, the same generation keeping every generated token's
  attention on the image; its time against `generate` (target <= 1.3x);
- `output_attentions`: `model.generate(output_attentions=True)`, the language model on eager
  attention, as the research code did;
- `naive` and `fast`: a knockout sweep of one sample (4 pathways, k = 9, a 2-token answer) with
  `KnockoutRunner`, both strategies, their ratio and the largest relative difference of their
  probabilities.

Memory of capture against `output_attentions`, two ways: the attention each keeps (bytes of every
tensor `output_attentions` returns; the capture's rows as float32, which is how it holds them while
generating), and the GPU memory each adds above plain generation (target <= 1/50).

On a machine with one CUDA GPU (40 GB or more; the two models are built and measured one after the
other), with a torch that sees it and a transformers within the project's pin, from the repository
root, the one command is

    benchmarks/gpu_run.sh gpu.json

which runs `PYTHONPATH=src python3 benchmarks/gpu.py --family both --repeats 3 --json gpu.json`
(`PYTHON=...` picks another interpreter). `--help` needs no GPU, and on a CPU `--tiny` runs tiny
models of the same structure in seconds:

    python benchmarks/gpu.py --tiny
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutResult, KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel, resolve_dtype

from _models import (
    FAMILIES,
    PROMPT,
    REAL,
    TINY,
    Family,
    Sizes,
    answer_tokens,
    benchmark_image,
    build,
    parameter_count,
)
from capture import run_capture, run_generate, run_output_attentions

K = 9
RUN_NAMES = ("forward", "generate", "capture", "output_attentions", "naive", "fast")


@dataclass
class Timing:
    """Seconds of every repeat, and the peak GPU memory of the runs (None on a CPU)."""

    seconds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    rise_bytes: int | None = None
    result: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


class Meter:
    """Times calls on one device; on CUDA also their peak memory and its rise above the memory
    allocated before the call (the weights, mostly)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def __call__(self, timing: Timing, run: Callable[[], Any]) -> None:
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        timing.result = run()
        self.sync()
        timing.seconds.append(time.perf_counter() - start)
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            timing.peak_bytes = max(timing.peak_bytes or 0, peak)
            timing.rise_bytes = max(timing.rise_bytes or 0, peak - before)


def _max_relative_difference(fast: KnockoutResult, naive: KnockoutResult) -> float:
    pairs = [(fast.p_full, naive.p_full)]
    for name, values in fast.probs.items():
        pairs.extend(zip(values, naive.probs[name], strict=True))
    return max(abs(a - b) / max(abs(b), 1e-30) for a, b in pairs)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator / max(denominator, 1e-30)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_family(
    sizes: Sizes, device: torch.device, dtype: torch.dtype, repeats: int, new_tokens: int, mode: str
) -> dict[str, Any]:
    """Every run of one family, `repeats` times in turn; medians, ratios and memory. A run that
    fails is reported as failed (with its error) and the others go on."""
    meter = Meter(device)
    _log(f"{sizes.name}: building")
    start = time.perf_counter()
    loaded: LoadedModel = build(sizes, device=device, dtype=dtype)
    meter.sync()
    build_s = time.perf_counter() - start
    weights_bytes = torch.cuda.memory_allocated(device) if meter.cuda else None
    image = benchmark_image(sizes)
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, PROMPT)
    inputs = {
        key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
        for key, value in prepared.inputs.items()
    }
    answer = answer_tokens(loaded)
    pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]

    def forward() -> None:
        with torch.no_grad():
            loaded.model(**inputs)

    runs: dict[str, Callable[[], Any]] = {
        "forward": forward,
        "generate": lambda: run_generate(loaded, image, new_tokens),
        "capture": lambda: run_capture(loaded, image, new_tokens),
        "output_attentions": lambda: run_output_attentions(loaded, image, new_tokens),
        "naive": lambda: runner.run(prepared, answer, pathways, K, "naive"),
        "fast": lambda: runner.run(prepared, answer, pathways, K, "fast"),
    }
    warm_ups: dict[str, Callable[[], Any]] = {
        **runs,
        # The naive sweep is one forward per window: one pathway and one answer token warm it up.
        "naive": lambda: runner.run(prepared, answer[:1], pathways[:1], K, "naive"),
    }
    failures: dict[str, str] = {}
    timings = {name: Timing() for name in RUN_NAMES}
    steps: list[tuple[str, str, Callable[[], Any], Timing | None]] = [
        ("warm-up", name, warm_ups[name], None) for name in RUN_NAMES
    ]
    for repeat in range(repeats):
        steps += [(f"run {repeat + 1}/{repeats}", name, runs[name], timings[name]) for name in RUN_NAMES]
    for label, name, run, timing in steps:
        if name in failures:
            continue
        _log(f"{sizes.name}: {label} {name}")
        try:
            if timing is None:
                run()
            else:
                meter(timing, run)
        except Exception as error:  # one failed run must not cost the others
            traceback.print_exc()
            failures[name] = f"{type(error).__name__}: {error}"
            if meter.cuda:
                torch.cuda.empty_cache()
    ok = {name: t for name, t in timings.items() if name not in failures and t.seconds}
    seconds: dict[str, float | None] = {name: ok[name].median if name in ok else None for name in RUN_NAMES}
    gpu_rise = {name: t.rise_bytes for name, t in timings.items()}
    kept: dict[str, int | None] = {
        name: int(ok[name].result) if name in ok else None for name in ("output_attentions", "capture")
    }
    extra: dict[str, float | None] = {"capture": None, "output_attentions": None}
    if meter.cuda:
        for name in extra:
            if name in ok and "generate" in ok:
                extra[name] = float((gpu_rise[name] or 0) - (gpu_rise["generate"] or 0))
    both_sweeps = "naive" in ok and "fast" in ok
    row = {
        "model": sizes.name,
        "family": sizes.family,
        "parameters": parameter_count(loaded.model),
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(device) if meter.cuda else platform.processor() or "cpu",
        "build_s": build_s,
        "weights_bytes": weights_bytes,
        "prompt_tokens": int(prepared.input_ids.shape[1]),
        "image_keys": sizes.image_keys,
        "new_tokens": new_tokens,
        "answer_tokens": len(answer),
        "k": K,
        "mode": mode,
        "repeats": repeats,
        "failures": failures,
        "seconds": seconds,
        "gpu_peak_bytes": {name: t.peak_bytes for name, t in timings.items()},
        "gpu_rise_bytes": gpu_rise,
        "capture_vs_generate": _ratio(seconds["capture"], seconds["generate"]),
        "output_attentions_vs_generate": _ratio(seconds["output_attentions"], seconds["generate"]),
        "naive_vs_fast": _ratio(seconds["naive"], seconds["fast"]),
        "naive_layer_evals": ok["naive"].result.layer_evaluations if "naive" in ok else None,
        "fast_layer_evals": ok["fast"].result.layer_evaluations if "fast" in ok else None,
        "fast_naive_max_relative_difference": (
            _max_relative_difference(ok["fast"].result, ok["naive"].result) if both_sweeps else None
        ),
        "kept_bytes": kept,
        "output_attentions_vs_capture_kept": _ratio(kept["output_attentions"], kept["capture"]),
        "gpu_extra_over_generate_bytes": extra,
        "output_attentions_vs_capture_gpu_extra": (
            _ratio(extra["output_attentions"], max(1.0, extra["capture"]))
            if extra["capture"] is not None
            else None
        ),
    }
    return row


def _gib(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**30:.2f}"


def _mib(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.1f}"


def _times(ratio: float | None, what: str) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x {what}"


def _one_in(ratio: float | None) -> str:
    return "-" if ratio is None else f"1/{ratio:.1f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Runs per family (seconds, ratios, peak GPU memory), then capture's memory against
    `output_attentions`, then the sweeps' work and agreement."""
    header = f"{'model':<22} {'run':<34} {'seconds':>9} {'ratio':<34} {'peak GPU GiB':>12} {'rise MiB':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        s, peak, rise = r["seconds"], r["gpu_peak_bytes"], r["gpu_rise_bytes"]
        labels = {
            "forward": f"forward ({r['prompt_tokens']} prompt tokens)",
            "generate": f"generate ({r['new_tokens']} new tokens)",
            "capture": "capture",
            "output_attentions": "generate, output_attentions=True",
            "naive": f"naive sweep (4 pathways, k = {r['k']})",
            "fast": f"fast sweep ({r['answer_tokens']}-token answer)",
        }
        ratios = {
            "forward": "",
            "generate": "1.00x",
            "capture": _times(r["capture_vs_generate"], "generate (target <= 1.3x)"),
            "output_attentions": _times(r["output_attentions_vs_generate"], "generate"),
            "naive": "",
            "fast": _times(r["naive_vs_fast"], "faster than naive"),
        }
        for i, name in enumerate(RUN_NAMES):
            model = r["model"] if i == 0 else ""
            cell = "failed" if s[name] is None else f"{s[name]:.3f}"
            lines.append(
                f"{model:<22} {labels[name]:<34} {cell:>9} {ratios[name]:<34} "
                f"{_gib(peak[name]):>12} {_mib(rise[name]):>10}"
            )
    memory_header = (
        f"{'model':<22} {'kept: output_attn MiB':>21} {'capture MiB':>11} {'capture/output_attn':>19}  "
        f"{'GPU above generate: output_attn MiB':>35} {'capture MiB':>11} {'capture/output_attn':>19}"
    )
    lines += ["", memory_header, "-" * len(memory_header)]
    for r in rows:
        kept, extra = r["kept_bytes"], r["gpu_extra_over_generate_bytes"]
        lines.append(
            f"{r['model']:<22} {_mib(kept['output_attentions']):>21} {_mib(kept['capture']):>11} "
            f"{_one_in(r['output_attentions_vs_capture_kept']):>19}  "
            f"{_mib(extra['output_attentions']):>35} {_mib(extra['capture']):>11} "
            f"{_one_in(r['output_attentions_vs_capture_gpu_extra']):>19}"
        )
    lines.append("(memory target: capture/output_attn <= 1/50)")
    sweep_header = (
        f"{'model':<22} {'naive layer evals':>18} {'fast layer evals':>17} {'max rel |fast-naive|':>21}"
    )
    lines += ["", sweep_header, "-" * len(sweep_header)]
    for r in rows:
        difference = r["fast_naive_max_relative_difference"]
        lines.append(
            f"{r['model']:<22} {_count(r['naive_layer_evals']):>18} {_count(r['fast_layer_evals']):>17} "
            f"{'-' if difference is None else format(difference, '.2g'):>21}"
        )
    for r in rows:
        for name, error in r["failures"].items():
            lines.append(f"{r['model']}: {name} failed: {error}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=[*FAMILIES, "both"], default="both")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="model dtype (default: bfloat16 on a GPU, float32 on a CPU)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of everything (median)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per generation")
    parser.add_argument("--mode", choices=["paper", "strict"], default="paper", help="knockout mode")
    parser.add_argument("--tiny", action="store_true", help="tiny models of the same structure (CPU, CI)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    if not args.tiny and torch.device(args.device).type == "cpu":
        parser.error("the real-size models need a GPU (--device cuda); on a CPU use --tiny")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype)
    families: tuple[Family, ...] = FAMILIES if args.family == "both" else (args.family,)
    presets = TINY if args.tiny else REAL
    rows = []
    for family in families:
        rows.append(bench_family(presets[family], device, dtype, args.repeats, args.new_tokens, args.mode))
        gc.collect()  # the model goes before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    first = rows[0]
    print(
        f"{first['device']}, {first['dtype']}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; random weights; median of {args.repeats} runs taking turns; "
        f"knockout {args.mode} mode"
    )
    for r in rows:
        print(
            f"{r['model']}: {r['parameters']:,} parameters, {r['image_keys']:,} image keys, "
            f"prompt {r['prompt_tokens']} tokens; built in {r['build_s']:.1f} s"
        )
    print(table(rows))
    if args.json is not None:
        meta = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "machine": platform.machine(),
            "argv": list(argv) if argv is not None else sys.argv[1:],
            "prompt": PROMPT,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
