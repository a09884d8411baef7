"""One rule for relative image paths and one for transparency, in every reader and command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vistrace.adapters import get_adapter
from vistrace.data import Example, load_image, read_dataset
from vistrace.images import BACKGROUND, image_base, resolve_image, to_rgb
from vistrace.runs.attend_io import Instance
from vistrace.runs.attend_io import load_image as attend_load_image
from vistrace.runs.samples import open_sample_image

pytestmark = [pytest.mark.unit]

RED, GREEN, BLUE = (200, 0, 0), (0, 200, 0), (0, 0, 200)


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _datasets(folder: Path) -> dict[str, tuple[Callable[[Path | None], Path], str]]:
    """Per reader: (read the file in `folder` with an optional images dir -> first image path, the
    relative name the file gives)."""
    questions = _write(
        folder / "questions.json", {"questions": [{"question_id": 1, "image_id": 5, "question": "Q?"}]}
    )
    annotations = _write(
        folder / "annotations.json",
        {"annotations": [{"question_id": 1, "image_id": 5, "answer_type": "other", "answers": ["a"] * 10}]},
    )
    qa = {"qa_id": 1, "type": "what", "question": "Q?", "answer": "A.", "multiple_choices": ["B", "C", "D"]}
    v7w = _write(folder / "v7w.json", {"images": [{"image_id": 3, "split": "test", "qa_pairs": [qa]}]})
    doc = _write(
        folder / "doc.json",
        {"data": [{"questionId": 1, "question": "Q?", "image": "documents/d.png", "answers": ["a"]}]},
    )
    mmhal = _write(
        folder / "mmhal.json",
        [{"image_id": "m", "image_src": "img/x.png", "question": "Q?", "gt_answer": "a"}],
    )
    jsonl = folder / "data.jsonl"
    jsonl.write_text(json.dumps({"id": 1, "image": "img/x.png", "question": "Q?", "answers": ["a"]}) + "\n")

    def first(name: str, file: Path, **kwargs: Any) -> Callable[[Path | None], Path]:
        return lambda images: read_dataset(name, file, images=images, **kwargs).examples[0].image

    return {
        "vqav2": (first("vqav2", annotations, questions=questions), "COCO_val2014_000000000005.jpg"),
        "visual7w": (first("visual7w", v7w), "v7w_3.jpg"),
        "docvqa": (first("docvqa", doc), "documents/d.png"),
        "mmhal": (first("mmhal", mmhal), "img/x.png"),
        "jsonl": (first("jsonl", jsonl), "img/x.png"),
    }


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(data folder, images folder); the current directory is a third folder with decoy images."""
    data, images, elsewhere = tmp_path / "data", tmp_path / "images", tmp_path / "elsewhere"
    for folder, colour in ((data, RED), (images, GREEN), (elsewhere, BLUE)):
        (folder / "img").mkdir(parents=True)
        Image.new("RGB", (4, 4), colour).save(folder / "img" / "x.png")
    monkeypatch.chdir(elsewhere)
    return data, images


@pytest.mark.parametrize("reader", ["vqav2", "visual7w", "docvqa", "mmhal", "jsonl"])
def test_every_reader_resolves_against_the_data_file_folder_or_images(
    folders: tuple[Path, Path], reader: str
) -> None:
    data, images = folders
    read, name = _datasets(data)[reader]
    assert read(None) == data / name
    assert read(images) == images / name
    assert read(Path("../images")) == images / name


def test_trace_and_attend_resolve_the_same_way(folders: tuple[Path, Path]) -> None:
    data, images = folders
    samples = data / "analysis.jsonl"
    instance = Instance(
        index=0, image_id="x", image_src="img/x.png", question="Q?", gold_answer=None, source=data / "in.json"
    )
    for images_dir, colour in ((None, RED), (images, GREEN)):
        assert open_sample_image("img/x.png", samples, images_dir).getpixel((0, 0)) == colour
        assert attend_load_image(instance, images_dir=images_dir).getpixel((0, 0)) == colour
    assert resolve_image("/abs/x.png", samples, images) == Path("/abs/x.png")
    assert image_base(data) == data and image_base(samples) == data


def _transparent_png(path: Path, mode: str) -> Path:
    """A 6x6 image, transparent everywhere except an opaque black 2x2 square at (2, 2)."""
    if mode == "P":
        image = Image.new("P", (6, 6), 0)
        image.putpalette([0, 0, 0, 0, 0, 0])
        for x in (2, 3):
            for y in (2, 3):
                image.putpixel((x, y), 1)
        image.info["transparency"] = 0
        image.save(path, transparency=0)
        return path
    fill = (0, 0) if mode == "LA" else (0, 0, 0, 0)
    opaque = (0, 255) if mode == "LA" else (0, 0, 0, 255)
    image = Image.new(mode, (6, 6), fill)
    for x in (2, 3):
        for y in (2, 3):
            image.putpixel((x, y), opaque)
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_every_path_composites_transparency_onto_white(tmp_path: Path, mode: str) -> None:
    path = _transparent_png(tmp_path / f"{mode}.png", mode)
    with Image.open(path) as raw:
        assert raw.mode == mode
        assert raw.convert("RGB").getpixel((0, 0)) == (0, 0, 0)  # what a bare convert gives
        adapter_image = get_adapter("llava").prepare_image(None, raw)
    opened = {
        "to_rgb": to_rgb(Image.open(path)),
        "datasets.load_image": load_image(Example(id="1", image=path, question="Q?")),
        "trace": open_sample_image(path.name, tmp_path / "samples.jsonl", None),
        "attend": attend_load_image(
            Instance(index=0, image_id="t", image_src=str(path), question="Q?", gold_answer=None)
        ),
        "Adapter.prepare_image": adapter_image,
    }
    for where, image in opened.items():
        assert image.mode == "RGB", where
        assert image.getpixel((0, 0)) == BACKGROUND, where
        assert image.getpixel((2, 3)) == (0, 0, 0), where


def test_partial_alpha_blends_and_opaque_modes_convert() -> None:
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    grey = Image.new("L", (1, 1), 30)
    assert to_rgb(grey).getpixel((0, 0)) == (30, 30, 30)
    rgb = Image.new("RGB", (1, 1), (1, 2, 3))
    assert to_rgb(rgb) is rgb
    assert to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0)), background=(1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)
