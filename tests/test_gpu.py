"""On a CUDA GPU: the seam's numbers equal the CPU's, for every tiny family, in both strategies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vistrace
from vistrace.models.tiny import FAMILIES

from .conftest import scene_image

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


@pytest.mark.parametrize("family", FAMILIES)
def test_knockout_on_cuda_equals_cpu(tiny_dirs: dict[str, Path], family: str) -> None:
    image = scene_image()
    results = {}
    for device in ("cpu", "cuda"):
        model = vistrace.load(tiny_dirs[family], device=device)
        prompt = model.prompt(image, "What colour is the block?")
        for strategy in ("naive", "fast"):
            sweep = vistrace.knockout_sweep(model, prompt, [5], window=3, strategy=strategy)
            assert sweep.token_probs is not None
            results[device, strategy] = sweep.token_probs.log()
    reference = results["cpu", "naive"]
    for key, value in results.items():
        torch.testing.assert_close(value, reference, atol=1e-4, rtol=1e-4, msg=f"{family} {key}")


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_on_cuda_equals_cpu(tiny_dirs: dict[str, Path], family: str) -> None:
    image = scene_image()
    maps = []
    for device in ("cpu", "cuda"):
        model = vistrace.load(tiny_dirs[family], device=device)
        maps.append(vistrace.attend(model, image, "What colour is the block?", max_new_tokens=3).attention)
    torch.testing.assert_close(maps[1].cpu().float(), maps[0].float(), atol=1e-4, rtol=1e-3)
