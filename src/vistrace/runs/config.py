"""The settings of the batch runners as frozen dataclasses: :class:`TraceConfig` (`vistrace trace`),
:class:`EvalConfig` (`vistrace eval`) and :class:`AttendConfig` (`vistrace attend`).

Each checks itself on construction and raises ValueError with one line naming the command-line
option, so the command line builds its config before it loads a model. `run_settings(loaded)` is
what the run folder's ``config.json`` records (:func:`vistrace.runs.folder.open_run`); a resume with
other settings is refused, so its keys and values never change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vistrace import __version__
from vistrace.data import DEFAULT_MAX_NEW_TOKENS, READERS, ReadResult, read_dataset
from vistrace.hook.plan import KnockoutMode
from vistrace.knockout.scores import SCORES
from vistrace.knockout.sweep import DEFAULT_TEMPERATURE, PAPER_PATHWAYS, Pathway, pack_bytes
from vistrace.models.loading import LoadedModel
from vistrace.volcano.loop import MAX_ROUNDS, SAMPLE_TEMPERATURE

__all__ = [
    "DATASETS",
    "GENERIC_DATASETS",
    "GENERIC_MAX_NEW_TOKENS",
    "PAPER_DATASETS",
    "AttendConfig",
    "EvalConfig",
    "TraceConfig",
    "check_trace_options",
    "eval_datasets",
    "run_config",
]

PAPER_DATASETS: tuple[str, ...] = ("vqav2", "visual7w", "docvqa")
GENERIC_DATASETS: tuple[str, ...] = ("jsonl", "json", "hf", "mmhal")
DATASETS: tuple[str, ...] = PAPER_DATASETS + GENERIC_DATASETS
"""The built-in dataset names of an evaluation; a registered reader adds its own (:func:`eval_datasets`)."""
GENERIC_MAX_NEW_TOKENS = 512


def eval_datasets() -> tuple[str, ...]:
    """Every dataset name an evaluation accepts: the built-in ones, then the registered readers'."""
    return tuple(dict.fromkeys([*DATASETS, *READERS]))


def _folder(out: str | Path) -> Path:
    """`out` as a Path; ValueError when it is a file (the run folder is created when the run starts)."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder; give a folder for the run")
    return folder


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def _dtype_name(loaded: LoadedModel) -> str:
    return str(getattr(loaded.model, "dtype", "")).removeprefix("torch.")


def _at_least(option: str, value: int | None, least: int) -> None:
    if value is not None and value < least:
        raise ValueError(f"{option} {value}: must be at least {least}")


def check_trace_options(
    pathways: Sequence[str],
    ks: Sequence[int],
    *,
    mode: str = "strict",
    strategy: str = "fast",
    temperature: float | None = None,
    limit: int | None = None,
    n_layers: int | None = None,
) -> list[Pathway]:
    """The parsed pathways; ValueError (one line naming the option) for settings that cannot work.

    With `n_layers`, a window wider than the model is refused too (the command line checks it once
    the model is loaded); the runner itself clips such a window at the edges
    (:func:`vistrace.knockout.sweep.window_layers`)."""
    if mode not in ("strict", "paper"):
        raise ValueError(f"--mode {mode!r}: choose strict or paper")
    if strategy not in ("fast", "naive"):
        raise ValueError(f"--strategy {strategy!r}: choose fast or naive")
    if not pathways:
        raise ValueError("--pathways is empty: name at least one, e.g. image_to_last")
    parsed = []
    for name in pathways:
        try:
            parsed.append(Pathway.parse(name))
        except ValueError as error:
            raise ValueError(f"--pathways: {error}") from None
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"--pathways names {sorted({n for n in names if names.count(n) > 1})} twice")
    if not ks:
        raise ValueError("--k is empty: give a window size such as 9")
    for k in ks:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"--k {k!r}: a window size is a positive odd integer (1, 3, 9 …)")
        if n_layers is not None and k > n_layers:
            raise ValueError(f"--k {k}: larger than the model's {n_layers} layers")
    if len(set(ks)) != len(ks):
        raise ValueError(f"--k repeats a value: {list(ks)}")
    if temperature is not None and not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"--temperature {temperature}: must be a positive number")
    if limit is not None and limit < 0:
        raise ValueError(f"--limit {limit}: must be 0 or more")
    return parsed


@dataclass(frozen=True)
class TraceConfig:
    """A knockout sweep over the samples of `data` (JSONL) into the run folder `out`.

    Every pathway of `pathways` is blocked in windows of each size of `ks` (odd); `mode` strict (a
    true knockout) or paper (FlowTracker's numbers); `strategy` fast or naive; `temperature` of the
    answer's softmax (None: 1 for strict, 0.6 for paper); `limit`: only the first samples;
    `images`: the folder relative image paths are resolved against (None: the data file's);
    `score`: the answer score of each record's `p_full` and `probs` (:mod:`vistrace.knockout.scores`;
    product, the answer's probability, by default); `layer_probs`: also store each sample's clean
    answer probability after every decoder layer (logit lens) in `layer_probs.jsonl`;
    `pack_memory`: GiB of clean passes the fast strategy holds to pack several samples' re-runs into
    shared calls (None: a tenth of the GPU's memory on CUDA, no packing elsewhere; 0: none). Packing
    changes no number beyond float rounding, so it is not one of the run's settings."""

    data: Path
    out: Path
    pathways: tuple[str, ...] = PAPER_PATHWAYS
    ks: tuple[int, ...] = (9,)
    mode: KnockoutMode = "strict"
    strategy: str = "fast"
    temperature: float | None = None
    limit: int | None = None
    images: Path | None = None
    score: str = "product"
    layer_probs: bool = False
    pack_memory: float | None = None

    def __post_init__(self) -> None:
        if self.pack_memory is not None:
            if not (self.pack_memory >= 0 and math.isfinite(self.pack_memory)):
                raise ValueError(f"--pack-memory {self.pack_memory}: GiB, 0 or more (0: no packing)")
            if self.strategy == "naive" and self.pack_memory > 0:
                raise ValueError("--pack-memory packs the fast strategy's re-runs; --strategy naive has none")
        if self.score not in SCORES:
            raise ValueError(f"--score {self.score!r}: choose one of {', '.join(SCORES)}")
        pathways = (self.pathways,) if isinstance(self.pathways, str) else tuple(self.pathways)
        ks = (self.ks,) if isinstance(self.ks, int) else tuple(self.ks)
        object.__setattr__(self, "pathways", pathways)
        object.__setattr__(self, "ks", ks)
        object.__setattr__(self, "images", _optional_path(self.images))
        check_trace_options(
            pathways,
            ks,
            mode=self.mode,
            strategy=self.strategy,
            temperature=self.temperature,
            limit=self.limit,
        )
        object.__setattr__(self, "data", Path(self.data))
        if not self.data.is_file():
            raise ValueError(f"--data {self.data}: no such file")
        object.__setattr__(self, "out", _folder(self.out))

    @property
    def parsed_pathways(self) -> list[Pathway]:
        return [Pathway.parse(name) for name in self.pathways]

    @property
    def softmax_temperature(self) -> float:
        """`temperature`, or the mode's default."""
        return DEFAULT_TEMPERATURE[self.mode] if self.temperature is None else self.temperature

    def pack_bytes(self, loaded: LoadedModel) -> int:
        """Clean-pass memory the fast strategy packs into shared re-run calls, in bytes
        (:func:`vistrace.knockout.sweep.pack_bytes` of `pack_memory`)."""
        return pack_bytes(self.pack_memory, loaded.device)

    def check_model(self, n_layers: int) -> None:
        """ValueError when a window is wider than the model's `n_layers` layers."""
        check_trace_options(self.pathways, self.ks, n_layers=n_layers)

    def run_settings(self, loaded: LoadedModel) -> dict[str, Any]:
        """The run folder's settings: model, dtype, mode, temperature, data file, image folder; `score`
        when it is not product and `layer_probs` when set, so the keys of a default run (and of
        folders written before these options) stay as they were: a missing `score` means product."""
        settings: dict[str, Any] = {
            "model": str(Path(loaded.path).resolve()),
            "dtype": _dtype_name(loaded),
            "mode": self.mode,
            "temperature": self.softmax_temperature,
            "data": str(self.data.resolve()),
            "images": None if self.images is None else str(self.images.resolve()),
        }
        if self.score != "product":
            settings["score"] = self.score
        if self.layer_probs:
            settings["layer_probs"] = True
        return settings


def run_config(
    loaded: LoadedModel, *, dataset: str, seed: int, batch_size: int, max_new_tokens: int
) -> dict[str, Any]:
    """The settings an evaluation records in ``config.json``; a resumed run must have the same ones."""
    import transformers

    return {
        "model": str(Path(loaded.path).resolve()),
        "model_type": loaded.adapter.model_type,
        "dtype": _dtype_name(loaded),
        "dataset": dataset,
        "seed": seed,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "greedy": True,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "vistrace": __version__,
        },
    }


@dataclass(frozen=True)
class EvalConfig:
    """Greedy answers to a dataset's questions, into the run folder `out`.

    `dataset` names the prompt (the paper's for vqav2, visual7w, docvqa; the question as it is for
    the others) and the metric; `annotations` is the dataset file (VQAv2: the annotations, with the
    `questions` file), read by the reader registered under `dataset` (:meth:`read`); `images`: the
    folder relative image paths are resolved against; `split`: the Visual7W split. `batch_size`
    examples are generated together (left padded); `max_new_tokens` None: 25 for VQAv2 and
    Visual7W, 512 otherwise; `seed` orders the Visual7W options; `limit`: only the first examples."""

    dataset: str
    out: Path
    annotations: Path | None = None
    questions: Path | None = None
    images: Path | None = None
    split: str | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None
    seed: int = 42
    limit: int | None = None

    def __post_init__(self) -> None:
        known = eval_datasets()
        if self.dataset not in known:
            raise ValueError(f"--dataset {self.dataset!r}: choose one of {', '.join(known)}")
        _at_least("--batch-size", self.batch_size, 1)
        _at_least("--max-new-tokens", self.max_new_tokens, 1)
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--limit {self.limit}: must be 0 or more")
        for name in ("annotations", "questions", "images"):
            object.__setattr__(self, name, _optional_path(getattr(self, name)))
        object.__setattr__(self, "out", _folder(self.out))

    @property
    def new_tokens(self) -> int:
        """`max_new_tokens`, or the dataset's default."""
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(self.dataset, GENERIC_MAX_NEW_TOKENS)

    def read(self) -> ReadResult:
        """The examples of `annotations` read by the dataset's reader (:func:`vistrace.data.read_dataset`)."""
        if self.annotations is None:
            raise ValueError("--annotations is required (the dataset file)")
        return read_dataset(
            self.dataset, self.annotations, questions=self.questions, images=self.images, split=self.split
        )

    def run_settings(self, loaded: LoadedModel) -> dict[str, Any]:
        """:func:`run_config`, and the dataset file as `input` when there is one."""
        settings = run_config(
            loaded,
            dataset=self.dataset,
            seed=self.seed,
            batch_size=self.batch_size,
            max_new_tokens=self.new_tokens,
        )
        if self.annotations is not None:
            settings["input"] = str(self.annotations.resolve())
        return settings


@dataclass(frozen=True)
class AttendConfig:
    """The Volcano loop (or one answer, `volcano` False) with image-attention capture over the
    instances of `input` (JSON list or JSONL; None when the instances are handed over already read),
    into the run folder `out`.

    `engineered`: the engineered feedback / revision prompts; `sample`: sample at temperature 0.5
    (seeded per instance with `seed + index`) instead of greedy; `max_new_tokens` per generation;
    `instance_idx`: only these instances; `timeout`: seconds to fetch an image URL; `images`: the
    folder relative image paths are resolved against (None: the input file's)."""

    input: Path | None
    out: Path
    volcano: bool = True
    engineered: bool = False
    sample: bool = False
    max_new_tokens: int = 1024
    instance_idx: tuple[int, ...] | None = None
    seed: int = 0
    timeout: float = 20.0
    images: Path | None = None

    def __post_init__(self) -> None:
        _at_least("--max-new-tokens", self.max_new_tokens, 1)
        object.__setattr__(self, "input", _optional_path(self.input))
        if self.input is not None and not self.input.is_file():
            raise ValueError(f"--input {self.input}: no such file")
        if self.instance_idx is not None:
            object.__setattr__(self, "instance_idx", tuple(int(i) for i in self.instance_idx))
        object.__setattr__(self, "images", _optional_path(self.images))
        object.__setattr__(self, "out", _folder(self.out))

    def run_settings(self, loaded: LoadedModel) -> dict[str, Any]:
        """The settings of the run folder and of every instance's record."""
        return {
            "model": str(loaded.path),
            "dtype": _dtype_name(loaded),
            "input": None if self.input is None else str(self.input.resolve()),
            "volcano": self.volcano,
            "engineered": self.engineered,
            "sample": self.sample,
            "temperature": SAMPLE_TEMPERATURE if self.sample else None,
            "max_new_tokens": self.max_new_tokens,
            "max_rounds": MAX_ROUNDS if self.volcano else 0,
            "seed": self.seed,
        }
