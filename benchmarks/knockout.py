"""Naive vs fast knockout, side by side in one run, on models with real depth and small width.

(a) random Mllama: 40 layers, cross-attention at 3, 8, …, 38, hidden 256, 8 heads, 2 KV heads,
    intermediate 1024, one 224-px tile, a ~60-token prompt, a 2-token answer;
(b) random LLaVA: 32 layers, 576 image positions (336 px, patch 14), hidden 128, the same question
    and answer length;
(c) random Qwen2.5-VL: 28 layers (the 7B model's depth), hidden 128, 4 heads, 2 KV heads, a
    1120×700 image = 40×25 = 1,000 inline image features (one per 28×28 px), M-RoPE positions.
All four pathways, k = 9, CPU float32. `--answer-tokens N` scores an N-token answer instead of
2 tokens (a free-form answer such as a caption: 64 tokens is the long-answer case).
Prints, per case, both wall times and their ratio, the
decoder-layer × token evaluations of each strategy, and the largest |fast - naive| over every
probability (p_full and every pathway × window); `--json PATH` writes the same numbers.

    python benchmarks/knockout.py [--only mllama|llava|qwen2_5_vl] [--threads 2] [--mode paper|strict]
        [--answer-tokens 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutResult, KnockoutRunner, Pathway
from vistrace.models.loading import load
from vistrace.models.tiny import write_tiny_llava, write_tiny_mllama
from vistrace.models.tiny_qwen import write_tiny_qwen

PROMPT = (
    "Look at the image carefully and answer this visual question. For yes/no questions, just respond Yes or "
    "No. What color is the circle?"
)
ANSWER = [57, 88]
K = 9


def _image(width: int = 224, height: int = 224) -> Image.Image:
    image = Image.new("RGB", (width, height), (230, 230, 230))
    ImageDraw.Draw(image).ellipse([40, 40, 120, 120], fill=(220, 20, 20))
    return image


def _worst(fast: KnockoutResult, naive: KnockoutResult) -> float:
    worst = abs(fast.p_full - naive.p_full)
    for name, values in fast.probs.items():
        worst = max(worst, *(abs(a - b) for a, b in zip(values, naive.probs[name], strict=True)))
    return worst


def answer_tokens(n: int) -> list[int]:
    """`n` answer token ids: the 2-token answer, then ordinary ids of every tiny vocabulary."""
    return (ANSWER + [60 + (7 * i) % 50 for i in range(max(0, n - len(ANSWER)))])[:n]


def bench(
    case: str, directory: Path, mode: str, image: Image.Image | None = None, n_answer: int = len(ANSWER)
) -> dict[str, Any]:
    loaded = load(directory)
    image = _image() if image is None else image
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, PROMPT)
    pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    runner.run(prepared, ANSWER[:1], pathways[:1], K, "fast")  # warm-up
    answer = answer_tokens(n_answer)
    seconds: dict[str, float] = {}
    results: dict[str, KnockoutResult] = {}
    for strategy in ("naive", "fast"):
        start = time.perf_counter()
        results[strategy] = runner.run(prepared, answer, pathways, K, strategy)
        seconds[strategy] = time.perf_counter() - start
    naive, fast = results["naive"], results["fast"]
    return {
        "case": case,
        "mode": mode,
        "layers": runner.n_layers,
        "prompt_tokens": int(prepared.input_ids.shape[1]),
        "image_keys": None if prepared.image_keys is None else int(prepared.image_keys.numel()),
        "answer_tokens": len(answer),
        "naive_s": seconds["naive"],
        "fast_s": seconds["fast"],
        "ratio": seconds["naive"] / seconds["fast"],
        "naive_layer_evals": naive.layer_evaluations,
        "fast_layer_evals": fast.layer_evaluations,
        "evals_ratio": naive.layer_evaluations / fast.layer_evaluations,
        "max_abs_diff": _worst(fast, naive),
    }


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'case':<34} {'naive s':>9} {'fast s':>8} {'ratio':>7} {'naive layer evals':>18} "
        f"{'fast layer evals':>17} {'evals ratio':>11} {'max |fast-naive|':>17}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['case']:<34} {r['naive_s']:>9.2f} {r['fast_s']:>8.2f} {r['ratio']:>6.1f}x "
            f"{r['naive_layer_evals']:>18,} {r['fast_layer_evals']:>17,} {r['evals_ratio']:>10.1f}x "
            f"{r['max_abs_diff']:>17.2g}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["mllama", "llava", "qwen2_5_vl"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["strict", "paper"], default="paper")
    parser.add_argument("--answer-tokens", type=int, default=len(ANSWER), help="answer length in tokens")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "mllama"):
            directory = write_tiny_mllama(
                Path(tmp) / "mllama",
                num_layers=40,
                tile_size=224,
                max_num_tiles=1,
                hidden_size=256,
                num_heads=8,
                num_kv_heads=2,
                intermediate_size=1024,
            )
            rows.append(bench("(a) Mllama, 40 layers", directory, args.mode, n_answer=args.answer_tokens))
        if args.only in (None, "llava"):
            directory = write_tiny_llava(
                Path(tmp) / "llava", num_layers=32, image_size=336, patch_size=14, hidden_size=128
            )
            rows.append(
                bench(
                    "(b) LLaVA, 32 layers, 576 image pos.", directory, args.mode, n_answer=args.answer_tokens
                )
            )
        if args.only in (None, "qwen2_5_vl"):
            features = 40 * 25
            directory = write_tiny_qwen(
                "qwen2_5_vl",
                Path(tmp) / "qwen2_5_vl",
                num_layers=28,
                hidden_size=128,
                num_heads=4,
                num_kv_heads=2,
                min_pixels=features * 28 * 28,
                max_pixels=features * 28 * 28,
            )
            image = _image(1120, 700)
            rows.append(bench("(c) Qwen2.5-VL, 28 layers, 1000 feat.", directory, args.mode, image))
    for r in rows:
        print(
            f"{r['case']}: {r['mode']} mode, prompt {r['prompt_tokens']} tokens, answer {r['answer_tokens']} "
            f"tokens, k = {K}, all four pathways"
        )
    print(f"CPU float32, {args.threads} threads, torch {torch.__version__}")
    print(table(rows))
    if args.json is not None:
        meta = {"threads": args.threads, "torch": torch.__version__, "machine": platform.machine(), "k": K}
        args.json.write_text(json.dumps({"meta": meta, "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
