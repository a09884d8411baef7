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

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

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

_CORPUS = [
    "User: Assistant: System:",
    "Look at the image carefully and answer this visual question.",
    "For yes/no questions, just respond Yes or No. If the answer is numeric, just respond with the number.",
    "What color is the circle? red green blue yellow. What shape is the blue object? square triangle circle.",
    "How many shapes are there? one two three 1 2 3. Where is the triangle? left right top bottom.",
    "Is there a red square? yes no Yes No. The answer is wrong. The answer is correct.",
    "Generate the feedback given initial answer referring to question and image.",
    "Adjust the initial response considering the feedback and image. Question: Initial answer: Feedback:",
    "Answer with the option's letter from the given choices directly. A. B.",
    "Read the text in the image carefully. Describe the picture. rather silver the red car a cat.\n\n",
]


def build_idefics3_tokenizer() -> PreTrainedTokenizerFast:
    """A small Llama-3-style byte-level BPE tokenizer with `IDEFICS3_SPECIAL_TOKENS` after the BPE
    vocabulary; BOS `<|begin_of_text|>`, EOS `<end_of_utterance>` (the generation config's EOS)."""
    tokenizer = build_tokenizer(
        _CORPUS, style="llama3", vocab_size=400, extra_special_tokens=list(IDEFICS3_SPECIAL_TOKENS)
    )
    tokenizer.eos_token = "<end_of_utterance>"
    return tokenizer


def idefics3_processor(
    tokenizer: PreTrainedTokenizerFast, *, square: int, patch_size: int, scale_factor: int, squares: int
) -> Idefics3Processor:
    """Idefics3's processor: resize the long side to `squares × square` px, split into `square`-px
    squares plus the global image; `(square / patch_size / scale_factor)²` `<image>` tokens each."""
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": squares * square},
        max_image_size={"longest_edge": square},
        do_image_splitting=True,
    )
    image_seq_len = (square // patch_size // scale_factor) ** 2
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_TEMPLATE,
    )


def _randomize(model: PreTrainedModel, seed: int, std: float) -> None:
    """Re-draw every parameter: normalisation weights near 1, everything else N(0, std²)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.split(".")[-2] and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(std * torch.randn(param.shape, generator=generator))


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
    out = Path(out_dir)
    tokenizer = build_idefics3_tokenizer()
    image_token_id = int(tokenizer.convert_tokens_to_ids("<image>"))  # type: ignore[arg-type]
    vision = Idefics3VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=square,
        patch_size=patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=scale_factor,
        image_token_id=image_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    _randomize(model, seed, std=0.2)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor = idefics3_processor(
        tokenizer, square=square, patch_size=patch_size, scale_factor=scale_factor, squares=squares
    )
    processor.save_pretrained(out)
    return out


__all__ = [
    "IDEFICS3_SPECIAL_TOKENS",
    "IDEFICS3_TEMPLATE",
    "build_idefics3_tokenizer",
    "idefics3_processor",
    "write_tiny_idefics3",
]
