"""Load checkpoints in the original LLaVA format into HF ``LlavaForConditionalGeneration``.

The original format (LLaVA-1.5, Volcano) is a directory whose ``config.json`` describes a
``LlavaLlamaForCausalLM``: Llama text fields at the top level plus ``mm_*`` keys, weights with
Llama key names plus ``model.mm_projector.{0,2}``, a Llama tokenizer without an ``<image>``
token, and the CLIP vision tower named by ``mm_vision_tower`` instead of stored alongside.

Key renames (original → HF ``LlavaForConditionalGeneration``):

- ``model.embed_tokens.*`` / ``model.layers.*`` / ``model.norm.*`` → ``model.language_model.*``
- ``model.mm_projector.0.*`` → ``model.multi_modal_projector.linear_1.*``
- ``model.mm_projector.2.*`` → ``model.multi_modal_projector.linear_2.*``
- ``model.vision_tower.vision_tower.vision_model.*`` → ``model.vision_tower.*``
- ``lm_head.weight`` unchanged; ``*.rotary_emb.inv_freq`` buffers dropped (recomputed).

The ``<image>`` token is appended to the tokenizer; the new embedding and ``lm_head`` rows are
the mean of the existing rows. The embedding row is never used (image features replace it), and
a mean ``lm_head`` row gives the new token a logit equal to the mean logit, so by Jensen's
inequality its probability is at most ``1 / (V + 1)`` and every other token's probability is
scaled by at least ``V / (V + 1)``; generation additionally suppresses the token.

Settings read from ``config.json`` — each is carried by the loaded model or processor, so every
command applies it, or the load is refused with one line naming the file:

- ``mm_vision_select_layer`` (one int) → ``vision_feature_layer``;
- ``mm_vision_select_feature``: ``patch`` → strategy ``default`` (CLS dropped), ``cls_patch`` →
  ``full`` (CLS kept as the first image position); other values refused;
- ``image_aspect_ratio``: ``pad`` → the image processor's ``do_pad`` (LLaVA's ``expand2square`` in
  the mean colour, before resize and crop); ``square`` or absent → no padding (LLaVA then hands the
  image to the CLIP processor as is); ``anyres`` and others refused;
- ``mm_projector_type`` ``mlp2x_gelu``, ``mm_patch_merge_type`` ``flat``, ``mm_use_im_start_end``
  false: the only values accepted;
- ``mm_vision_tower`` → the CLIP tower (``vision_tower=`` / ``--vision-tower`` overrides it);
- Llama fields (``rope_theta``, ``rope_scaling``, ``max_position_embeddings`` …) → the text config.

Not used at inference by LLaVA's own code, so read nowhere: ``mm_use_im_patch_token`` (adds a token
to the tokenizer only), ``image_grid_pinpoints`` (``anyres`` only), ``tokenizer_model_max_length``,
``tokenizer_padding_side`` and the training flags (``tune_mm_mlp_adapter``, ``freeze_*``,
``mm_projector_lr``, ``use_mm_proj``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import torch
from transformers import (
    AddedToken,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
)

from vistrace.models.llava_original_weights import (
    append_mean_rows,
    check_keys,
    convert_original_llava_state_dict,
    load_vision_weights,
    load_weights,
    quiet_transformers,
)

__all__ = [
    "IMAGE_TOKEN",
    "VICUNA_V1_CHAT_TEMPLATE",
    "VICUNA_V1_SYSTEM",
    "convert_original_llava_config",
    "convert_original_llava_state_dict",
    "is_original_llava",
    "load_original_llava",
]

IMAGE_TOKEN = "<image>"
SUPPORTED_PROJECTORS = ("mlp2x_gelu",)
SELECT_FEATURE_TO_STRATEGY: dict[str, Literal["default", "full"]] = {"patch": "default", "cls_patch": "full"}
SUPPORTED_ASPECT_RATIOS = ("pad", "square", None)
_CLIP_PROCESSORS = ("CLIPImageProcessorPil", "LlavaImageProcessorPil")

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

VICUNA_V1_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "', start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
    "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('\\n') -%}{%- endif -%}"
    "{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{{- ns.system + ' ' -}}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set parts = namespace(items=[]) -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set parts.items = parts.items + ['<image>'] -%}"
    "{%- elif item['type'] == 'text' -%}{%- set parts.items = parts.items + [item['text']] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set text = parts.items | join('\\n') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + text + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + text + '</s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)
"""Vicuna-v1 conversation (LLaVA ``conv_vicuna_v1``: sep ``" "``, sep2 ``"</s>"``).

A user turn with an image then text renders as ``USER: <image>\\n{text} ``; BOS is not part of the
template (the tokenizer adds it).
"""

_NOT_TEXT_FIELDS = {"architectures", "transformers_version", "dtype"}
_LLAMA_FIELDS = {f.name for f in dataclasses.fields(LlamaConfig)} - _NOT_TEXT_FIELDS


def _read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    with open(config_file, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{config_file}: expected a JSON object")
    return data


def is_original_llava(path: str | Path) -> bool:
    """True when ``path`` (a directory or its ``config.json``) holds an original-format LLaVA config.

    Detection uses the ``mm_projector_type`` / ``mm_vision_tower`` keys (``model_type`` is ``llava``
    or ``llava_llama`` in the wild, and ``llava`` is also the HF format, which has ``text_config``).
    """
    try:
        config = _read_config(path)
    except (OSError, ValueError):
        return False
    has_mm_keys = "mm_projector_type" in config or "mm_vision_tower" in config
    return has_mm_keys and "text_config" not in config


def _validate(orig: Mapping[str, Any], where: str = "") -> None:
    """Refuse, in one line, a setting whose value vistrace cannot apply (see the module doc)."""
    checks: tuple[tuple[str, Any, tuple[Any, ...]], ...] = (
        ("mm_projector_type", "linear", SUPPORTED_PROJECTORS),
        ("mm_vision_select_feature", "patch", tuple(SELECT_FEATURE_TO_STRATEGY)),
        ("image_aspect_ratio", None, SUPPORTED_ASPECT_RATIOS),
        ("mm_use_im_start_end", False, (False,)),
        ("mm_patch_merge_type", "flat", ("flat",)),
    )
    prefix = f"{where}: " if where else ""
    for field, default, supported in checks:
        value = orig.get(field, default)
        if value not in supported:
            raise ValueError(
                f"{prefix}{field}={value!r} is not supported; supported values: {list(supported)}"
            )
    layer = orig.get("mm_vision_select_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"{prefix}mm_vision_select_layer={layer!r} is not supported; expected one int")


def _text_config(orig: Mapping[str, Any], vocab_size: int) -> LlamaConfig:
    """Llama config from the top-level fields; ``rope_theta``/``rope_scaling`` become ``rope_parameters``."""
    kwargs = {k: v for k, v in orig.items() if k in _LLAMA_FIELDS}
    kwargs["vocab_size"] = vocab_size
    if "rope_parameters" not in kwargs:
        rope = dict(orig.get("rope_scaling") or {})
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        kwargs["rope_parameters"] = {
            **rope,
            "rope_type": rope_type,
            "rope_theta": float(orig.get("rope_theta", 10000.0)),
        }
    return LlamaConfig(**kwargs)


def _grid_and_patch(vision_config: CLIPVisionConfig) -> tuple[int, int]:
    """Patches per side and patch size of a square CLIP tower."""
    image, patch = vision_config.image_size, vision_config.patch_size
    if not isinstance(image, int) or not isinstance(patch, int):
        raise ValueError(f"vision tower image_size={image!r}, patch_size={patch!r}: expected one int each")
    return image // patch, patch


def convert_original_llava_config(
    orig: Mapping[str, Any], vision_config: CLIPVisionConfig, *, image_token_id: int | None = None
) -> LlavaConfig:
    """Build the HF ``LlavaConfig`` equivalent to an original LLaVA ``config.json``.

    Args:
        orig: the original config (Llama fields at the top level plus ``mm_*`` keys).
        vision_config: config of the CLIP tower named by ``mm_vision_tower``.
        image_token_id: id of the added ``<image>`` token; defaults to the original ``vocab_size``
            (the id a tokenizer of exactly ``vocab_size`` tokens gives it). The text vocabulary is
            ``max(vocab_size, image_token_id + 1)``.

    Raises:
        ValueError: unsupported ``mm_projector_type``, ``mm_vision_select_feature``,
            ``image_aspect_ratio``, ``mm_use_im_start_end`` or ``mm_patch_merge_type``.
    """
    _validate(orig)
    vocab_size = int(orig.get("vocab_size", 32000))
    token_id = vocab_size if image_token_id is None else image_token_id
    text_config = _text_config(orig, max(vocab_size, token_id + 1))
    grid, _ = _grid_and_patch(vision_config)
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=token_id,
        image_seq_length=grid * grid,
        projector_hidden_act="gelu",
        vision_feature_layer=int(orig.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=SELECT_FEATURE_TO_STRATEGY[
            orig.get("mm_vision_select_feature", "patch")
        ],
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(orig.get("tie_word_embeddings", False)),
    )


def _resolve_vision_tower(path: Path, orig: Mapping[str, Any], vision_tower: str | Path | None) -> Path:
    if vision_tower is not None:
        tower = Path(vision_tower).expanduser()
        if not tower.is_dir():
            raise FileNotFoundError(f"vision tower directory not found: {tower}")
        return tower
    name = orig.get("mm_vision_tower") or orig.get("vision_tower")
    if not name:
        raise ValueError(f"{path / 'config.json'}: no mm_vision_tower; pass --vision-tower DIR")
    tower = Path(name).expanduser()
    tower = tower if tower.is_absolute() else path / tower
    if not tower.is_dir():
        raise FileNotFoundError(
            f"vision tower {name!r} (mm_vision_tower in {path / 'config.json'}) is not a local directory; "
            "download it and pass --vision-tower DIR (vision_tower=DIR in Python)"
        )
    return tower


def _image_processor(tower: Path, aspect_ratio: str | None) -> LlavaImageProcessorPil:
    """The tower's CLIP preprocessing as a ``LlavaImageProcessor`` that pads to a square in the mean
    colour (LLaVA's ``expand2square``) when the checkpoint says ``image_aspect_ratio: pad``.

    The padding is the processor's own step (``do_pad``), so it runs wherever the processor runs —
    every command, a saved HF-format copy, the user's own calls — and the geometry reads it there.
    """
    found = AutoImageProcessor.from_pretrained(tower, backend="pil")
    if type(found).__name__ not in _CLIP_PROCESSORS:
        raise ValueError(
            f"{tower}: the vision tower's image processor is {type(found).__name__}; original-format LLaVA "
            f"checkpoints are read with a CLIP one ({', '.join(_CLIP_PROCESSORS)})"
        )
    return LlavaImageProcessorPil.from_pretrained(tower, do_pad=aspect_ratio == "pad")


def load_original_llava(
    path: str | Path,
    *,
    vision_tower: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Load an original-format LLaVA checkpoint as HF Llava, with a matching processor.

    Args:
        path: checkpoint directory (config, weights, tokenizer).
        vision_tower: local CLIP directory (``CLIPVisionModel`` or ``CLIPModel`` weights plus
            ``preprocessor_config.json``); default: ``mm_vision_tower`` as a local path, absolute or
            relative to ``path``.
        dtype: parameter dtype.
        device: put the whole model on this device (exclusive with ``device_map``).
        device_map: HF/accelerate device map, e.g. ``"auto"``.

    Returns:
        ``(model, processor)``. One ``<image>`` in the text expands to ``(S/P)^2`` positions
        (576 for 336 px, patch 14, CLS dropped). ``processor.image_processor`` is the tower's CLIP
        preprocessing as a ``LlavaImageProcessor`` whose ``do_pad`` is ``image_aspect_ratio ==
        "pad"``; ``processor.chat_template`` is :data:`VICUNA_V1_CHAT_TEMPLATE`. Saved with
        ``save_pretrained``, model and processor are an HF-format copy that computes the same.

    Raises:
        FileNotFoundError: the vision tower is not a local directory, or no weights are found.
        ValueError: not an original LLaVA checkpoint, unsupported config values, or weights that do
            not match the model (missing, unexpected or mis-shaped keys).
    """
    path = Path(path).expanduser()
    if device is not None and device_map is not None:
        raise ValueError("pass either device or device_map, not both")
    if not is_original_llava(path):
        raise ValueError(f"{path}: not an original LLaVA checkpoint (no mm_projector_type/mm_vision_tower)")
    orig = _read_config(path)
    _validate(orig, str(path / "config.json"))
    tower = _resolve_vision_tower(path, orig, vision_tower)

    tokenizer = AutoTokenizer.from_pretrained(
        path, config=_text_config(orig, int(orig.get("vocab_size", 32000)))
    )
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if not isinstance(image_token_id, int):
        raise ValueError(f"{path}: the tokenizer maps {IMAGE_TOKEN!r} to {image_token_id!r}, not one id")

    vision_config = CLIPVisionConfig.from_pretrained(tower)
    config = convert_original_llava_config(orig, vision_config, image_token_id=image_token_id)
    vocab_size = max(int(orig.get("vocab_size", 32000)), image_token_id + 1)
    sd = convert_original_llava_state_dict(load_weights(path))
    sd = {**load_vision_weights(tower, dtype), **sd}
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in sd:
            sd[key] = append_mean_rows(sd[key], vocab_size)

    check_keys(config, sd, path)

    if device is not None:
        device_map = {"": device}
    with quiet_transformers():
        loaded = LlavaForConditionalGeneration.from_pretrained(
            None,
            config=config,
            state_dict=sd,
            dtype=dtype,
            device_map=device_map,
            output_loading_info=True,
        )
    model, info = cast(tuple[LlavaForConditionalGeneration, dict[str, Any]], loaded)
    if info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise ValueError(f"{path}: weights do not match the converted model: {info}")
    model.eval()
    model.generation_config.suppress_tokens = [image_token_id]

    processor = LlavaProcessor(
        image_processor=_image_processor(tower, orig.get("image_aspect_ratio")),
        tokenizer=tokenizer,
        patch_size=_grid_and_patch(vision_config)[1],
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=VICUNA_V1_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    return model, processor
