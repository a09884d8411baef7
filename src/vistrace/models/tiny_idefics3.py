"""Tiny random Idefics3 checkpoints, written offline.

The directory holds what a real checkpoint holds: `config.json` from the family's own config classes
(`Idefics3Config` with an `Idefics3VisionConfig` tower and a `LlamaConfig` decoder), seeded random
weights, a byte-level BPE tokenizer with the Idefics3 special tokens (`<fake_token_around_image>`,
`<image>`, `<end_of_utterance>`, `<global-img>`, `<row_r_col_c>` for r, c in 1…6), the chat template
of Idefics3-8B-Llama3 (`chat_template.json`) and its processor (`Idefics3Processor` with the PIL
`Idefics3ImageProcessorPil`) saved with `save_pretrained`. `AutoModelForImageTextToText` and
`AutoProcessor` load it without torchvision.

The structure follows the real model at a tiny size (real: 364-px squares, 14-px patches, scale
factor 2 → 169 features per square; `size["longest_edge"]` = 4 × 364): here 42-px squares, 7-px
patches, scale factor 2 → 3 × 3 = 9 features per square, `size["longest_edge"]` = 2 × 42, so an
image becomes at most 2 × 2 squares plus the global image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

from vistrace.models.tiny_checkpoint import (
    PROMPT_SENTENCES,
    TINY_TOWER,
    llama_text_config,
    save_tiny_checkpoint,
    token_id,
)
from vistrace.models.tokenizer_build import build_tokenizer

# The added tokens of the Idefics3 tokenizer (`added_tokens.json` of Idefics3-8B-Llama3).
IDEFICS3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)

# The chat template of Idefics3-8B-Llama3 (`chat_template.json`), verbatim.
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SQUARE_CORPUS = [
    "User: Assistant: System:",
    *PROMPT_SENTENCES,
    "Read the text in the image carefully. Describe the picture. rather silver the red car a cat.\n\n",
]


def build_idefics3_tokenizer() -> PreTrainedTokenizerFast:
    """A small Llama-3-style byte-level BPE tokenizer with `IDEFICS3_SPECIAL_TOKENS` after the BPE
    vocabulary; BOS `<|begin_of_text|>`, EOS `<end_of_utterance>` (the generation config's EOS)."""
    tokenizer = build_tokenizer(
        SQUARE_CORPUS, style="llama3", vocab_size=400, extra_special_tokens=list(IDEFICS3_SPECIAL_TOKENS)
    )
    tokenizer.eos_token = "<end_of_utterance>"
    return tokenizer


def square_processor(
    processor_class: type[Any],
    image_processor_class: type[Any],
    tokenizer: PreTrainedTokenizerFast,
    template: str,
    *,
    square: int,
    patch_size: int,
    scale_factor: int,
    squares: int,
) -> Any:
    """A processor of the Idefics3 kind: resize the long side to `squares × square` px, split into
    `square`-px squares plus the global image; `(square / patch_size / scale_factor)²` `<image>`
    tokens each."""
    image_processor = image_processor_class(
        size={"longest_edge": squares * square},
        max_image_size={"longest_edge": square},
        do_image_splitting=True,
    )
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(square // patch_size // scale_factor) ** 2,
        chat_template=template,
    )


def idefics3_processor(
    tokenizer: PreTrainedTokenizerFast, *, square: int, patch_size: int, scale_factor: int, squares: int
) -> Idefics3Processor:
    """Idefics3's processor (`square_processor`, the PIL `Idefics3ImageProcessorPil`)."""
    return square_processor(
        Idefics3Processor,
        Idefics3ImageProcessorPil,
        tokenizer,
        IDEFICS3_TEMPLATE,
        square=square,
        patch_size=patch_size,
        scale_factor=scale_factor,
        squares=squares,
    )


def write_square_checkpoint(
    out_dir: str | Path,
    classes: tuple[type[Any], type[Any], type[Any]],
    tokenizer: PreTrainedTokenizerFast,
    processor: Any,
    *,
    seed: int,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    square: int,
    patch_size: int,
    scale_factor: int,
) -> Path:
    """Write a tiny checkpoint of the Idefics3 kind: `classes` = (model, config, vision config), a
    tiny vision tower on `square`-px squares, a Llama decoder, `<image>` as the image token."""
    model_class, config_class, vision_class = classes
    vision = vision_class(**TINY_TOWER, image_size=square, patch_size=patch_size)
    text = llama_text_config(
        tokenizer,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        max_position_embeddings=1024,
    )
    config = config_class(
        vision_config=vision,
        text_config=text,
        scale_factor=scale_factor,
        image_token_id=token_id(tokenizer, "<image>"),
    )
    return save_tiny_checkpoint(
        out_dir, model_class, config, tokenizer=tokenizer, processor=processor, seed=seed
    )


def write_tiny_idefics3(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    square: int = 42,
    patch_size: int = 7,
    scale_factor: int = 2,
    squares: int = 2,
) -> Path:
    """Write a tiny `Idefics3ForConditionalGeneration` checkpoint into `out_dir` and return it."""
    tokenizer = build_idefics3_tokenizer()
    processor = idefics3_processor(
        tokenizer, square=square, patch_size=patch_size, scale_factor=scale_factor, squares=squares
    )
    return write_square_checkpoint(
        out_dir,
        (Idefics3ForConditionalGeneration, Idefics3Config, Idefics3VisionConfig),
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
    "IDEFICS3_SPECIAL_TOKENS",
    "IDEFICS3_TEMPLATE",
    "SQUARE_CORPUS",
    "build_idefics3_tokenizer",
    "idefics3_processor",
    "square_processor",
    "write_square_checkpoint",
    "write_tiny_idefics3",
]
