#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu.py) in one command, on a machine with one CUDA GPU: random-weight
# LLaVA-1.5-7B and Llama-3.2-11B-Vision in bf16, side by side. Needs a Python whose torch sees the GPU
# and whose transformers is within the project's pin (pyproject.toml); the project need not be
# installed, src/ is put on the path. Prints the table and writes the numbers to OUT (gpu.json); then
# packed fast sweeps against one sample at a time at the same configurations (benchmarks/packing.py),
# numbers to OUT's name with -packing (gpu-packing.json).
#
#     benchmarks/gpu_run.sh [OUT.json] [more gpu.py options]      (PYTHON=... to pick the interpreter)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
out="${1:-gpu.json}"
shift || true
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch")'
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" "$root/benchmarks/gpu.py" --family both --repeats 3 --json "$out" "$@"
"$python" "$root/benchmarks/packing.py" --width real --device cuda --dtype bfloat16 --json "${out%.json}-packing.json"
