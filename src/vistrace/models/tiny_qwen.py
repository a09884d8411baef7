"""Tiny random Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints, written offline.

Each directory holds what a real checkpoint holds: `config.json` built from the family's own config
classes, seeded random weights, a byte-level BPE tokenizer with the Qwen special tokens, the family's
chat template and its processor (`Qwen2VLProcessor`, `Qwen2_5_VLProcessor`, `Qwen3VLProcessor`)
saved with `save_pretrained`. `AutoModelForImageTextToText.from_pretrained(dir)` loads the model;
the processor loads through `vistrace.adapters.qwen2_vl.load_qwen_processor` (`AutoProcessor` where
torchvision is installed, the image-only processor where it is not, see that module).

The structure follows the real models at a tiny width (sources: the Qwen2-VL-2B, Qwen2.5-VL-3B and
Qwen3-VL-2B `config.json` files and the transformers config classes):

- Qwen2-VL / 2.5-VL: 14-px patches, 2×2 merge (one feature per 28×28 px), M-RoPE sections in the
  real 16:24:24 proportions of the rotary half-dimension; 2.5-VL's ViT alternates window and full
  attention (`fullatt_block_indexes`), with windows of 2×2 merged features.
- Qwen3-VL: 16-px patches, 2×2 merge (one feature per 32×32 px), interleaved M-RoPE, learned
  position embeddings on a square grid, DeepStack features from three vision layers added to the
  image rows after decoder layers 0, 1 and 2.
- grouped-query attention in the language model (4 query heads, 2 key/value heads).

Images are resized by the processor's own `smart_resize` between `min_pixels` and `max_pixels`
(defaults: 4 to 16 features), so a forward takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from vistrace.adapters.base import image_only_processor_class
from vistrace.adapters.qwen2_vl import QWEN_PROCESSOR_CLASSES
from vistrace.models.tiny_checkpoint import PROMPT_SENTENCES, save_tiny_checkpoint, token_id

QwenFamily = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
QWEN_FAMILIES: tuple[QwenFamily, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# The added tokens of the Qwen2 / Qwen2.5 / Qwen3 tokenizers, in their order (ids 151643 … 151656 in
# the real vocabulary, right after the BPE tokens).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The pre-tokenizer split of the Qwen2 tokenizer (`tokenizer.json` of the Qwen2-VL checkpoints).
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The chat template of Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct (`chat_template.json`), verbatim.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The chat template of Qwen3-VL-*-Instruct reduced to system / user / assistant turns (the real one
# adds tools and reasoning content); no default system prompt, unlike Qwen2-VL.
QWEN3_VL_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}<|im_start|>system\n"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}"
    "{%- if 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = [
    "You are a helpful assistant. system user assistant",
    *PROMPT_SENTENCES,
    "Read the text in the image carefully. Describe the picture. rather silver the red car a cat.",
]


def build_qwen_tokenizer(
    corpus: Iterable[str] = _CORPUS, *, vocab_size: int = 400
) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer shaped like Qwen2's: NFC normalisation, Qwen2's regex split,
    byte-level bytes, no BOS; `QWEN_SPECIAL_TOKENS` after the BPE vocabulary; EOS `<|im_end|>`,
    padding `<|endoftext|>` (the Instruct checkpoints' `tokenizer_config.json`)."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    fast.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    fast.eos_token = "<|im_end|>"
    fast.pad_token = "<|endoftext|>"
    return fast


def qwen_processor(
    family: QwenFamily,
    tokenizer: PreTrainedTokenizerFast,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Any:
    """The family's processor (image processor + tokenizer + chat template), image-only.

    The image processor is the PIL `Qwen2VLImageProcessorPil` (Qwen3-VL checkpoints use the same class
    with 16-px patches and mean/std 0.5); it saves as `Qwen2VLImageProcessor`, so a machine with
    torchvision loads the torchvision variant. Pixel bounds default to 4 … 16 merged features.
    """
    patch = 16 if family == "qwen3_vl" else 14
    feature = patch * 2
    min_pixels = 4 * feature * feature if min_pixels is None else min_pixels
    max_pixels = 16 * feature * feature if max_pixels is None else max_pixels
    normalisation: dict[str, Any] = {}
    if family == "qwen3_vl":
        normalisation = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        **normalisation,
    )
    template = QWEN3_VL_TEMPLATE if family == "qwen3_vl" else QWEN2_VL_TEMPLATE
    processor_class = image_only_processor_class(QWEN_PROCESSOR_CLASSES[family])
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "image_token_id": token_id(tokenizer, "<|image_pad|>"),
        "video_token_id": token_id(tokenizer, "<|video_pad|>"),
        "vision_start_token_id": token_id(tokenizer, "<|vision_start|>"),
        "vision_end_token_id": token_id(tokenizer, "<|vision_end|>"),
    }


def qwen_config(
    family: QwenFamily,
    tokenizer: PreTrainedTokenizerFast,
    *,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_hidden: int = 16,
) -> PretrainedConfig:
    """A tiny config of `family` from its real config classes.

    Head dimension `hidden_size / num_heads` (16 by default); M-RoPE sections split its rotary half
    (8) as 2:3:3 for Qwen2/2.5-VL (real 16:24:24 of 64) and 4:2:2 interleaved for Qwen3-VL (real
    24:20:20 of 64).
    """
    head_dim = hidden_size // num_heads
    half = head_dim // 2
    ids = _token_ids(tokenizer)
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 1024,
        "bos_token_id": token_id(tokenizer, "<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "qwen3_vl":
        h_and_w = max(1, half // 4)
        text["head_dim"] = head_dim
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [half - 2 * h_and_w, h_and_w, h_and_w],
            "mrope_interleaved": True,
        }
        vision_qwen3: dict[str, Any] = {
            "depth": 4,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1, 2, 3],
        }
        return Qwen3VLConfig(text_config=text, vision_config=vision_qwen3, **ids)
    t_section = max(1, round(half * 16 / 64))
    h_section = (half - t_section) // 2
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 1_000_000.0,
        "mrope_section": [t_section, h_section, half - t_section - h_section],
    }
    if family == "qwen2_5_vl":
        vision_qwen25: dict[str, Any] = {
            "depth": 4,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1, 3],
            "out_hidden_size": hidden_size,
            "tokens_per_second": 2,
        }
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision_qwen25, **ids)
    vision_qwen2: dict[str, Any] = {
        "depth": 2,
        "embed_dim": vision_hidden,
        "hidden_size": hidden_size,
        "mlp_ratio": 2,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(text_config=text, vision_config=vision_qwen2, **ids)


_MODEL_CLASSES: dict[QwenFamily, type[PreTrainedModel]] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
}


def write_tiny_qwen(
    family: QwenFamily,
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Write a tiny `family` checkpoint into `out_dir` and return it (see the module docstring)."""
    if family not in _MODEL_CLASSES:
        raise ValueError(
            f"unknown Qwen family {family!r}; tiny checkpoints exist for: {', '.join(QWEN_FAMILIES)}"
        )
    tokenizer = build_qwen_tokenizer()
    config = qwen_config(
        family,
        tokenizer,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
    )
    processor = qwen_processor(family, tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    return save_tiny_checkpoint(
        out_dir,
        _MODEL_CLASSES[family],
        config,
        tokenizer=tokenizer,
        processor=processor,
        seed=seed,
        eos_token_id=[token_id(tokenizer, "<|im_end|>"), token_id(tokenizer, "<|endoftext|>")],
    )


__all__ = [
    "QWEN2_VL_TEMPLATE",
    "QWEN3_VL_TEMPLATE",
    "QWEN_FAMILIES",
    "QWEN_SPECIAL_TOKENS",
    "QwenFamily",
    "build_qwen_tokenizer",
    "qwen_config",
    "qwen_processor",
    "write_tiny_qwen",
]
