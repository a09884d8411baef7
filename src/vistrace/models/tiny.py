"""Complete tiny checkpoint directories (config, seeded random weights, tokenizer, chat template,
image processor) for every supported family.

They let tests and `vistrace check` exercise the real `from_pretrained` + processor path offline.
The shapes mimic the real models at a tiny width: LLaVA has a CLIP tower whose patches become inline
image positions; Mllama keeps the real pattern of cross-attention layers (every 5th from 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig

from vistrace.models.tiny_checkpoint import (
    LLAMA_CORPUS,
    TINY_TOWER,
    llama_text_config,
    llava_tokenizer,
    open_gates,
    save_tiny_checkpoint,
    token_id,
)
from vistrace.models.tiny_gemma3 import write_tiny_gemma3
from vistrace.models.tiny_idefics3 import write_tiny_idefics3
from vistrace.models.tiny_internvl import write_tiny_internvl
from vistrace.models.tiny_llava_next import write_tiny_llava_next, write_tiny_llava_onevision
from vistrace.models.tiny_qwen import QWEN_FAMILIES, write_tiny_qwen
from vistrace.models.tiny_smolvlm import write_tiny_smolvlm
from vistrace.models.tokenizer_build import (
    LLAMA3_VISION_TEMPLATE,
    VICUNA_V1_TEMPLATE,
    build_tokenizer,
)

Family = Literal[
    "llava",
    "mllama",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava_next",
    "llava_onevision",
    "idefics3",
    "internvl",
    "gemma3",
    "smolvlm",
]
# Families whose tiny checkpoints every family-parametrized test runs on (the seam, knockout, capture,
# lens, compat and `vistrace check` tests), on the newest and the oldest supported transformers.
FAMILIES: tuple[Family, ...] = (
    "llava",
    "mllama",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava_next",
    "llava_onevision",
    "internvl",
    "idefics3",
    "gemma3",
)
# Every family `write_tiny` writes: SmolVLM shares Idefics3's adapter and is tested in its own file.
TINY_FAMILIES: tuple[Family, ...] = (*FAMILIES, "smolvlm")


def llava_config(
    vision: CLIPVisionConfig, text: LlamaConfig, *, image_token_id: int, image_size: int, patch_size: int
) -> LlavaConfig:
    """LLaVA-1.5's wiring of a CLIP tower and a Llama decoder: features of the penultimate vision
    layer, CLS dropped, a two-layer GELU projector; (image_size / patch_size)² inline positions."""
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(image_size // patch_size) ** 2,
        projector_hidden_act="gelu",
    )


def llava_processor(
    tokenizer: PreTrainedTokenizerFast, *, image_size: int, patch_size: int
) -> LlavaProcessor:
    """LLaVA-1.5's processor at ``image_size``: pad to a square, resize, centre-crop; the Vicuna-v1
    chat template."""
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_pad=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VICUNA_V1_TEMPLATE,
    )


def mllama_processor(
    tokenizer: PreTrainedTokenizerFast, *, tile_size: int, max_tiles: int
) -> MllamaProcessor:
    """Llama-3.2-Vision's processor with ``tile_size``-px tiles (up to ``max_tiles``) and the Llama-3
    chat template."""
    image_processor = MllamaImageProcessorPil(
        size={"height": tile_size, "width": tile_size}, max_image_tiles=max_tiles
    )
    return MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAMA3_VISION_TEMPLATE
    )


def write_tiny_llava(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    image_size: int = 56,
    patch_size: int = 14,
    hidden_size: int = 32,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
) -> Path:
    """Write a tiny `LlavaForConditionalGeneration` checkpoint (Vicuna-v1 chat template, CLIP tower).

    One image becomes (image_size / patch_size)² inline positions (16 by default, a 4×4 grid).
    """
    tokenizer = llava_tokenizer()
    vision = CLIPVisionConfig(**TINY_TOWER, image_size=image_size, patch_size=patch_size, projection_dim=16)
    text = llama_text_config(
        tokenizer,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
    )
    image_token_id = token_id(tokenizer, "<image>")
    config = llava_config(
        vision, text, image_token_id=image_token_id, image_size=image_size, patch_size=patch_size
    )
    processor = llava_processor(tokenizer, image_size=image_size, patch_size=patch_size)
    return save_tiny_checkpoint(
        out_dir,
        LlavaForConditionalGeneration,
        config,
        tokenizer=tokenizer,
        processor=processor,
        seed=seed,
        draw=open_gates,
    )


def write_tiny_mllama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 10,
    cross_attention_every: int = 5,
    tile_size: int = 28,
    max_num_tiles: int = 2,
    hidden_size: int = 32,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
) -> Path:
    """Write a tiny `MllamaForConditionalGeneration` checkpoint (Llama-3 chat template).

    Cross-attention layers sit at 3, 3 + every, … as in Llama-3.2-Vision; each tile gives
    (tile_size / 14)² patches + 1 CLS vision tokens (5 by default).
    """
    tokenizer = build_tokenizer(
        LLAMA_CORPUS, style="llama3", vocab_size=400, extra_special_tokens=["<|image|>"]
    )
    image_token_id = token_id(tokenizer, "<|image|>")
    vocab_size = (
        image_token_id  # the image token is the first of the extra embedding rows, as in the real model
    )
    vision_hidden = 16
    intermediate_indices = [0, 2]
    vision = MllamaVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=32,
        num_hidden_layers=3,
        num_global_layers=1,
        attention_heads=2,
        image_size=tile_size,
        patch_size=14,
        max_num_tiles=max_num_tiles,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
        intermediate_layers_indices=intermediate_indices,
        vision_output_dim=vision_hidden * (1 + len(intermediate_indices)),
    )
    text = MllamaTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        cross_attention_layers=list(range(3, num_layers, cross_attention_every)),
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id)
    processor = mllama_processor(tokenizer, tile_size=tile_size, max_tiles=max_num_tiles)
    return save_tiny_checkpoint(
        out_dir,
        MllamaForConditionalGeneration,
        config,
        tokenizer=tokenizer,
        processor=processor,
        seed=seed,
        draw=open_gates,
    )


def write_tiny(family: Family, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny checkpoint of `family` into `out_dir` and return it."""
    if family == "llava":
        return write_tiny_llava(out_dir, seed=seed)
    if family == "mllama":
        return write_tiny_mllama(out_dir, seed=seed)
    if family in QWEN_FAMILIES:
        return write_tiny_qwen(family, out_dir, seed=seed)
    if family == "llava_next":
        return write_tiny_llava_next(out_dir, seed=seed)
    if family == "llava_onevision":
        return write_tiny_llava_onevision(out_dir, seed=seed)
    if family == "idefics3":
        return write_tiny_idefics3(out_dir, seed=seed)
    if family == "internvl":
        return write_tiny_internvl(out_dir, seed=seed)
    if family == "gemma3":
        return write_tiny_gemma3(out_dir, seed=seed)
    if family == "smolvlm":
        return write_tiny_smolvlm(out_dir, seed=seed)
    raise ValueError(f"unknown family {family!r}; tiny checkpoints exist for: {', '.join(TINY_FAMILIES)}")
