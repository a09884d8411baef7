"""Tiny random SmolVLM checkpoints, written offline.

The directory holds what a real checkpoint holds: `config.json` from the family's own config classes
(`SmolVLMConfig` with a `SmolVLMVisionConfig` tower and a `LlamaConfig` decoder, as SmolLM2 is),
seeded random weights, a byte-level BPE tokenizer with SmolVLM's special tokens (BOS `<|im_start|>`,
EOS `<end_of_utterance>`, pad `<|im_end|>`, the Idefics3 frame tokens and `<video>`), the chat
template transformers ships for SmolVLM (`processing_smolvlm.DEFAULT_CHAT_TEMPLATE`, SmolVLM2's) and
its processor with the PIL `SmolVLMImageProcessorPil`, saved with `save_pretrained` as
`SmolVLMProcessor` for images only (`vistrace.adapters.idefics3.smolvlm_image_only_processor_class`:
SmolVLM's full processor needs torchvision and num2words). `AutoModelForImageTextToText` and the
SmolVLM adapter's `load_processor` load it without either.

The structure follows SmolVLM-256M/500M at a tiny size (real: 512-px squares, 16-px patches, scale
factor 4 → 8 × 8 = 64 features per square; `size["longest_edge"]` = 4 × 512): here 64-px squares,
4-px patches, scale factor 4 → 4 × 4 = 16 features per square, `size["longest_edge"]` = 2 × 64, so an
image becomes at most 2 × 2 squares plus the global image.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import processors
from transformers import (
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

from vistrace.adapters.idefics3 import smolvlm_image_only_processor_class
from vistrace.models.tiny_checkpoint import (
    token_id,
)
from vistrace.models.tiny_idefics3 import (
    IDEFICS3_SPECIAL_TOKENS,
    SQUARE_CORPUS,
    square_processor,
    write_square_checkpoint,
)
from vistrace.models.tokenizer_build import build_tokenizer

# SmolLM2's chat delimiters, then the added tokens of the SmolVLM tokenizer.
SMOLVLM_SPECIAL_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", *IDEFICS3_SPECIAL_TOKENS, "<video>")


def build_smolvlm_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with `SMOLVLM_SPECIAL_TOKENS` after the BPE vocabulary; BOS
    `<|im_start|>` (the chat template writes it, so prompts are tokenised without adding it), EOS
    `<end_of_utterance>`, pad `<|im_end|>`."""
    tokenizer = build_tokenizer(
        SQUARE_CORPUS, style="llama3", vocab_size=400, extra_special_tokens=list(SMOLVLM_SPECIAL_TOKENS)
    )
    bos = "<|im_start|>"
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, token_id(tokenizer, bos))]
    )
    tokenizer.bos_token = bos
    tokenizer.eos_token = "<end_of_utterance>"
    tokenizer.pad_token = "<|im_end|>"
    return tokenizer


def smolvlm_processor(
    tokenizer: PreTrainedTokenizerFast, *, square: int, patch_size: int, scale_factor: int, squares: int
) -> object:
    """SmolVLM's processor for images only (`square_processor`, the PIL `SmolVLMImageProcessorPil`)."""
    return square_processor(
        smolvlm_image_only_processor_class(),
        SmolVLMImageProcessorPil,
        tokenizer,
        DEFAULT_CHAT_TEMPLATE,
        square=square,
        patch_size=patch_size,
        scale_factor=scale_factor,
        squares=squares,
    )


def write_tiny_smolvlm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    square: int = 64,
    patch_size: int = 4,
    scale_factor: int = 4,
    squares: int = 2,
) -> Path:
    """Write a tiny `SmolVLMForConditionalGeneration` checkpoint into `out_dir` and return it."""
    tokenizer = build_smolvlm_tokenizer()
    processor = smolvlm_processor(
        tokenizer, square=square, patch_size=patch_size, scale_factor=scale_factor, squares=squares
    )
    return write_square_checkpoint(
        out_dir,
        (SmolVLMForConditionalGeneration, SmolVLMConfig, SmolVLMVisionConfig),
        tokenizer,
        processor,
        seed=seed,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        square=square,
        patch_size=patch_size,
        scale_factor=scale_factor,
    )


__all__ = [
    "SMOLVLM_SPECIAL_TOKENS",
    "build_smolvlm_tokenizer",
    "smolvlm_processor",
    "write_tiny_smolvlm",
]
