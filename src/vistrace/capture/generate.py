"""Generation with image-attention capture: what every generated token attends to in the image.

The model runs on its fast attention path; inside the seam, only the row of the token being predicted
is computed explicitly, and only its columns on image features are kept. One `StageCapture` holds one
generation (a prompt and its answer) with that attention, its tokens and the geometry that maps image
features to pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from vistrace import compat
from vistrace.adapters import Geometry, traced
from vistrace.hook import CaptureRecorder, Plan
from vistrace.models.loading import LoadedModel

Conversation = Sequence[Mapping[str, Any]]
PromptLike = str | Conversation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageCapture:
    """One generation with the attention of its tokens on the image.

    - `prompt_text`: the rendered chat prompt; `input_ids`: its S token ids (image placeholders
      expanded as the processor does).
    - `output_ids`, `output_tokens`: the T generated ids and their tokenizer strings (EOS included
      when generation stopped on it); `text`: the decoded answer, special tokens skipped, stripped.
    - `layers`: the decoder layers of the 2nd axis of `image_attention` (every layer for inline
      families, the cross-attention layers for Mllama).
    - `image_attention`: (T, layers, heads, N) softmax weights (float16 by default) of the row that
      predicted each generated token on the N image features (the columns of `geometry`).
    - `ends_with_eos`: whether the last generated token is an end-of-sequence token.
    - `output_pieces`: the text each generated token adds to the decoded output (leading spaces
      and multi-byte characters resolved; special tokens as written), for display.
    """

    prompt_text: str
    input_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    output_tokens: tuple[str, ...]
    text: str
    layers: tuple[int, ...]
    image_attention: torch.Tensor
    geometry: Geometry
    ends_with_eos: bool = False
    output_pieces: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def content_tokens(self) -> int:
        """Number of generated tokens without a final EOS."""
        return self.num_tokens - int(self.ends_with_eos)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the attention tensor, as JSON-ready values."""
        return {
            "prompt_text": self.prompt_text,
            "input_ids": list(self.input_ids),
            "output_ids": list(self.output_ids),
            "output_tokens": list(self.output_tokens),
            "text": self.text,
            "layers": list(self.layers),
            "ends_with_eos": self.ends_with_eos,
            "output_pieces": list(self.output_pieces),
            "shape": list(self.image_attention.shape),
            "geometry": self.geometry.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], image_attention: torch.Tensor) -> StageCapture:
        """Rebuild a capture from `to_dict` output and its (T, layers, heads, N) tensor."""
        expected = tuple(data.get("shape", image_attention.shape))
        if tuple(image_attention.shape) != expected:
            raise ValueError(
                f"attention tensor has shape {tuple(image_attention.shape)}, expected {expected}"
            )
        return cls(
            prompt_text=str(data["prompt_text"]),
            input_ids=tuple(int(i) for i in data["input_ids"]),
            output_ids=tuple(int(i) for i in data["output_ids"]),
            output_tokens=tuple(str(t) for t in data["output_tokens"]),
            text=str(data["text"]),
            layers=tuple(int(i) for i in data["layers"]),
            image_attention=image_attention,
            geometry=Geometry.from_dict(dict(data["geometry"])),
            ends_with_eos=bool(data.get("ends_with_eos", False)),
            output_pieces=tuple(str(t) for t in data.get("output_pieces", ())),
        )


class PromptTooLongError(ValueError):
    """The prompt does not fit in the model's context."""


@dataclass(frozen=True)
class _Encoded:
    inputs: dict[str, torch.Tensor]
    prompt_text: str
    image_keys: torch.Tensor | None


def _template_owner(processor: Any) -> Any:
    return processor if getattr(processor, "chat_template", None) else processor.tokenizer


def _encode(loaded: LoadedModel, image: Image.Image, prompt: PromptLike) -> _Encoded:
    """Processor inputs (batch 1) for `prompt`: a user message (image first, then this text) or a
    whole conversation rendered by the processor's chat template with a generation prompt."""
    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    if isinstance(prompt, str):
        prepared = adapter.prepare(model, processor, image, prompt)
        return _Encoded(dict(prepared.inputs), prepared.prompt.text, prepared.image_keys)
    text = _template_owner(processor).apply_chat_template(
        [dict(message) for message in prompt], add_generation_prompt=True, tokenize=False
    )
    bos = getattr(processor.tokenizer, "bos_token", None)
    inputs = processor(
        images=adapter.prepare_image(processor, image),
        text=text,
        add_special_tokens=not (bos and text.startswith(bos)),
        return_tensors="pt",
    )
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    image_keys = adapter.image_keys(model, inputs)
    if image_keys is not None and image_keys.numel() == 0:
        raise ValueError("the conversation has no image: add a {'type': 'image'} part to a user message")
    return _Encoded(inputs, text, image_keys)


def _to_model(inputs: Mapping[str, torch.Tensor], loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """`inputs` on the model's device and dtype; PromptTooLongError when the prompt fills the context."""
    context = loaded.context_length
    prompt_len = int(inputs["input_ids"].shape[1])
    if context is not None and prompt_len >= context:
        raise PromptTooLongError(f"the prompt has {prompt_len} tokens; the model's context is {context}")
    return loaded.to_model(inputs)


def _pieces(tokenizer: Any, ids: Sequence[int], context: int = 6) -> tuple[str, ...]:
    """The text each of `ids` adds when decoded after the few tokens before it."""
    pieces = []
    for i, token in enumerate(ids):
        window = list(ids[max(0, i - context) : i])
        before = str(tokenizer.decode(window, skip_special_tokens=False))
        after = str(tokenizer.decode([*window, token], skip_special_tokens=False))
        single = str(tokenizer.decode([token], skip_special_tokens=False))
        pieces.append(after[len(before) :] if after.startswith(before) else single)
    return tuple(pieces)


def _generation_kwargs(max_new_tokens: int, sample: bool, temperature: float) -> dict[str, Any]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if sample:
        return {"do_sample": True, "temperature": temperature, "max_new_tokens": max_new_tokens}
    return {"do_sample": False, "max_new_tokens": max_new_tokens}


def _fitting(max_new_tokens: int, inputs: Mapping[str, torch.Tensor], loaded: LoadedModel) -> int:
    """`max_new_tokens` clipped so that prompt + answer stays inside the model's context (logged)."""
    context = loaded.context_length
    if context is None:
        return max_new_tokens
    room = context - int(inputs["input_ids"].shape[1])
    if max_new_tokens > room:
        logger.warning(
            "max_new_tokens %d clipped to %d: the prompt leaves %d of the model's %d positions",
            max_new_tokens,
            room,
            room,
            context,
        )
        return room
    return max_new_tokens


def generate_text(
    loaded: LoadedModel,
    image: Image.Image,
    prompt: PromptLike,
    *,
    max_new_tokens: int,
    sample: bool = False,
    temperature: float = 0.5,
) -> str:
    """The model's answer to `prompt` about `image`, without capture (special tokens skipped, stripped)."""
    encoded = _encode(loaded, image, prompt)
    inputs = _to_model(encoded.inputs, loaded)
    new_tokens = _fitting(max_new_tokens, inputs, loaded)
    output_ids = loaded.generate(inputs, **_generation_kwargs(new_tokens, sample, temperature))[0]
    return str(loaded.processor.tokenizer.decode(output_ids, skip_special_tokens=True)).strip()


def capture(
    loaded: LoadedModel,
    image: Image.Image,
    prompt: PromptLike,
    *,
    max_new_tokens: int,
    sample: bool = False,
    temperature: float = 0.5,
    dtype: torch.dtype = torch.float16,
) -> StageCapture:
    """Generate an answer and keep each generated token's attention on every image feature.

    `prompt` is the user's message text (the image goes first, the processor's chat template builds
    the rest) or a whole conversation (a list of chat messages). Greedy unless `sample`, which draws
    at `temperature`. Only the attention of the row predicting each generated token on the image
    features is kept: T × layers × heads × N values stored as `dtype` (see `StageCapture`).
    """
    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    encoded = _encode(loaded, image, prompt)
    inputs = _to_model(encoded.inputs, loaded)
    layers = adapter.image_layers(model)
    image_keys = None if encoded.image_keys is None else encoded.image_keys[None]
    recorder = CaptureRecorder(layers=frozenset(layers), image_keys=image_keys)
    plan = Plan(cross_layers=adapter.cross_layers(model), capture=recorder)
    new_tokens = _fitting(max_new_tokens, inputs, loaded)
    # A config-less cache keeps every key of every layer: a sliding-window layer of the cache that
    # generate builds from the config drops old keys, and the capture gathers image keys by position.
    cache = compat.full_cache(model)
    with traced(model, plan):
        generated = loaded.generate(inputs, **_generation_kwargs(new_tokens, sample, temperature), **cache)
    output_ids = tuple(int(i) for i in generated[0].tolist())
    recorded = recorder.stacked()[:, 0]
    if recorded.shape[0] != len(output_ids) or recorded.shape[1] != len(layers):
        raise RuntimeError(
            f"captured {recorded.shape[0]} forward calls × {recorded.shape[1]} layers for "
            f"{len(output_ids)} generated tokens × {len(layers)} layers; the capture is misaligned"
        )
    tokenizer = processor.tokenizer
    geometry = adapter.geometry(model, processor, image.size)
    if recorded.shape[-1] != geometry.num_features:
        raise RuntimeError(
            f"captured {recorded.shape[-1]} image features but the geometry describes "
            f"{geometry.num_features}; the adapter's geometry does not match the model"
        )
    return StageCapture(
        prompt_text=encoded.prompt_text,
        input_ids=tuple(int(i) for i in encoded.inputs["input_ids"][0].tolist()),
        output_ids=output_ids,
        output_tokens=tuple(str(t) for t in tokenizer.convert_ids_to_tokens(list(output_ids))),
        text=str(tokenizer.decode(list(output_ids), skip_special_tokens=True)).strip(),
        layers=tuple(layers),
        image_attention=recorded.to(dtype).contiguous(),
        geometry=geometry,
        ends_with_eos=bool(output_ids) and output_ids[-1] in loaded.eos_ids,
        output_pieces=_pieces(tokenizer, output_ids),
    )


__all__ = ["Conversation", "PromptLike", "PromptTooLongError", "StageCapture", "capture", "generate_text"]
