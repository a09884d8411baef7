"""The README's Python example and the tutorial run as written, from one import."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_python_example_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = _blocks(ROOT / "README.md")
    assert len(blocks) == 1
    assert "from vistrace." not in blocks[0]  # one import: the public API
    exec(compile(blocks[0], str(ROOT / "README.md"), "exec"), {})
    first, second = capsys.readouterr().out.splitlines()
    p_full, shape = first.split(" ", 1)
    assert 0.0 < float(p_full) <= 1.0 and shape == "torch.Size([2, 10])"
    assert re.fullmatch(r"\S.* torch\.Size\(\[\d+\]\)", second), second  # the answer, then (N,)
    assert (tmp_path / "sweep.safetensors").is_file() and (tmp_path / "sweep.json").is_file()


def test_tutorial_runs_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every code block of docs/tutorial.md, in order, in one namespace, as a notebook runs them."""
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    blocks = _blocks(ROOT / "docs" / "tutorial.md")
    assert len(blocks) >= 4
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/tutorial.md block {index + 1}", "exec"), namespace)
