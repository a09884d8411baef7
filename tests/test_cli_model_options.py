"""Every command that loads a model takes the same model options and hands them to `load`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from tests.models.test_llava_original import _original_config, _write_checkpoint, original_weights, tower_dir
from vistrace.cli import app
from vistrace.models import loading
from vistrace.runs.evaluate import read_jsonl

pytestmark = [pytest.mark.integration]

__all__ = ["original_weights", "tower_dir"]  # fixtures shared with test_llava_original

MODEL_OPTIONS = ("--model", "--dtype", "--device", "--device-map", "--vision-tower")


def _commands() -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    return {name: group.commands[name] for name in ("check", "eval", "trace", "attend")}


def _options(command: Any) -> dict[str, Any]:
    return {opt: param for param in command.params for opt in param.opts if opt.startswith("--")}


def test_model_loading_commands_share_one_definition_of_the_model_options() -> None:
    commands = _commands()
    reference = _options(commands["check"])
    for name, command in commands.items():
        options = _options(command)
        for option in MODEL_OPTIONS:
            assert option in options, f"vistrace {name} lacks {option}"
            mine, theirs = options[option], reference[option]
            assert (mine.help, mine.default, mine.opts) == (theirs.help, theirs.default, theirs.opts), option


class _Stop(OSError):
    """Raised by the stand-in loader once it has recorded its arguments."""


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_load(path: Path, **kwargs: Any) -> Any:
        calls.append({"path": Path(path), **kwargs})
        raise _Stop("loader reached")

    monkeypatch.setattr(loading, "load", fake_load)
    return calls


def _arguments(command: str, root: Path) -> list[str]:
    data = root / "data.jsonl"
    Image.new("RGB", (4, 4)).save(root / "x.png")
    data.write_text(json.dumps({"id": 1, "image": "x.png", "question": "Q?", "answers": ["a"]}) + "\n")
    return {
        "check": [],
        "eval": ["--dataset", "jsonl", "--annotations", str(data), "--out", str(root / "run")],
        "trace": ["--data", str(data), "--out", str(root / "run")],
        "attend": ["--input", str(data), "--out", str(root / "run")],
    }[command]


@pytest.mark.parametrize("command", ["check", "eval", "trace", "attend"])
def test_each_command_passes_every_model_option_to_load(
    command: str, recorded: list[dict[str, Any]], tmp_path: Path
) -> None:
    options = ["--model", str(tmp_path / "ckpt"), "--vision-tower", str(tmp_path / "clip")]
    options += ["--dtype", "bfloat16", "--device-map", "auto"]
    result = CliRunner().invoke(app, [command, *options, *_arguments(command, tmp_path)])
    assert result.exit_code == 1 and "Error: loader reached" in result.output, result.output
    assert recorded == [
        {
            "path": tmp_path / "ckpt",
            "dtype": "bfloat16",
            "device": None,
            "device_map": "auto",
            "vision_tower": str(tmp_path / "clip"),
        }
    ]


def test_eval_reads_an_original_checkpoint_naming_a_hub_tower(
    tmp_path: Path, tower_dir: Path, original_weights: dict[str, Any]
) -> None:
    """A Volcano-style config names `openai/clip-vit-large-patch14-336`; `--vision-tower` supplies it."""
    config = _original_config("openai/clip-vit-large-patch14-336")
    checkpoint = _write_checkpoint(tmp_path / "volcano", original_weights, "safetensors", config)
    arguments = _arguments("eval", tmp_path)
    arguments += ["--model", str(checkpoint), "--max-new-tokens", "2"]
    runner = CliRunner()
    refused = runner.invoke(app, ["eval", *arguments])
    assert refused.exit_code == 1 and "--vision-tower DIR" in refused.output
    result = runner.invoke(app, ["eval", *arguments, "--vision-tower", str(tower_dir)])
    assert result.exit_code == 0, result.output
    (prediction,) = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert prediction["id"] == "1" and prediction["image"] == str(tmp_path / "x.png")
