"""What attention capture costs, against a plain `generate` and against `output_attentions=True`.

Measured on CPU at the real image geometry of each family and a small width (random weights):
LLaVA-1.5 with 576 inline image positions (336 px, patch 14) and Llama-3.2-Vision (Mllama) with
4 tiles × 1601 = 6,404 image keys (560-px tiles of a 1120-px image) in cross-attention layers every
5th from layer 3; the decoder a few layers deep and narrow, the paper's VQAv2 prompt (about 100 text
tokens), generation of exactly N new tokens (EOS never stops it).

Three ways to generate, each a whole call from the prompt string to the tokens (the processor
included), run in turn `--repeats` times, medians compared:

- `generate`: `vistrace.capture.generate.generate_text`, the model on its fast (sdpa) path;
- `capture`: `vistrace.capture.generate.capture`, every generated token's attention on the image kept;
- `output_attentions`: `model.generate(output_attentions=True, return_dict_in_generate=True)` with
  the language model on eager attention (what the research code did).

Memory, two ways:

- attention kept: the bytes of the attention tensors each one holds when generation ends: every tensor
  `output_attentions` returns, against the rows the capture keeps (float32 while generating, which is
  what it holds; the `StageCapture` it returns stores them as float16, half that). Exact and
  independent of the allocator: this is the number the 1/50 target is about.
- peak RSS rise: each run in a process of its own, forked from the one holding the model, one thread;
  the kernel's peak-RSS counter is reset (`/proc/self/clear_refs`) and the rise of `VmHWM` above
  the resident set before the run is reported. It sees every allocation (torch's CPU allocator is
  invisible to tracemalloc), transient ones included: the eager path's score matrices, the KV cache,
  the logits. Linux only; skipped elsewhere.

    python benchmarks/capture.py [--family llava|mllama|both] [--new-tokens 25,100] [--repeats 7]
                                 [--threads 1] [--tiny] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vistrace.capture.generate import capture, generate_text
from vistrace.models.loading import LoadedModel

from _models import FAMILIES, PROMPT, TINY, Family, Sizes, benchmark_image, build, narrow

MODES = ("generate", "capture", "output_attentions")
# Depth and width of the CPU models (the image geometry is the real one): Mllama keeps the real
# ratio of cross-attention layers (2 of 10, as 8 of 40).
CPU_SHAPES: dict[Family, dict[str, int]] = {
    "llava": {"text_layers": 4, "text_hidden": 256, "text_heads": 8},
    "mllama": {"text_layers": 10, "text_hidden": 256, "text_heads": 8},
}
Runner = Callable[[LoadedModel, Image.Image, int], int]


@contextlib.contextmanager
def eager_text_attention(model: Any) -> Iterator[None]:
    """The language model on eager attention (needed for `output_attentions`), restored on exit."""
    previous = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    try:
        yield
    finally:
        model.set_attn_implementation({"text_config": previous})


def _model_inputs(loaded: LoadedModel, image: Image.Image) -> dict[str, torch.Tensor]:
    """The processor's inputs for the benchmark prompt, as `capture` builds them."""
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, PROMPT)
    dtype = next(loaded.model.parameters()).dtype
    moved = {}
    for key, value in prepared.inputs.items():
        value = value.to(loaded.device)
        moved[key] = value.to(dtype) if value.is_floating_point() else value
    return moved


def run_generate(loaded: LoadedModel, image: Image.Image, new_tokens: int) -> int:
    """Plain generation; keeps no attention (returns 0 bytes)."""
    generate_text(loaded, image, PROMPT, max_new_tokens=new_tokens)
    return 0


def run_capture(loaded: LoadedModel, image: Image.Image, new_tokens: int) -> int:
    """Generation with capture; returns the bytes of the captured rows as held while generating
    (float32)."""
    stage = capture(loaded, image, PROMPT, max_new_tokens=new_tokens)
    if stage.num_tokens != new_tokens:
        raise RuntimeError(f"capture generated {stage.num_tokens} tokens, expected {new_tokens}")
    return stage.image_attention.numel() * 4


def run_output_attentions(loaded: LoadedModel, image: Image.Image, new_tokens: int) -> int:
    """Generation with `output_attentions=True`; returns the bytes of every attention tensor returned."""
    inputs = _model_inputs(loaded, image)
    with torch.no_grad(), eager_text_attention(loaded.model):
        out = loaded.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            do_sample=False,
            output_attentions=True,
            return_dict_in_generate=True,
        )
    generated = int(out.sequences.shape[1] - inputs["input_ids"].shape[1])
    if generated != new_tokens:
        raise RuntimeError(f"generate generated {generated} tokens, expected {new_tokens}")
    return sum(t.numel() * t.element_size() for step in out.attentions for t in step)


RUNNERS: dict[str, Runner] = {
    "generate": run_generate,
    "capture": run_capture,
    "output_attentions": run_output_attentions,
}


def time_runs(
    loaded: LoadedModel,
    image: Image.Image,
    new_tokens: int,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds of every run of each mode (after one warm-up each, the modes taking turns) and the
    attention bytes each keeps."""
    kept = {mode: RUNNERS[mode](loaded, image, new_tokens) for mode in MODES}
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            start = time.perf_counter()
            RUNNERS[mode](loaded, image, new_tokens)
            seconds[mode].append(time.perf_counter() - start)
    return seconds, kept


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def can_measure_rss() -> bool:
    """Whether this system lets a process reset its peak-RSS counter (Linux)."""
    return hasattr(os, "fork") and os.access("/proc/self/clear_refs", os.W_OK)


def _release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel, so a child cannot reuse the parent's."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_rise_kib(run: Callable[[], object]) -> int:
    """KiB the peak resident set rises above the resident set before `run`, run in a forked child
    on one thread (so a parent that used OpenMP threads is safe to fork)."""
    gc.collect()
    _release_free_heap()
    gc.freeze()  # the child's garbage collector then leaves the shared pages alone
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(read_fd)
            torch.set_num_threads(1)
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_kib("VmRSS")
            run()
            os.write(write_fd, str(_status_kib("VmHWM") - before).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    gc.unfreeze()
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise RuntimeError(f"the memory measurement's child process failed (status {status})")
    return int(text)


def measure(
    sizes: Sizes,
    new_tokens: list[int],
    repeats: int,
    rss: bool,
) -> list[dict[str, Any]]:
    """One row per number of new tokens: medians, ratios, attention bytes kept, peak RSS rises."""
    loaded = build(sizes)
    image = benchmark_image(sizes)
    prompt_tokens = int(_model_inputs(loaded, image)["input_ids"].shape[1])
    rows = []
    for tokens in new_tokens:
        rises: dict[str, int] = {}
        if rss:  # before this row's timings, the C heap trimmed before each fork
            for mode in MODES:
                rises[mode] = rss_rise_kib(functools.partial(RUNNERS[mode], loaded, image, tokens))
        runs, kept = time_runs(loaded, image, tokens, repeats)
        seconds = {mode: statistics.median(values) for mode, values in runs.items()}
        rows.append(
            {
                "model": sizes.name,
                "family": sizes.family,
                "image_keys": sizes.image_keys,
                "captured_layers": sizes.captured_layers,
                "heads": sizes.text_heads,
                "prompt_tokens": prompt_tokens,
                "new_tokens": tokens,
                "seconds": seconds,
                "runs_seconds": runs,
                "capture_vs_generate": seconds["capture"] / seconds["generate"],
                "output_attentions_vs_generate": seconds["output_attentions"] / seconds["generate"],
                "added_ms_per_token": 1000 * (seconds["capture"] - seconds["generate"]) / tokens,
                "kept_bytes": {"output_attentions": kept["output_attentions"], "capture": kept["capture"]},
                "output_attentions_vs_capture_kept": kept["output_attentions"] / kept["capture"],
                "rss_rise_kib": rises or None,
                "output_attentions_vs_capture_rss": (
                    rises["output_attentions"] / max(1, rises["capture"]) if rises else None
                ),
            }
        )
    return rows


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The time table and the memory table."""
    time_header = (
        f"{'model':<32} {'image keys':>10} {'prompt':>6} {'new':>4} {'generate s':>10} {'capture s':>9} "
        f"{'capture/generate':>16} {'+ms/token':>9} {'output_attn s':>13} {'output_attn/generate':>20}"
    )
    lines = [time_header, "-" * len(time_header)]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"{r['model']:<32} {r['image_keys']:>10,} {r['prompt_tokens']:>6} {r['new_tokens']:>4} "
            f"{s['generate']:>10.3f} {s['capture']:>9.3f} {r['capture_vs_generate']:>15.2f}x "
            f"{r['added_ms_per_token']:>9.2f} {s['output_attentions']:>13.3f} "
            f"{r['output_attentions_vs_generate']:>19.2f}x"
        )
    ratio = "capture/output_attn"
    memory_header = (
        f"{'model':<32} {'new':>4} {'kept: output_attn MiB':>21} {'capture MiB':>11} {ratio:>19}"
        f" {'RSS rise: generate MiB':>22} {'capture MiB':>11} {'output_attn MiB':>15} {ratio:>19}"
    )
    lines += ["", memory_header, "-" * len(memory_header)]
    for r in rows:
        kept = r["kept_bytes"]
        rss = r["rss_rise_kib"]
        rss_cells = (
            f"{_mib(rss['generate'] * 1024):>22} {_mib(rss['capture'] * 1024):>11} "
            f"{_mib(rss['output_attentions'] * 1024):>15} "
            f"{'1/' + format(r['output_attentions_vs_capture_rss'], '.1f'):>19}"
            if rss
            else f"{'-':>22} {'-':>11} {'-':>15} {'-':>19}"
        )
        lines.append(
            f"{r['model']:<32} {r['new_tokens']:>4} {_mib(kept['output_attentions']):>21} "
            f"{_mib(kept['capture']):>11} {'1/' + format(r['output_attentions_vs_capture_kept'], '.1f'):>19} "
            f"{rss_cells}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=[*FAMILIES, "both"], default="both")
    parser.add_argument(
        "--new-tokens", default="25,100", help="comma-separated numbers of generated tokens (default 25,100)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each mode (median)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steady on a shared machine)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny look-alike models (seconds, for CI)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS measurements")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the memory runs fork
    torch.set_num_threads(args.threads)
    families = FAMILIES if args.family == "both" else (args.family,)
    new_tokens = [int(n) for n in args.new_tokens.split(",")]
    rss = not args.no_rss and can_measure_rss()
    rows = []
    for family in families:
        sizes = TINY[family] if args.tiny else narrow(family, **CPU_SHAPES[family])
        rows.extend(measure(sizes, new_tokens, args.repeats, rss))
    print(
        f"CPU float32, {args.threads} threads, torch {torch.__version__}; median of {args.repeats} runs; "
        f"kept = attention tensors held at the end of generation (capture: float32 rows); "
        f"RSS rise = peak resident set above the start, one forked process per run, 1 thread"
    )
    print(table(rows))
    if args.json is not None:
        meta = {
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "repeats": args.repeats,
            "prompt": PROMPT,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
