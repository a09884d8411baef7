"""Gemma 3 on a tiny offline checkpoint: soft-token roles, the bidirectional image block through the
seam, geometry, the caches of sliding-window layers, fast == naive on image rows (the seam proofs run
in the family-parametrized tests: the family is in `vistrace.models.tiny.FAMILIES`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vistrace import compat
from vistrace.adapters import traced
from vistrace.adapters.gemma3 import Gemma3Adapter, image_blocks
from vistrace.hook import Plan
from vistrace.knockout.sweep import KnockoutRunner, Pathway
from vistrace.models.loading import LoadedModel, load
from vistrace.roles import Role

from ..conftest import scene_image

pytestmark = [pytest.mark.integration]

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def checkpoint(tiny_dirs: dict[str, Path]) -> Path:
    """The session's tiny gemma3 checkpoint (tests/conftest.py; one thread, adapters registered)."""
    return tiny_dirs["gemma3"]


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load(checkpoint)


def _prepared(loaded: LoadedModel) -> Any:
    return loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), QUESTION)


def test_loads_offline_with_the_family_classes(loaded: LoadedModel) -> None:
    assert type(loaded.model).__name__ == "Gemma3ForConditionalGeneration"
    assert type(loaded.processor).__name__ == "Gemma3Processor"
    assert loaded.adapter.model_type == "gemma3"
    # The processor's `image_token_id` is the <start_of_image> placeholder; features sit on the soft token.
    assert loaded.adapter.image_token_id(loaded.model) == loaded.model.config.image_token_id
    assert loaded.processor.image_token_id != loaded.model.config.image_token_id


def test_soft_tokens_are_the_image_and_their_frame_is_template(loaded: LoadedModel) -> None:
    prepared = _prepared(loaded)
    tokens = loaded.processor.tokenizer.convert_ids_to_tokens(prepared.input_ids[0].tolist())
    roles = prepared.roles.tolist()
    assert prepared.image_keys is not None
    assert torch.equal(torch.nonzero(prepared.roles == Role.IMAGE).flatten(), prepared.image_keys)
    assert len(prepared.image_keys) == 16
    assert [tokens[i] for i in prepared.image_keys.tolist()] == ["<image_soft_token>"] * 16
    first, last = int(prepared.image_keys[0]), int(prepared.image_keys[-1])
    assert tokens[first - 1] == "<start_of_image>" and tokens[last + 1] == "<end_of_image>"
    assert roles[first - 1] == roles[last + 1] == Role.TEMPLATE
    newlines = [i for i, t in enumerate(tokens[:-1]) if set(t) <= {"\n"}]  # the last row is LAST
    assert len(newlines) >= 4 and all(roles[i] == Role.TEMPLATE for i in newlines)
    question = "".join(t for t, r in zip(tokens, roles, strict=True) if r == Role.QUESTION)
    assert question.replace("▁", " ") == QUESTION
    assert image_blocks(prepared.inputs["token_type_ids"][0]) == [(first, last + 1)]


def test_refuses_a_processor_without_token_type_ids(loaded: LoadedModel) -> None:
    class Dropping:
        def __init__(self, processor: Any) -> None:
            self._processor = processor

        def __getattr__(self, name: str) -> Any:
            return getattr(self._processor, name)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            outputs = self._processor(*args, **kwargs)
            del outputs["token_type_ids"]
            return outputs

    with pytest.raises(ValueError, match="token_type_ids"):
        loaded.adapter.prepare(loaded.model, Dropping(loaded.processor), scene_image(), QUESTION)


def test_empty_plan_equals_stock_sdpa_and_keeps_the_bidirectional_block(
    loaded: LoadedModel, checkpoint: Path
) -> None:
    prepared = _prepared(loaded)
    inputs = dict(prepared.inputs)
    stock = AutoModelForImageTextToText.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    causal = {**inputs, "token_type_ids": torch.zeros_like(inputs["token_type_ids"])}
    with torch.no_grad():
        expected = stock(**inputs).logits
        with traced(loaded.model, Plan()):
            seam = loaded.model(**inputs, output_hidden_states=True)
            seam_causal = loaded.model(**causal, output_hidden_states=True)
    torch.testing.assert_close(seam.logits, expected, atol=1e-5, rtol=0)
    # The first image row sees the later image rows (it changes when the block is made causal); the
    # row before the block does not.
    assert prepared.image_keys is not None
    first = int(prepared.image_keys[0])
    last_seam, last_causal = seam.hidden_states[-1][0], seam_causal.hidden_states[-1][0]
    torch.testing.assert_close(last_seam[first - 1], last_causal[first - 1], atol=1e-6, rtol=0)
    assert float((last_seam[first] - last_causal[first]).abs().max()) > 1e-3


def test_a_cache_built_from_the_config_is_refused(loaded: LoadedModel) -> None:
    prepared = _prepared(loaded)
    with torch.no_grad():
        output = loaded.model(**prepared.inputs, use_cache=True)
    length = int(prepared.input_ids.shape[1])
    assert length > loaded.model.config.text_config.sliding_window
    with pytest.raises(compat.TransformersContractError, match="keys for"):
        compat.cache_tensors(compat.output_cache(output), 4, sequence_length=length)


def test_fast_refuses_a_rerun_from_inside_the_image_block(loaded: LoadedModel) -> None:
    prepared = _prepared(loaded)
    assert prepared.image_keys is not None
    first = int(prepared.image_keys[0])
    adapter = loaded.adapter
    assert adapter.rerun_start_error(prepared.inputs, first) is None
    assert adapter.rerun_start_error(prepared.inputs, first + 16) is None
    assert "inside an image block" in str(adapter.rerun_start_error(prepared.inputs, first + 5))


def test_geometry_of_a_non_square_image(loaded: LoadedModel) -> None:
    image = scene_image(48, 32)
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    assert geometry.num_features == 16
    assert [(g.rows, g.cols, g.box) for g in geometry.grids] == [(4, 4, (0.0, 0.0, 48.0, 32.0))]
    assert geometry.boxes[0] == pytest.approx([0.0, 0.0, 12.0, 8.0])
    assert geometry.boxes[6] == pytest.approx([24.0, 8.0, 36.0, 16.0])  # row 1, column 2
    assert geometry.boxes[15] == pytest.approx([36.0, 24.0, 48.0, 32.0])


def test_pan_and_scan_geometry_matches_the_processor(loaded: LoadedModel) -> None:
    # The processor's own defaults (crops of at least 256 px) apply when a call asks for crops.
    image = scene_image(800, 300)
    text = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True,
    )
    outputs = loaded.processor(images=image, text=text, do_pan_and_scan=True, return_tensors="pt")
    soft = int((outputs["input_ids"] == loaded.model.config.image_token_id).sum())
    adapter = loaded.adapter
    assert isinstance(adapter, Gemma3Adapter)
    geometry = adapter.geometry(loaded.model, loaded.processor, image.size, do_pan_and_scan=True)
    assert soft == geometry.num_features == 4 * 16
    assert [g.box for g in geometry.grids] == [
        (0.0, 0.0, 800.0, 300.0),
        (0.0, 0.0, 267.0, 300.0),
        (267.0, 0.0, 534.0, 300.0),
        (534.0, 0.0, 800.0, 300.0),
    ]


def test_fast_equals_naive_on_image_rows(loaded: LoadedModel) -> None:
    # Pathways into the image block re-run it whole: fast == naive there too.
    pathways = [Pathway.parse(p) for p in ("image_to_image", "template_to_image")]
    runner = KnockoutRunner(loaded, mode="strict")
    prepared = _prepared(loaded)
    naive = runner.run(prepared, [57, 88], pathways, 1, "naive")
    fast = runner.run(prepared, [57, 88], pathways, 1, "fast")
    for pathway in pathways:
        expected = torch.tensor(naive.probs[pathway.name], dtype=torch.float64)
        actual = torch.tensor(fast.probs[pathway.name], dtype=torch.float64)
        assert float((actual.log() - expected.log()).abs().max()) <= 1e-4, pathway.name
    assert naive.probs["image_to_image"] != [naive.p_full] * runner.n_layers
