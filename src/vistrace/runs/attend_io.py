"""Files of the attention workflow: the instances read, the images fetched, the captures written.

Input: a JSON list or a JSONL file of objects with `image_id`, `image_src` (a path relative to the
input file's folder or to `--images`, an absolute path, or an http(s) URL), `question` and
`gold_answer` (or `gt_answer`); other keys are kept in `Instance.extra`.

Output, under a run directory:

- `<idx>_<image_id>/attention.safetensors`: one float16 tensor per stage, named
  `<stage>.image_attention`, shape (generated tokens, layers, heads, image features);
- `<idx>_<image_id>/image.png`: the image (longest side at most 1024 px), for overlays;
- `<idx>_<image_id>/attention.json`: the instance, the run configuration, the loop's record and,
  per stage, the `StageCapture` fields (prompt text, input/output ids, output tokens, text, layers,
  geometry);
- `log.json`: `{"config": ..., "entries": [...]}`, one entry per instance in input order (finished
  or skipped with a reason); in a sharded run each rank writes `log.rank-<rank>.json` and rank 0
  merges them into `log.json` at the end (:func:`read_log` reads the merged view at any time).

Every file is written to a temporary name and moved into place, so a killed run leaves no half
file; `attention.json` is written last and marks an instance as finished. Nothing is pickled.
"""

from __future__ import annotations

import io
import json
import re
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from safetensors.torch import load_file, save_file

from vistrace.capture.generate import StageCapture
from vistrace.images import decode, open_image, resolve_image, to_rgb
from vistrace.runs import folder as runs

ATTENTION_FILE = "attention.safetensors"
IMAGE_FILE = "image.png"
IMAGE_MAX_SIDE = 1024
RECORD_FILE = "attention.json"
LOG_FILE = "log.json"
_RANK_LOG = re.compile(r"^log\.rank-[0-9]+\.json$")
FORMAT = "vistrace.attention/1"
TENSOR_SUFFIX = ".image_attention"
_REQUIRED = ("image_id", "image_src", "question")


class InstanceError(ValueError):
    """An instance cannot be run (bad record, missing or unreadable image); the message says why.

    `index` is the record's position in the input file, when known.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Instance:
    """One input record. `index` is its position in the input file; `source` the file it came from."""

    index: int
    image_id: str
    image_src: str
    question: str
    gold_answer: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def dir_name(self) -> str:
        """`<idx>_<image_id>` with characters unsafe in a file name replaced by `_`."""
        return f"{self.index}_{re.sub(r'[^A-Za-z0-9._-]', '_', self.image_id)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "index": self.index,
            "image_id": self.image_id,
            "image_src": self.image_src,
            "question": self.question,
            "gold_answer": self.gold_answer,
        }


def _records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return data
    records = []
    # Only "\n" ends a JSON line (str.splitlines also splits at U+2028, which JSON strings may hold).
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                records.append(_BadLine(f"{path}: line {number}: not valid JSON ({error.msg})"))
    return records


@dataclass(frozen=True)
class _BadLine:
    """A JSONL line that could not be parsed, kept in its place so the run can skip it by index."""

    problem: str


def parse_instance(record: Any, index: int, source: Path | None = None) -> Instance:
    """An `Instance` from one input object; `InstanceError` saying which key is missing or wrong."""
    if isinstance(record, _BadLine):
        raise InstanceError(record.problem, index)
    if not isinstance(record, Mapping):
        raise InstanceError(f"record {index}: expected an object, got {type(record).__name__}", index)
    wrong = [
        key
        for key in ("image_src", "question", "gold_answer", "gt_answer")
        if record.get(key) is not None and not isinstance(record[key], str)
    ]
    if not isinstance(record.get("image_id", ""), str | int) or isinstance(record.get("image_id"), bool):
        wrong.insert(0, "image_id")
    if wrong:
        raise InstanceError(f"record {index}: {', '.join(wrong)} must be text", index)
    missing = [key for key in _REQUIRED if record.get(key) is None or str(record[key]).strip() == ""]
    if missing:
        keys = ", ".join(map(str, record))
        raise InstanceError(f"record {index}: missing {', '.join(missing)} (keys: {keys})", index)
    gold = record.get("gold_answer", record.get("gt_answer"))
    extra = {k: v for k, v in record.items() if k not in (*_REQUIRED, "gold_answer", "gt_answer")}
    return Instance(
        index=index,
        image_id=str(record["image_id"]),
        image_src=str(record["image_src"]),
        question=str(record["question"]),
        gold_answer=None if gold is None else str(gold),
        extra=extra,
        source=source,
    )


def read_instances(path: str | Path) -> list[Instance | InstanceError]:
    """Every record of a JSON list or JSONL file, in order; a bad record becomes its `InstanceError`."""
    source = Path(path)
    result: list[Instance | InstanceError] = []
    for index, record in enumerate(_records(source)):
        try:
            result.append(parse_instance(record, index, source))
        except InstanceError as error:
            result.append(error)
    return result


def load_image(
    instance: Instance, *, timeout: float = 20.0, images_dir: str | Path | None = None
) -> Image.Image:
    """The instance's image as RGB, transparency composited onto white (:func:`vistrace.images.to_rgb`);
    `InstanceError` with a one-line reason when it cannot be had.

    A relative `image_src` is resolved against `images_dir`, else the input file's folder
    (:mod:`vistrace.images`); without a source file, against `images_dir` or as given.
    """
    src = instance.image_src
    try:
        if re.match(r"^https?://", src, flags=re.IGNORECASE):
            request = urllib.request.Request(src, headers={"User-Agent": "vistrace"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = response.read()
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return decode(Image.open(io.BytesIO(data)))
        else:
            path = Path(src).expanduser()
            if instance.source is not None:
                path = resolve_image(path, instance.source, images_dir)
            elif images_dir is not None and not path.is_absolute():
                path = Path(images_dir) / path
            if not path.is_file():
                raise InstanceError(
                    f"image {src!r} of {instance.image_id!r}: no such file ({path})", instance.index
                )
            return open_image(path)
    except InstanceError:
        raise
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InstanceError(f"image {src!r} of {instance.image_id!r}: {reason}", instance.index) from error


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented UTF-8 JSON, atomically (:func:`vistrace.runs.folder.write_json`)."""
    runs.write_json(path, data, indent=2)


def save_instance(
    instance_dir: Path,
    stages: Mapping[str, StageCapture],
    record: Mapping[str, Any],
    image: Image.Image | None = None,
) -> None:
    """Write `image.png` (the image, longest side at most 1024 px, for overlays), the stages' tensors,
    then `attention.json` with `record` (instance, config, loop record)."""
    if image is not None:
        preview = to_rgb(image)
        preview.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE))
        runs.write_atomic(instance_dir / IMAGE_FILE, lambda temporary: preview.save(temporary, format="PNG"))
    tensors = {f"{name}{TENSOR_SUFFIX}": stage.image_attention.contiguous() for name, stage in stages.items()}
    runs.write_atomic(instance_dir / ATTENTION_FILE, lambda temporary: save_file(tensors, str(temporary)))
    payload = {
        "format": FORMAT,
        **record,
        "stages": {name: stage.to_dict() for name, stage in stages.items()},
    }
    write_json(instance_dir / RECORD_FILE, payload)


def read_record(instance_dir: Path) -> dict[str, Any] | None:
    """The finished instance's `attention.json`, or None when it is missing or incomplete."""
    path = instance_dir / RECORD_FILE
    if not path.is_file() or not (instance_dir / ATTENTION_FILE).is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def load_stages(instance_dir: str | Path) -> dict[str, StageCapture]:
    """Every stage saved in `instance_dir`, by name (`initial`, `feedback_1`, `revision_1`, …)."""
    directory = Path(instance_dir)
    record = read_record(directory)
    if record is None:
        raise FileNotFoundError(
            f"{directory}: no finished attention capture ({RECORD_FILE} + {ATTENTION_FILE})"
        )
    tensors = load_file(str(directory / ATTENTION_FILE))
    stages: dict[str, StageCapture] = {}
    for name, data in record["stages"].items():
        key = f"{name}{TENSOR_SUFFIX}"
        if key not in tensors:
            raise ValueError(f"{directory / ATTENTION_FILE}: no tensor {key!r}")
        stages[name] = StageCapture.from_dict(data, tensors[key])
    return stages


def load_preview(instance_dir: str | Path) -> Image.Image | None:
    """The image saved beside an instance's capture, or None."""
    path = Path(instance_dir) / IMAGE_FILE
    return to_rgb(Image.open(path)) if path.is_file() else None


def instance_dir(run_dir: str | Path, instance_idx: int) -> Path:
    """The directory of instance `instance_idx` (`<idx>_<image_id>`) in `run_dir`."""
    root = Path(run_dir)
    matches = sorted(p for p in root.glob(f"{int(instance_idx)}_*") if p.is_dir())
    if not matches:
        raise FileNotFoundError(
            f"{root}: no directory for instance {instance_idx} (expected {instance_idx}_<image_id>)"
        )
    return matches[0]


def rank_log(run_dir: str | Path, rank: int) -> Path:
    """The log rank `rank` of a sharded run writes while it runs (`log.rank-<rank>.json`); rank 0
    merges every one into `log.json` when all are done (:mod:`vistrace.runs.shard`)."""
    return Path(run_dir) / f"log.rank-{int(rank)}.json"


def rank_logs(run_dir: str | Path) -> list[Path]:
    """The rank logs in `run_dir` not yet merged into `log.json`, the least recently written first."""
    found = [p for p in Path(run_dir).glob("log.rank-*.json") if _RANK_LOG.match(p.name) and p.is_file()]
    return sorted(found, key=lambda path: path.stat().st_mtime_ns)


def _read_log_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a vistrace run log ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"{path}: not a vistrace run log")
    return data


def read_log(run_dir: str | Path) -> dict[str, Any]:
    """The run's log, `{"config": {...}, "entries": [...]}`, one entry per instance in input order:
    `log.json` with the entries of any rank log of a sharded run not yet merged into it (the most
    recently written entry of an instance wins)."""
    root = Path(run_dir)
    files = ([root / LOG_FILE] if (root / LOG_FILE).is_file() else []) + rank_logs(root)
    if not files:
        raise FileNotFoundError(
            f"{root / LOG_FILE}: no run log; run the attention workflow into {root} first"
        )
    logs = [_read_log_file(path) for path in files]
    entries = {int(entry["index"]): entry for data in logs for entry in data["entries"]}
    return {"config": logs[0].get("config"), "entries": [entries[i] for i in sorted(entries)]}


__all__ = [
    "ATTENTION_FILE",
    "IMAGE_FILE",
    "LOG_FILE",
    "RECORD_FILE",
    "Instance",
    "InstanceError",
    "instance_dir",
    "load_image",
    "load_preview",
    "load_stages",
    "parse_instance",
    "rank_log",
    "rank_logs",
    "read_instances",
    "read_log",
    "read_record",
    "save_instance",
    "write_json",
]
