"""Proofs shared by the families that cut an image into squares with frame tokens around each
(Idefics3 and SmolVLM, one adapter): image keys against the model's own features, frame roles."""

from __future__ import annotations

import torch

from vistrace.models.loading import LoadedModel
from vistrace.roles import Role

from ..conftest import scene_image


def assert_image_keys_equal_the_model_features(loaded: LoadedModel, question: str, expected: int) -> None:
    """A 96 × 32 image (1 × 2 squares + the global image): as many image keys as the model's connector
    gives features (`expected`), the geometry has one box each, and the squares' row tokens."""
    image = scene_image(96, 32)
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, question)
    with torch.no_grad():
        pooled = loaded.model.model.get_image_features(
            prepared.inputs["pixel_values"], prepared.inputs["pixel_attention_mask"]
        ).pooler_output
    # One (features, D) tensor per image, or one (squares, features per square, D) tensor: the layout
    # differs between transformers releases; the count of features does not.
    parts = pooled if isinstance(pooled, (tuple, list)) else [pooled]
    n_features = sum(part.reshape(-1, part.shape[-1]).shape[0] for part in parts)
    assert prepared.image_keys is not None
    assert len(prepared.image_keys) == n_features == expected
    geometry = loaded.adapter.geometry(loaded.model, loaded.processor, image.size)
    assert geometry.num_features == len(prepared.image_keys)
    tokens = loaded.processor.tokenizer.convert_ids_to_tokens(prepared.input_ids[0].tolist())
    assert [t for t in tokens if t.startswith("<row_")] == ["<row_1_col_1>", "<row_1_col_2>"]


def assert_frame_tokens_are_template(loaded: LoadedModel, question: str) -> None:
    """On the 48 × 32 scene (2 × 2 squares): every frame token is `TEMPLATE`, the image tokens are the
    image keys, and the question's tokens spell the question."""
    prepared = loaded.adapter.prepare(loaded.model, loaded.processor, scene_image(), question)
    tokens = loaded.processor.tokenizer.convert_ids_to_tokens(prepared.input_ids[0].tolist())
    frame = [i for i, t in enumerate(tokens) if t in ("<fake_token_around_image>", "<global-img>")]
    frame += [i for i, t in enumerate(tokens) if t.startswith("<row_")]
    assert len(frame) == 4 * 2 + 3  # 2 × 2 squares, then the global image's three frame tokens
    assert all(int(prepared.roles[i]) == Role.TEMPLATE for i in frame)
    image = prepared.roles == Role.IMAGE
    assert prepared.image_keys is not None
    assert torch.equal(torch.nonzero(image).flatten(), prepared.image_keys)
    question_text = "".join(
        t for t, r in zip(tokens, prepared.roles.tolist(), strict=True) if r == Role.QUESTION
    )
    assert question_text.replace("Ġ", " ") == question
