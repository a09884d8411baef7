"""`vistrace demo` end to end on a reduced setting, and the pointing game's pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vistrace.demo.pointing import feature_map, layer_groups, overlaps, pointing_game
from vistrace.demo.run import DemoSettings, run_demo
from vistrace.demo.world import make_split
from vistrace.models.loading import LoadedModel

pytestmark = [pytest.mark.integration]


def test_layer_groups_split_contiguously_and_add_all() -> None:
    assert layer_groups([0, 1, 2, 3]) == [
        ("early", (0, 1)),
        ("middle", (2,)),
        ("late", (3,)),
        ("all", (0, 1, 2, 3)),
    ]
    assert layer_groups([3, 8]) == [("early", (3,)), ("late", (8,)), ("all", (3, 8))]


def test_overlaps_uses_exclusive_right_and_bottom_edges() -> None:
    regions = np.array([[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [np.nan] * 4])
    assert overlaps(regions, (16, 0, 20, 10)).tolist() == [False, True, False, False]
    assert overlaps(regions, (10, 10, 20, 20)).tolist() == [True, True, True, False]


def test_feature_map_drops_eos_and_averages_selected_layers() -> None:
    attention = torch.zeros(3, 2, 2, 4)
    attention[:2, 1, :, 2] = 1.0
    attention[2, :, :, 0] = 5.0
    assert feature_map(attention, ends_with_eos=True, layer_positions=[1]).tolist() == [0, 0, 1, 0]
    assert feature_map(attention, ends_with_eos=False, layer_positions=[1])[0] == pytest.approx(5 / 3)


@pytest.mark.parametrize("family", ["llava", "mllama"])
def test_pointing_game_counts_single_shape_questions(
    family: str, tiny_models: dict[str, LoadedModel]
) -> None:
    samples = make_split(4, 3)
    scores = pointing_game(tiny_models[family], samples, max_new_tokens=2, progress=False)
    single = sum(1 for s in samples if len(s.qa.target_boxes) == 1)
    assert scores[-1].name == "all"
    assert all(score.samples == single and 0 <= score.hits <= single for score in scores)
    assert all(0 < score.chance < 1 for score in scores)


def test_demo_runs_end_to_end_on_a_reduced_setting(tmp_path: Path) -> None:
    settings = DemoSettings(scenes=3, per_category=1, ks=(3,), attend=1, pointing=2, max_new_tokens=4)
    summary = run_demo(tmp_path, ("llava", "mllama"), settings).read_text(encoding="utf-8")
    for family in ("llava", "mllama"):
        figures = tmp_path / family / "figures"
        assert list((figures / "flow").glob("*.png")) and list((figures / "flow").glob("*.csv"))
        names = {path.name for path in (figures / "attention").iterdir()}
        assert any(name.startswith("text_heatmap") for name in names), names
        assert any(name.startswith("image_heatmap") and name.endswith(".pdf") for name in names), names
        assert f"pointing game ({family})" in summary
        assert any(name.startswith("avg_attention") and name.endswith(".png") for name in names), names
    assert summary.count("trained demo model") == 2
    assert "knockout" in summary and "Volcano loop" in summary and "Figure 5 drawn" in summary
