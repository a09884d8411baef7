"""Peak memory of a knockout sweep against one forward pass (CPU, Linux).

Each measurement runs in a fresh process on the benchmark's random 32-layer LLaVA (576 image
positions, small width): load the model and prepare the prompt, reset the kernel's peak-RSS counter
(``/proc/self/clear_refs``), then run one plain forward, the ``fast`` sweep or the ``naive`` sweep
(all four pathways, k = 9, 2 answer tokens) and report how far the peak rose above the resident set
before it. Prints the increments and their ratios to the forward's.

    python benchmarks/knockout_memory.py [--mode paper|strict]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vistrace.knockout.sweep import PAPER_PATHWAYS, KnockoutRunner, Pathway
from vistrace.models.loading import load
from vistrace.models.tiny import write_tiny_llava

from knockout import ANSWER, PROMPT, K, _image


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(directory: Path, what: str, mode: str) -> int:
    """KiB the peak resident set rose above the resident set before running `what`."""
    torch.set_num_threads(1)
    loaded = load(directory)
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, _image(), PROMPT)
    runner = KnockoutRunner(loaded, mode=mode)  # type: ignore[arg-type]
    pathways = [Pathway.parse(p) for p in PAPER_PATHWAYS]
    inputs = dict(prepared.inputs)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    with torch.no_grad():
        if what == "forward":
            loaded.model(**inputs)
        else:
            runner.run(prepared, ANSWER, pathways, K, what)
    return _status_kib("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["strict", "paper"], default="paper")
    parser.add_argument("--what", choices=["forward", "fast", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what is not None:
        print(measure(args.dir, args.what, args.mode))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_tiny_llava(
            Path(tmp) / "llava", num_layers=32, image_size=336, patch_size=14, hidden_size=128
        )
        rises = {}
        for what in ("forward", "fast", "naive"):
            command = [sys.executable, __file__, "--what", what, "--dir", str(directory), "--mode", args.mode]
            rises[what] = int(
                subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1]
            )
    print(f"LLaVA, 32 layers, 576 image positions, {args.mode} mode, k = {K}, four pathways, 2 answer tokens")
    for what, kib in rises.items():
        print(f"  {what:<8} peak rise {kib / 1024:8.1f} MiB   {kib / rises['forward']:5.2f}x one forward")


if __name__ == "__main__":
    main()
