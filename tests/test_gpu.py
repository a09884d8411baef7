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


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_sweeps_on_cuda_equal_the_cpu_one_at_a_time(tiny_dirs: dict[str, Path], family: str) -> None:
    """Packing is on by default on CUDA (a tenth of the GPU's memory): its numbers are the CPU's."""
    image = scene_image()
    questions = ["What colour is the block?", "Is there a blue block in the picture?", "Colour?"]
    results = {}
    for device in ("cpu", "cuda"):
        model = vistrace.load(tiny_dirs[family], device=device)
        pairs = [(model.prompt(image, q), [5]) for q in questions]
        sweeps = vistrace.knockout_sweeps(model, pairs, window=3, pack_memory=None if device == "cuda" else 0)
        results[device] = torch.stack(
            [sweep.token_probs.log() for sweep in sweeps if sweep.token_probs is not None]
        )
    assert results["cuda"].shape == (3, 4, model.num_layers, 1)
    torch.testing.assert_close(results["cuda"], results["cpu"], atol=1e-4, rtol=1e-4, msg=family)
