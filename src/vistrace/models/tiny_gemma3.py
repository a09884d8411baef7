"""Tiny random Gemma 3 (`gemma3`, `Gemma3ForConditionalGeneration`) checkpoints, written offline.

The directory holds what a real Gemma 3 checkpoint holds, at a tiny size: `config.json` from
`Gemma3Config` (a SigLIP vision tower without head, a `Gemma3TextConfig` decoder mixing
sliding-window and global layers), seeded random weights, a `GemmaTokenizer` (BPE, "▁" for spaces,
no dummy prefix, BOS added) trained offline with the Gemma 3 special tokens named as the real
tokenizer config names them (`boi_token`, `eoi_token`, `image_token`), the released Gemma 3 chat
template, and a `Gemma3Processor` with the PIL `Gemma3ImageProcessorPil` (no torchvision needed).

Real (gemma-3-4b-it): 896-px images, 14-px patches (64 × 64), average-pooled 4 × 4 into
`mm_tokens_per_image` = 256 soft tokens (16 × 16); sliding window 1024 on 5 of every 6 layers.
Here: 56-px images, 7-px patches (8 × 8), pooled 2 × 2 into 16 soft tokens (4 × 4); sliding window
20 on layers 0 and 2 of 4 (layers 1 and 3 global). A one-image prompt (~33 tokens) is longer than the
window, so a cache built from the config drops keys and the last rows of the sliding layers do not
see the whole image; every image row still sees the template before the image (as in the released
models, whose window is far longer than the 256-token block). `query_pre_attn_scalar` differs from
`head_dim` (as in Gemma-3-27B) so that an attention path using head_dim ** -0.5 instead of the
module's `scaling` shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaTokenizer,
    SiglipVisionConfig,
)

from vistrace.models.tiny_checkpoint import PROMPT_SENTENCES, TINY_TOWER, WEIGHT_STD, save_tiny_checkpoint

# The released Gemma 3 chat template (google/gemma-3-*-it), verbatim.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# Gemma's first ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4 (as `GemmaTokenizer` numbers them).
GEMMA_BASE_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
GEMMA3_TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
# The tokens the real tokenizer config names (`extra_special_tokens`): Gemma3Processor reads
# `tokenizer.boi_token`, `.eoi_token`, `.image_token` and their `_id`s.
GEMMA3_NAMED_TOKENS: dict[str, str] = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}

_CORPUS = [
    *PROMPT_SENTENCES,
    "Here is the original image and here are some crops to help you see better",
    "user\nmodel\n\n\n\nuser model the red car a cat on the mat.\n\n",
]


def build_gemma3_tokenizer(vocab_size: int = 400) -> GemmaTokenizer:
    """A tiny `GemmaTokenizer`: BPE trained offline on a small corpus through Gemma's own pipeline
    (spaces normalised to "▁", no pre-tokenisation, no dummy prefix), BOS added by the tokenizer,
    the Gemma 3 turn and image tokens added as special tokens and named as the real config names
    them."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Replace(" ", "▁")
    trained.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(GEMMA_BASE_SPECIALS),
        initial_alphabet=["\n", "▁"],
        show_progress=False,
    )
    trained.train_from_iterator(_CORPUS, trainer=trainer)
    state = json.loads(trained.to_str())["model"]
    vocab: dict[str, int] = state["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(str(m).split(" ")) for m in state["merges"]]
    extra = [*GEMMA3_TURN_TOKENS, *GEMMA3_NAMED_TOKENS.values()]
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        # The tokenizers BPE takes (left, right) pairs; transformers' annotation says strings.
        merges=merges,  # type: ignore[arg-type]
        extra_special_tokens=extra,
        model_specific_special_tokens=dict(GEMMA3_NAMED_TOKENS),
    )
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _token_id(tokenizer: GemmaTokenizer, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]


def gemma3_processor(tokenizer: GemmaTokenizer, *, image_size: int, image_seq_length: int) -> Gemma3Processor:
    """Gemma 3's processor: images resized (stretched) to `image_size`², normalised with mean = std
    = 0.5; pan-and-scan settings saved with crops of at least `image_size` px (real: 256) so that a
    tiny image can be cropped when a call passes `do_pan_and_scan=True` (the processor's own
    defaults win over these saved ones)."""
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_pan_and_scan=False,
        pan_and_scan_min_crop_size=image_size,
        pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=GEMMA3_TEMPLATE,
    )


def gemma_draw(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Gemma's RMSNorm multiplies by (1 + weight) and its projector norm starts at zero, so decoder
    and projector norm weights are drawn around 0, SigLIP's LayerNorm weights around 1, norm biases
    0, everything else N(0, `WEIGHT_STD`²)."""
    if "norm" in name and name.endswith("weight"):
        centre = 1.0 if "vision_tower" in name else 0.0
        return centre + 0.1 * torch.randn(shape, generator=generator)
    if "norm" in name and name.endswith("bias"):
        return torch.zeros(shape)
    return WEIGHT_STD * torch.randn(shape, generator=generator)


def gemma3_config(
    tokenizer: GemmaTokenizer,
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    query_pre_attn_scalar: int,
    sliding_window: int,
    image_size: int,
    patch_size: int,
    mm_tokens_per_image: int,
) -> Gemma3Config:
    """Gemma 3's wiring at a tiny size: even layers sliding-window, odd layers global."""
    vision = SiglipVisionConfig(
        **TINY_TOWER, image_size=image_size, patch_size=patch_size, vision_use_head=False
    )
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=query_pre_attn_scalar,
        sliding_window=sliding_window,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)],
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    ids = {name: _token_id(tokenizer, token) for name, token in GEMMA3_NAMED_TOKENS.items()}
    return Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=mm_tokens_per_image,
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )


def write_tiny_gemma3(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    query_pre_attn_scalar: int = 24,
    sliding_window: int = 20,
    image_size: int = 56,
    patch_size: int = 7,
    mm_tokens_per_image: int = 16,
) -> Path:
    """Write a tiny `Gemma3ForConditionalGeneration` checkpoint into `out_dir` and return it."""
    tokenizer = build_gemma3_tokenizer()
    config = gemma3_config(
        tokenizer,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=query_pre_attn_scalar,
        sliding_window=sliding_window,
        image_size=image_size,
        patch_size=patch_size,
        mm_tokens_per_image=mm_tokens_per_image,
    )
    processor = gemma3_processor(tokenizer, image_size=image_size, image_seq_length=mm_tokens_per_image)
    return save_tiny_checkpoint(
        out_dir,
        Gemma3ForConditionalGeneration,
        config,
        tokenizer=tokenizer,
        processor=processor,
        seed=seed,
        draw=gemma_draw,
        eos_token_id=[int(tokenizer.eos_token_id), _token_id(tokenizer, "<end_of_turn>")],
    )


__all__ = [
    "GEMMA3_TEMPLATE",
    "build_gemma3_tokenizer",
    "gemma3_config",
    "gemma3_processor",
    "gemma_draw",
    "write_tiny_gemma3",
]
