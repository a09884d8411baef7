"""Pooling, span matching and the three attention figures, on run directories written by `run_volcano`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vistrace.runs.attend as attend_module
from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import (
    pool_map,
    shared_top_l,
    token_image_attention,
    tokens_top_l_mean,
    top_k_mean,
    without_eos,
)
from vistrace.demo.run import _attention_figures
from vistrace.models.loading import LoadedModel, load
from vistrace.plots.attention import plot_avg_attention, plot_image_heatmap, plot_text_heatmap
from vistrace.plots.attention_maps import find_span, parse_spans
from vistrace.runs.attend import run_volcano
from vistrace.volcano.loop import VolcanoResult

pytestmark = [pytest.mark.integration]

SPAN_FEATURE = 6
FEEDBACK_TOKENS = ("▁The", "▁car", "▁is", "▁rather", "▁silver", ".", "▁<b>&", "</s>")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; one avoids oversubscribing a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_top_k_mean_takes_layers_then_heads_per_feature() -> None:
    attention = torch.rand(5, 6, 4, 7)
    expected = torch.empty(5, 7)
    for t in range(5):
        for n in range(7):
            by_head = [sorted(attention[t, :, h, n].tolist())[-3:] for h in range(4)]
            head_means = sorted(sum(v) / 3 for v in by_head)
            expected[t, n] = sum(head_means[-3:]) / 3
    torch.testing.assert_close(top_k_mean(attention, 3), expected)
    assert top_k_mean(attention[:, :2], 3).shape == (5, 7)
    torch.testing.assert_close(top_k_mean(attention, 100), attention.mean(dim=(1, 2)))


def test_token_pooling_and_eos() -> None:
    per_token = torch.tensor([[1.0, 0.0], [3.0, 5.0], [2.0, 1.0]])
    torch.testing.assert_close(tokens_top_l_mean(per_token, 2), torch.tensor([2.5, 3.0]))
    torch.testing.assert_close(tokens_top_l_mean(per_token, None), per_token.mean(dim=0))
    attention = torch.rand(4, 2, 3, 5)
    assert without_eos(attention, True).shape[0] == 3 and without_eos(attention, False).shape[0] == 4
    assert shared_top_l(7, 4) == 4
    mean_map = pool_map(attention, pool="mean", tokens="mean")
    torch.testing.assert_close(mean_map, attention.mean(dim=(0, 1, 2)))
    with pytest.raises(ValueError, match="choose one of"):
        pool_map(attention, pool="median")


def test_token_image_attention_is_sum_then_l2_heads_then_l2_layers() -> None:
    attention = torch.rand(3, 2, 4, 5)
    summed = attention.sum(dim=-1)
    expected = torch.sqrt((torch.sqrt((summed**2).sum(dim=-1)) ** 2).sum(dim=-1))
    torch.testing.assert_close(token_image_attention(attention), expected)


def test_span_matching_ignores_leading_space_marks() -> None:
    sentencepiece = ["▁It", "▁is", "▁rather", "▁silver", ".", "</s>"]
    byte_level = ["It", "Ġis", "Ġrather", "Ġsilver", ".", "<|eot_id|>"]
    for tokens in (sentencepiece, byte_level):
        assert find_span(tokens, ["rather", "silver", "."]) == (2, 5)
        assert find_span(tokens, ["▁rather"]) == (2, 3)
        with pytest.raises(ValueError, match="not a run"):
            find_span(tokens, ["silver", "rather"])
    assert parse_spans(["rather,silver,.", "the,red"]) == [["rather", "silver", "."], ["the", "red"]]
    assert parse_spans("rather,silver") == [["rather", "silver"]]
    with pytest.raises(ValueError, match="empty token"):
        parse_spans("rather,,silver")


def _stage(
    loaded: LoadedModel, image: Image.Image, tokens: tuple[str, ...], peak: int | None
) -> StageCapture:
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    layers = loaded.adapter.image_layers(loaded.model)
    heads = int(loaded.model.config.text_config.num_attention_heads)
    generator = torch.Generator().manual_seed(len(tokens) + geometry.num_features)
    attention = torch.rand(len(tokens), len(layers), heads, geometry.num_features, generator=generator) * 0.1
    if peak is not None:
        span = find_span(tokens, ["rather", "silver", "."])
        attention[span[0] : span[1], :, :, SPAN_FEATURE] = 0.9
    return StageCapture(
        prompt_text="prompt",
        input_ids=(1, 2, 3),
        output_ids=tuple(range(10, 10 + len(tokens))),
        output_tokens=tokens,
        text="".join(tokens),
        layers=tuple(layers),
        image_attention=attention.to(torch.float16),
        geometry=geometry,
        ends_with_eos=tokens[-1] == "</s>",
        output_pieces=tuple(t.replace("▁", " ") for t in tokens),
    )


def _fake_volcano(adopt: bool, silent_size: tuple[int, int] | None = None):
    """A Volcano loop with fixed stages; on an image of ``silent_size`` the feedback is EOS alone."""

    def run(loaded: LoadedModel, image: Image.Image, question: str, **kwargs: Any) -> VolcanoResult:
        initial = _stage(loaded, image, ("▁A", "▁red", "▁car", ".", "</s>"), None)
        silent = image.size == silent_size
        feedback = _stage(
            loaded, image, ("</s>",) if silent else FEEDBACK_TOKENS, None if silent else SPAN_FEATURE
        )
        revision = _stage(loaded, image, ("▁A", "▁silver", "▁car", "</s>"), None)
        stages = {"initial": initial, "feedback_1": feedback, "revision_1": revision}
        return VolcanoResult(
            stages=stages,
            outputs=(initial.text, revision.text) if adopt else (initial.text,),
            feedbacks=(feedback.text,),
            revisions=(revision.text,),
            decisions=("B",),
            choices=("B",) if adopt else ("A",),
            stop_iter=1,
            adopted_round=1 if adopt else None,
            stop_reason="max_rounds" if adopt else "kept",
        )

    return run


def _run(
    loaded: LoadedModel,
    directory: Path,
    sizes: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
    adopt: bool,
    silent_size: tuple[int, int] | None = None,
) -> Path:
    directory.mkdir(parents=True)
    records = []
    for index, size in enumerate(sizes):
        Image.new("RGB", size, (40 * index, 120, 200)).save(directory / f"{index}.png")
        records.append(
            {"image_id": f"i{index}", "image_src": f"{index}.png", "question": "Q?", "gold_answer": "A"}
        )
    (directory / "input.json").write_text(json.dumps(records))
    monkeypatch.setattr(attend_module, "volcano_instance", _fake_volcano(adopt, silent_size))
    run_volcano(loaded, directory / "input.json", directory / "run", max_new_tokens=8)
    return directory / "run"


def _written(paths: list[Path], suffixes: set[str]) -> None:
    assert {p.suffix for p in paths} == suffixes
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0, path


@pytest.fixture(scope="module")
def models(tiny_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {family: load(path) for family, path in tiny_dirs.items()}


def test_llava_figures(
    models: dict[str, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _run(models["llava"], tmp_path / "llava", [(48, 32), (40, 40)], monkeypatch, adopt=True)
    figures = tmp_path / "figures"

    average = plot_avg_attention(run_dir, figures)
    _written(average, {".png", ".pdf", ".json", ".csv"})
    numbers = json.loads((figures / "avg_attention_top_k_mean.json").read_text())
    assert numbers["n_instances"] == 2 and numbers["same_layout"] is True
    feedback_grid = np.array(numbers["maps"]["Feedback"])
    assert feedback_grid.shape == (4, 4)
    assert np.unravel_index(np.argmax(feedback_grid), (4, 4)) == divmod(SPAN_FEATURE, 4)

    text = plot_text_heatmap(run_dir, 0, figures)
    _written(text, {".png", ".pdf", ".html", ".json", ".csv"})
    page = (figures / "text_heatmap_0.html").read_text()
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page
    weights = json.loads((figures / "text_heatmap_0.json").read_text())
    assert weights["feedback_1"]["tokens"] == list(FEEDBACK_TOKENS)
    assert len(weights["initial"]["weights"]) == 5

    image = plot_image_heatmap(run_dir, 0, ["rather,silver,.", "car"], figures)
    _written(image, {".png", ".pdf", ".json", ".csv"})
    panels = json.loads(next(p for p in image if p.suffix == ".json").read_text())
    assert panels["spans"] == {"rather,silver,.": [3, 6], "car": [1, 2]}
    span_panel = np.array(panels["panels"]["Feedback ('rather silver.')"])
    assert int(np.argmax(span_panel)) == SPAN_FEATURE
    assert panels["vmax_clip"] <= max(max(v) for v in panels["panels"].values())


def test_mllama_figures_with_different_tilings(
    models: dict[str, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _run(models["mllama"], tmp_path / "mllama", [(60, 28), (28, 28)], monkeypatch, adopt=True)
    figures = tmp_path / "figures"
    average = plot_avg_attention(run_dir, figures, pool="mean")
    _written(average, {".png", ".pdf", ".json"})
    numbers = json.loads((figures / "avg_attention_mean.json").read_text())
    assert numbers["same_layout"] is False and numbers["n_instances"] == 2
    image = plot_image_heatmap(run_dir, 0, ["rather,silver,."], figures)
    _written(image, {".png", ".pdf", ".json", ".csv"})


def test_average_needs_an_adopted_revision(
    models: dict[str, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _run(models["llava"], tmp_path / "kept", [(48, 32)], monkeypatch, adopt=False)
    with pytest.raises(ValueError, match="revision adopted"):
        plot_avg_attention(run_dir, tmp_path / "figures")
    _written(plot_text_heatmap(run_dir, 0, tmp_path / "figures"), {".png", ".pdf", ".html", ".json", ".csv"})


def test_a_stage_without_tokens_is_skipped_or_named(
    models: dict[str, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [(48, 32), (40, 40)]
    run_dir = _run(models["llava"], tmp_path / "silent", sizes, monkeypatch, adopt=True, silent_size=(40, 40))
    figures = tmp_path / "figures"
    plot_avg_attention(run_dir, figures)
    numbers = json.loads((figures / "avg_attention_top_k_mean.json").read_text())
    assert numbers["instances"] == [0] and numbers["skipped_no_tokens"] == [1]
    with pytest.raises(ValueError, match="feedback_1 stage generated no tokens"):
        plot_image_heatmap(run_dir, 1, [], figures)
    _written(plot_text_heatmap(run_dir, 1, figures), {".png", ".pdf", ".html", ".json", ".csv"})
    notes = _attention_figures(run_dir, figures)
    assert notes == [
        "  Figure 5 drawn over the instances whose revision was adopted",
        "  Figure 4 drawn for instance 0",
    ]

    only_silent = _run(
        models["llava"], tmp_path / "only", [(40, 40)], monkeypatch, adopt=True, silent_size=(40, 40)
    )
    with pytest.raises(ValueError, match="generated no tokens"):
        plot_avg_attention(only_silent, figures)


def test_text_heatmap_draws_tokens_that_look_like_math(
    models: dict[str, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generated `$$` or `$x^2$` is text: matplotlib must not parse it as mathtext."""
    plain = _fake_volcano(adopt=True)

    def mathy(loaded: LoadedModel, image: Image.Image, question: str, **kwargs: Any) -> VolcanoResult:
        result = plain(loaded, image, question, **kwargs)
        initial = _stage(loaded, image, ("▁costs", "▁$$", "▁$x^2$", "\\", "</s>"), None)
        return VolcanoResult(**{**result.__dict__, "stages": {**result.stages, "initial": initial}})

    directory = tmp_path / "data"
    directory.mkdir()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(directory / "0.png")
    records = [{"image_id": "i0", "image_src": "0.png", "question": "Q?", "gold_answer": "A"}]
    (directory / "input.json").write_text(json.dumps(records))
    monkeypatch.setattr(attend_module, "volcano_instance", mathy)
    run_volcano(models["llava"], directory / "input.json", directory / "run", max_new_tokens=8)
    written = plot_text_heatmap(directory / "run", 0, tmp_path / "figures")
    _written(written, {".png", ".pdf", ".html", ".json", ".csv"})
