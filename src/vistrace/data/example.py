"""One dataset question (:class:`Example`), the reader result types, and lazy image loading."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vistrace.images import decode

__all__ = ["DatasetError", "Example", "ReadResult", "Skipped", "load_image", "resolve_image_path"]


class DatasetError(Exception):
    """A dataset file or image that cannot be read; the message is one line naming file and sample."""


@dataclass(frozen=True)
class Example:
    """One question of a dataset, with its image reference (never opened here) and reference answers.

    - ``id``: the dataset's question id, as a string.
    - ``image``: the image file. The readers make it absolute (a relative path in the data file is
      resolved against ``--images`` or else the data file's folder, :mod:`vistrace.images`); an
      example built by hand may hold a relative one (see :func:`resolve_image_path`).
    - ``answers``: reference answers (VQAv2: the ten annotators' answers; Visual7W: the correct
      answer; DocVQA: all accepted answers; MMHal-Bench: the ground-truth answer).
    - ``category``: the question's first category (VQAv2 answer type, Visual7W question type,
      DocVQA first question type, MMHal-Bench question type), or None.
    - ``categories``: every category the question belongs to, ``category`` first (DocVQA: every
      ``question_types`` entry; elsewhere ``(category,)``, or ``()`` when there is none).
      Per-category results count the question once in each.
    - ``choices``: Visual7W's four options, the correct answer first; None elsewhere.
    - ``dataset``: the reader's name (``vqav2``, ``visual7w``, ``docvqa``, ``mmhal``, or the name
      given to a generic reader).
    - ``extra``: every other field of the source record.
    - ``image_url``: the remote address the image came from, when the source gave a URL.
    - ``image_bytes``: encoded image data embedded in the source (HF datasets); ``image`` is then
      only a label (the embedded file name, or ``<id>.png``).
    """

    id: str
    image: Path
    question: str
    answers: tuple[str, ...] = ()
    category: str | None = None
    categories: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    dataset: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    image_url: str | None = None
    image_bytes: bytes | None = field(default=None, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.categories:
            if self.category is not None:
                object.__setattr__(self, "categories", (self.category,))
        elif self.category is None:
            object.__setattr__(self, "category", self.categories[0])
        elif self.category != self.categories[0]:
            raise ValueError(f"example {self.id}: category {self.category!r} is not categories[0]")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the example (embedded image bytes are left out)."""
        return {
            "id": self.id,
            "image": str(self.image),
            "question": self.question,
            "answers": list(self.answers),
            "category": self.category,
            "categories": list(self.categories),
            "choices": None if self.choices is None else list(self.choices),
            "dataset": self.dataset,
            "extra": dict(self.extra),
            "image_url": self.image_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        """The example that :meth:`to_dict` produced."""
        choices = data.get("choices")
        return cls(
            id=str(data["id"]),
            image=Path(data["image"]),
            question=str(data["question"]),
            answers=tuple(data.get("answers") or ()),
            category=data.get("category"),
            categories=tuple(data.get("categories") or ()),
            choices=None if choices is None else tuple(choices),
            dataset=str(data.get("dataset", "")),
            extra=dict(data.get("extra") or {}),
            image_url=data.get("image_url"),
        )


@dataclass(frozen=True)
class Skipped:
    """A source record that was not turned into an :class:`Example`.

    ``reason`` is one line naming the file, the record's position and, when known, its id.
    """

    id: str | None
    source: str
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class ReadResult:
    """What a reader returns: the examples read, in file order, and the records it skipped."""

    examples: list[Example]
    skipped: list[Skipped]

    def __len__(self) -> int:
        return len(self.examples)


def resolve_image_path(example: Example, images_dir: str | Path | None = None) -> Path:
    """The example's image path, joined to ``images_dir`` when it is relative and a directory is given."""
    if images_dir is None or example.image.is_absolute():
        return example.image
    return Path(images_dir) / example.image


def load_image(example: Example, images_dir: str | Path | None = None) -> Image.Image:
    """Open the example's image as an RGB PIL image, transparency composited onto white
    (:func:`vistrace.images.to_rgb`).

    Embedded ``image_bytes``, when present, are decoded instead of reading a file. Raises
    :class:`DatasetError` with one line naming the file and the example id when the image is
    missing, is only available at a URL, or cannot be decoded.
    """
    path = resolve_image_path(example, images_dir)
    if example.image_bytes is not None:
        source: Any = io.BytesIO(example.image_bytes)
        where = f"embedded image {path}"
    elif path.is_file():
        source = path
        where = str(path)
    elif example.image_url is not None:
        raise DatasetError(
            f"{path}: image not found for example {example.id}; it was given as the URL "
            f"{example.image_url}, save it at this path"
        )
    else:
        raise DatasetError(f"{path}: image not found for example {example.id}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                return decode(image)
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"{where}: cannot decode image for example {example.id} ({detail})") from exc
