"""`vistrace check` through the CLI: all PASS on the tiny checkpoints, a named FAIL on a broken seam."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from typer.testing import CliRunner

import vistrace.hook.seam as seam
from vistrace import check
from vistrace.cli import app
from vistrace.models.tiny import FAMILIES

pytestmark = [pytest.mark.integration, pytest.mark.contract]

CHECKS = tuple(c.name for c in check.CHECKS)
EMPTY_PLAN, CAUSALITY, TARGETED_ROWS, _, IMAGE_KEYS, _, _, _ = CHECKS


@pytest.fixture(autouse=True)
def registered_seam() -> Iterator[None]:
    """The seam registered before a test swaps its pieces (registration is idempotent and keeps a swap)."""
    seam.register()
    yield


def _check(model_dir: Path) -> tuple[int, dict[str, str], str]:
    """Exit code, {check name: PASS/FAIL}, and the whole output of `vistrace check --model DIR`."""
    result = CliRunner().invoke(app, ["check", "--model", str(model_dir)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    verdicts = {}
    for line in result.stdout.splitlines():
        for name in CHECKS:
            if line.startswith(name):
                verdicts[name] = line[len(name) :].split()[0]
    assert set(verdicts) == set(CHECKS), result.output
    return result.exit_code, verdicts, result.output


def _failed(verdicts: dict[str, str]) -> set[str]:
    return {name for name, verdict in verdicts.items() if verdict != "PASS"}


@pytest.mark.parametrize("family", FAMILIES)
def test_check_passes_on_the_tiny_checkpoints(family: str, tiny_dirs: dict[str, Path]) -> None:
    code, verdicts, output = _check(tiny_dirs[family])
    assert code == 0, output
    assert set(verdicts.values()) == {"PASS"}, output
    assert "failed" not in output


def _noisy_sdpa() -> Callable[..., Any]:
    generator = torch.Generator().manual_seed(0)

    def noisy(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        output, weights = sdpa_attention_forward(*args, **kwargs)
        noise = torch.randn(output.shape, generator=generator).to(output)
        return output + 1e-2 * noise, weights

    return noisy


def _plan_blind(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A seam that hands every call to sdpa: no block is applied, nothing is captured (the call still
    counts as reaching the seam, so the layers-reached check does not fire first)."""
    for reached in seam.REACHED_LAYERS.get():
        reached.add(int(getattr(module, "layer_idx")))  # noqa: B009
    output, _ = sdpa_attention_forward(module, *args, **kwargs)
    return output, None


@pytest.mark.parametrize("family", FAMILIES)
def test_check_fails_when_the_seam_adds_noise(
    family: str, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seam, "sdpa_attention_forward", _noisy_sdpa())
    code, verdicts, output = _check(tiny_dirs[family])
    assert code == 1
    assert {EMPTY_PLAN, CAUSALITY, TARGETED_ROWS} <= _failed(verdicts), output
    assert verdicts[IMAGE_KEYS] == "PASS"
    assert "FAIL    AssertionError: max |logit difference|" in output
    assert f"check(s) failed: {EMPTY_PLAN}" in output


@pytest.mark.parametrize("family", FAMILIES)
def test_check_fails_when_the_causal_mask_is_lost(
    family: str, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented trap: with sdpa's mask function the seam gets no mask for an unpadded batch (or,
    for Gemma 3's bidirectional image block, a boolean one that adds 0 or 1 to the scores), and the
    rows it computes itself would see later positions. The contracts stop it before any number."""
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, seam.SEAM_NAME, sdpa_mask)
    result = CliRunner().invoke(app, ["check", "--model", str(tiny_dirs[family])])
    assert result.exit_code == 1, result.output
    rerun_line = next(line for line in result.output.splitlines() if line.startswith("re-run of decoder"))
    assert "FAIL" in rerun_line and "'attention_mask'" in rerun_line and "4-d" in rerun_line, rerun_line
    assert not any(line.startswith(name) for line in result.output.splitlines() for name in CHECKS)


@pytest.mark.parametrize("family", FAMILIES)
def test_check_fails_when_the_seam_ignores_the_plan(
    family: str, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(AttentionInterface._global_mapping, seam.SEAM_NAME, _plan_blind)
    code, verdicts, output = _check(tiny_dirs[family])
    assert code == 1
    failed = _failed(verdicts)
    assert {CAUSALITY, IMAGE_KEYS} <= failed, output
    if family == "llava":  # Mllama's row-mask hook still zeroes the blocked row's MLP update
        assert TARGETED_ROWS in failed, output
    assert verdicts[EMPTY_PLAN] == "PASS"
    causality_line = next(line for line in output.splitlines() if line.startswith(CAUSALITY))
    assert "the explicit path was not run" in causality_line


@pytest.mark.unit
def test_the_tolerances_follow_the_dtype() -> None:
    """float32's bounds are the ones check always had; half precision holds fewer bits, bfloat16 the
    fewest (8 significant bits: a logit of 16-32 in steps of 0.125, eight times float16's)."""
    f32, f16, bf16 = (check.tolerance_for(d) for d in (torch.float32, torch.float16, torch.bfloat16))
    assert (f32.logit, f32.probability, f32.log_probability) == (1e-4, 1.1e-4, 1e-3)
    assert (f16.logit, f16.probability, f16.log_probability) == (2e-2, 5.1e-2, 0.3)
    assert (bf16.logit, bf16.probability, bf16.log_probability) == (0.25, 5.1e-2, 0.75)
    for field in ("logit", "log_probability"):
        assert getattr(f32, field) < getattr(f16, field) < getattr(bf16, field)
    assert check.tolerance_for(torch.float64) == f32
    assert all(t.why for t in check.TOLERANCES.values())


def test_check_in_bfloat16_uses_the_bfloat16_tolerances(tiny_dirs: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["check", "--model", str(tiny_dirs["llava"]), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("fast == naive"))
    assert "PASS" in line and "(bfloat16: at most 0.051, 0.75)" in line, line


def test_the_check_table_says_what_each_check_proves() -> None:
    assert len(set(CHECKS)) == len(CHECKS) == 8
    assert all(c.proves and callable(c.run) for c in check.CHECKS)
