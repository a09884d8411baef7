"""Every command that loads a model takes the same model options and hands them to `load`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
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


def test_the_model_options_default_to_auto_and_say_the_rule() -> None:
    options = _options(_commands()["check"])
    assert options["--dtype"].default == "auto"
    assert "auto: the checkpoint's own dtype" in options["--dtype"].help
    assert "float32 on a CPU" in options["--dtype"].help
    assert options["--device"].default is None and "the GPU when one is present" in options["--device"].help


@pytest.mark.parametrize("command", ["check", "eval", "trace", "attend"])
def test_without_a_device_the_gpu_is_used_when_present(
    command: str, recorded: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app, [command, "--model", str(tmp_path / "ckpt"), *_arguments(command, tmp_path)]
    )
    assert result.exit_code == 1 and "Error: loader reached" in result.output, result.output
    assert recorded[0]["dtype"] == "auto" and recorded[0]["device"] == "auto"
    assert recorded[0]["device_map"] is None


def test_a_tilde_is_expanded_in_path_options(
    recorded: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _arguments("eval", tmp_path)
    options = ["--model", "~/ckpt", "--vision-tower", "~/clip", "--dataset", "jsonl"]
    options += ["--annotations", "~/data.jsonl", "--images", "~", "--out", "~/run"]
    result = CliRunner().invoke(app, ["eval", *options])
    assert result.exit_code == 1 and "Error: loader reached" in result.output, result.output
    assert recorded[0]["path"] == tmp_path / "ckpt" and recorded[0]["vision_tower"] == str(tmp_path / "clip")
    assert (tmp_path / "run").is_dir() and not Path("~").exists()


def _every_command() -> list[list[str]]:
    group: Any = typer.main.get_command(app)
    paths = [[]] + [[name] for name in group.commands if name != "plot"]
    return paths + [["plot", name] for name in group.commands["plot"].commands]


@pytest.mark.parametrize("path", _every_command(), ids=lambda path: " ".join(path) or "vistrace")
def test_h_shows_the_help_and_flags_take_no_value(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "-h"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output
    assert "<bool>" not in result.output


@pytest.mark.unit
def test_auto_dtype_is_the_checkpoints_on_a_gpu_and_float32_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, config in {
        "dtype": {"dtype": "bfloat16"},
        "torch_dtype": {"torch_dtype": "float16"},
        "text": {"text_config": {"dtype": "bfloat16"}},
        "none": {},
        "unknown": {"dtype": "float8_e4m3fn"},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    expected = {
        "dtype": torch.bfloat16,
        "torch_dtype": torch.float16,
        "text": torch.bfloat16,
        "none": torch.float32,
        "unknown": torch.float32,
    }
    for name, dtype in expected.items():
        assert loading.choose_dtype("auto", tmp_path / name, "cuda") == dtype, name
        assert loading.choose_dtype("auto", tmp_path / name, "cuda:1") == dtype, name
        assert loading.choose_dtype("auto", tmp_path / name, None) == torch.float32, name
        assert loading.choose_dtype("auto", tmp_path / name, "cpu") == torch.float32, name
        assert loading.choose_dtype("float16", tmp_path / name, None) == torch.float16, name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loading.choose_dtype("auto", tmp_path / "dtype", None, "auto") == torch.bfloat16
    assert loading.choose_dtype("auto", tmp_path / "dtype", None, {"": "cpu"}) == torch.float32
    assert loading.resolve_device("auto") == "cuda" and loading.resolve_device("auto", "auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.choose_dtype("auto", tmp_path / "dtype", None, "auto") == torch.float32
    assert loading.resolve_device("auto") is None and loading.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown dtype 'float64'; choose auto or one of"):
        loading.choose_dtype("float64", tmp_path / "none")
    with pytest.raises(ValueError, match="device 'gpu0': not a torch device"):
        loading.choose_dtype("auto", tmp_path / "none", "gpu0")


def test_load_auto_is_float32_on_the_cpu(tiny_dirs: dict[str, Path]) -> None:
    import vistrace

    model = vistrace.load(tiny_dirs["llava"], dtype="auto", device="cpu")
    assert model.model.dtype == torch.float32 and model.loaded.device.type == "cpu"
    assert loading.load(tiny_dirs["mllama"]).model.dtype == torch.float32


@pytest.mark.parametrize(
    ("config", "line"),
    [
        (
            {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"]},
            "this InternVL checkpoint needs remote code (InternVLChatModel); vistrace reads the transformers "
            "conversion, the '-hf' checkpoints (e.g. OpenGVLab/InternVL3-1B-hf)",
        ),
        (
            {"model_type": "my_remote_vlm", "architectures": ["MyRemoteVLM"]},
            "model type 'my_remote_vlm' needs the checkpoint's own code (trust_remote_code), which vistrace "
            "does not run; use a version of the checkpoint that transformers reads natively",
        ),
    ],
)
def test_a_checkpoint_that_needs_remote_code_is_refused_in_one_line(
    config: dict[str, Any], line: str, tmp_path: Path
) -> None:
    auto_map = {"AutoConfig": "configuration.RemoteConfig", "AutoModel": "modeling.RemoteModel"}
    (tmp_path / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    (tmp_path / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(loading.UnsupportedModelError) as refused:
        loading.load(tmp_path)
    assert str(refused.value) == f"{tmp_path}: {line}"
    result = CliRunner().invoke(app, ["check", "--model", str(tmp_path)], input="y\n")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"Error: {tmp_path}: {line}"
    assert "custom code" not in result.output, "transformers' prompt to run the code was shown"


def test_device_map_with_several_processes_is_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vistrace.runs import shard

    monkeypatch.setattr(shard, "launched_shard", lambda cpu: shard.Shard(rank=1, world=2))
    monkeypatch.setattr(loading, "load", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "a", "image": "a.png", "prompt": "What?", "answer": "no"}\n')
    result = CliRunner().invoke(
        app,
        [
            "trace",
            "--model",
            "tiny:llava",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--device-map",
            "auto",
        ],
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --device-map with 2 processes would place every process's model over the same devices; "
        "run one process with --device-map, or several without it"
    )
