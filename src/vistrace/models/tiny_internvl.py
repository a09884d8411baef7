"""Tiny random InternVL (`-hf` layout) checkpoints, written offline.

The directory holds what a converted `-hf` checkpoint holds: `config.json` from the family's own
config classes (`InternVLConfig` with an `InternVLVisionConfig` tower and a `Qwen2Config` decoder, as
InternVL3), seeded random weights, a byte-level BPE tokenizer shaped like Qwen2's with the InternVL
tokens (`<img>`, `</img>`, `<IMG_CONTEXT>`, `<video>`, named `start_image_token`,
`end_image_token`, `context_image_token`, `video_token` as the `-hf` tokenizer configs name them),
the chat template of transformers' InternVL conversion script, and its processor
(`InternVLProcessor` with the PIL `GotOcr2ImageProcessorPil`, `crop_to_patches`) saved with
`save_pretrained`. `AutoModelForImageTextToText` loads the model; the processor loads through
`vistrace.adapters.internvl.load_internvl_processor` (`AutoProcessor` where torchvision is installed,
images only where it is not: InternVL's video processor needs torchvision).

The structure follows the real model at a tiny size (real: 448-px tiles, 14-px patches, pixel
shuffle 0.5 → 256 features per tile, 1–12 tiles plus a thumbnail): here 28-px tiles, 7-px patches,
pixel shuffle 0.5 → 2 × 2 = 4 features per tile, 1–4 tiles plus a thumbnail (a 48 × 32 image: 2 × 1
tiles + thumbnail, 12 features).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from vistrace.adapters.base import image_only_processor_class
from vistrace.models.tiny_checkpoint import (
    TINY_TOWER,
    is_norm_weight,
    norms_near_one,
    save_tiny_checkpoint,
    token_id,
)
from vistrace.models.tiny_qwen import build_qwen_tokenizer

# The named InternVL tokens of the `-hf` tokenizer configs (`extra_special_tokens`).
INTERNVL_NAMED_TOKENS: dict[str, str] = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# The chat template of transformers' InternVL conversion script
# (`convert_internvl_weights_to_hf.py`), verbatim.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def build_internvl_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny Qwen2-style tokenizer (`build_qwen_tokenizer`) with the InternVL tokens added as
    special tokens and named as the `-hf` tokenizer config names them."""
    base = build_qwen_tokenizer()
    tokens = list(INTERNVL_NAMED_TOKENS.values())
    extra = [*base.extra_special_tokens, *tokens]
    base.add_special_tokens({"extra_special_tokens": extra})
    return PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        extra_special_tokens=extra,
        model_specific_special_tokens=dict(INTERNVL_NAMED_TOKENS),
    )


def internvl_processor(
    tokenizer: PreTrainedTokenizerFast, *, tile: int, max_patches: int, image_seq_length: int
) -> Any:
    """InternVL's processor (image processor + tokenizer + chat template), image-only: `tile`-px
    tiles (1 … `max_patches`, a thumbnail when more than one), `image_seq_length` features each."""
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
    )
    processor_class = image_only_processor_class(InternVLProcessor)
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=INTERNVL_TEMPLATE,
    )


def _draw(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """`norms_near_one`, with the vision layers' scales (`lambda_1`, `lambda_2`) 0.1 + N(0, 0.01²)."""
    if "lambda" in name and not is_norm_weight(name):
        return 0.1 + 0.01 * torch.randn(shape, generator=generator)
    return norms_near_one(name, shape, generator)


def write_tiny_internvl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    tile: int = 28,
    patch_size: int = 7,
    max_patches: int = 4,
) -> Path:
    """Write a tiny `InternVLForConditionalGeneration` checkpoint into `out_dir` and return it."""
    tokenizer = build_internvl_tokenizer()
    downsample_ratio = 0.5
    image_seq_length = int((tile // patch_size * downsample_ratio) ** 2)
    vision = InternVLVisionConfig(**TINY_TOWER, image_size=[tile, tile], patch_size=[patch_size, patch_size])
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        bos_token_id=token_id(tokenizer, "<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=token_id(tokenizer, "<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    processor = internvl_processor(
        tokenizer, tile=tile, max_patches=max_patches, image_seq_length=image_seq_length
    )
    return save_tiny_checkpoint(
        out_dir,
        InternVLForConditionalGeneration,
        config,
        tokenizer=tokenizer,
        processor=processor,
        seed=seed,
        draw=_draw,
    )


__all__ = [
    "INTERNVL_NAMED_TOKENS",
    "INTERNVL_TEMPLATE",
    "build_internvl_tokenizer",
    "internvl_processor",
    "write_tiny_internvl",
]
