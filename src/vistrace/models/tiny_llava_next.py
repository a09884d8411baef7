"""Tiny offline LLaVA-NeXT checkpoints (`llava_next`): a CLIP tower, a Llama decoder, anyres tiling.

The wiring is that of llava-v1.6-vicuna at a tiny width: features of the penultimate vision layer with
the CLS dropped, a two-layer GELU projector, a learned `image_newline` vector, the image processor's
`image_grid_pinpoints` scaled to the tiny tower (one tile = `image_size` px, `(image_size / patch)²`
features), and the checkpoint's Vicuna chat template (`USER: <image>\\n… ASSISTANT:`).
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

from vistrace.adapters.base import image_only_processor_class
from vistrace.models.tiny_checkpoint import (
    TINY_TOWER,
    llama_text_config,
    llava_tokenizer,
    open_gates,
    save_tiny_checkpoint,
    token_id,
)
from vistrace.models.tiny_qwen import build_qwen_tokenizer

# The chat template of llava-hf/llava-v1.6-vicuna-7b-hf (its chat_template.json).
LLAVA_NEXT_VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The chat template of llava-hf/llava-onevision-qwen2-*-ov-hf (written by transformers' conversion
# script): ChatML, the image first in the user turn.
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def onevision_pinpoints(tile: int, max_tiles: int = 4) -> list[list[int]]:
    """Anyres canvases (height, width) of a × b tiles of `tile` px, 1 ≤ a, b ≤ `max_tiles`: the shape
    of OneVision's list (384 px tiles, 1…6 per side) at the tiny tower's tile size."""
    return [[a * tile, b * tile] for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1)]


def tiny_pinpoints(tile: int) -> list[list[int]]:
    """Anyres canvases (height, width) in px of 1×1, 1×2, 2×1 and 2×2 tiles of `tile` px: the shape of
    llava-v1.6's list (336 px tiles up to 672×672) at the tiny tower's tile size."""
    return [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]


def llava_next_processor(
    tokenizer: PreTrainedTokenizerFast, *, image_size: int, patch_size: int
) -> LlavaNextProcessor:
    """LLaVA-NeXT's processor at `image_size` px tiles: the base image resized to a square tile, the
    anyres canvas from `image_grid_pinpoints`; the llava-v1.6-vicuna chat template."""
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=tiny_pinpoints(image_size),
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_VICUNA_TEMPLATE,
    )


def write_tiny_llava_next(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    image_size: int = 42,
    patch_size: int = 14,
    hidden_size: int = 32,
    num_heads: int = 4,
    num_kv_heads: int = 2,
) -> Path:
    """Write a tiny `LlavaNextForConditionalGeneration` checkpoint into `out_dir` and return it.

    One tile gives (image_size / patch_size)² features (9 by default); an image gives the base tile,
    the unpadded anyres grid (up to 2×2 tiles) and one newline feature per grid row.
    """
    tokenizer = llava_tokenizer()
    vision = CLIPVisionConfig(**TINY_TOWER, image_size=image_size, patch_size=patch_size, projection_dim=16)
    text = llama_text_config(
        tokenizer,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=token_id(tokenizer, "<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=tiny_pinpoints(image_size),
        image_seq_length=(image_size // patch_size) ** 2,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    processor = llava_next_processor(tokenizer, image_size=image_size, patch_size=patch_size)
    return save_tiny_checkpoint(
        out_dir,
        LlavaNextForConditionalGeneration,
        config,
        tokenizer=tokenizer,
        processor=processor,
        seed=seed,
        draw=open_gates,
    )


def llava_onevision_processor(
    tokenizer: PreTrainedTokenizerFast, *, image_size: int, patch_size: int, max_tiles: int
) -> LlavaOnevisionProcessor:
    """OneVision's processor for images only (its video processor needs torchvision): square tiles
    of `image_size` px, anyres_max_9 packing, the ChatML template. It saves as
    `LlavaOnevisionProcessor`, so a machine with torchvision loads the full processor."""
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=onevision_pinpoints(image_size, max_tiles),
    )
    processor_class = image_only_processor_class(LlavaOnevisionProcessor)
    processor: LlavaOnevisionProcessor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=LLAVA_ONEVISION_TEMPLATE,
    )
    return processor


def write_tiny_llava_onevision(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    image_size: int = 28,
    patch_size: int = 14,
    max_tiles: int = 4,
    hidden_size: int = 32,
    num_heads: int = 4,
    num_kv_heads: int = 2,
) -> Path:
    """Write a tiny `LlavaOnevisionForConditionalGeneration` checkpoint into `out_dir`: a SigLIP tower
    (no CLS, strategy "full"), a Qwen2 decoder, canvases up to `max_tiles` × `max_tiles` tiles.

    With 4 features per tile, anyres_max_9 shrinks an unpadded grid of more than 1.1² × 36 features
    (a 4 × 4-tile canvas: 8 × 8) before the newlines are added.
    """
    tokenizer = build_qwen_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    vision = SiglipVisionConfig(**TINY_TOWER, image_size=image_size, patch_size=patch_size)
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=token_id(tokenizer, "<image>"),
        video_token_index=token_id(tokenizer, "<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=onevision_pinpoints(image_size, max_tiles),
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    processor = llava_onevision_processor(
        tokenizer, image_size=image_size, patch_size=patch_size, max_tiles=max_tiles
    )
    return save_tiny_checkpoint(
        out_dir,
        LlavaOnevisionForConditionalGeneration,
        config,
        tokenizer=tokenizer,
        processor=processor,
        seed=seed,
        draw=open_gates,
    )


__all__ = [
    "LLAVA_NEXT_VICUNA_TEMPLATE",
    "LLAVA_ONEVISION_TEMPLATE",
    "llava_next_processor",
    "llava_onevision_processor",
    "onevision_pinpoints",
    "tiny_pinpoints",
    "write_tiny_llava_next",
    "write_tiny_llava_onevision",
]
