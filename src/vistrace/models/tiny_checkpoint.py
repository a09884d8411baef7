"""What every tiny checkpoint writer does once its config, tokenizer and processor are built: seed
and build the model, re-draw its weights so that attention is far from uniform, point the generation
config at the tokenizer's end and padding tokens, and save model and processor side by side.

Also the pieces several families share: the Llama-2-style tokenizer of the LLaVA-type checkpoints, a
Llama decoder config and the width of the tiny vision towers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import torch
from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from vistrace.models.tokenizer_build import build_tokenizer

# One parameter's new value from its name, shape and the seeded generator.
Draw = Callable[[str, torch.Size, torch.Generator], torch.Tensor]

WEIGHT_STD = 0.2


class TowerSize(TypedDict):
    """The size fields of a vision tower config."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int


# The vision towers of the tiny checkpoints: 16 wide, a 32-wide MLP, 2 layers of 2 heads.
TINY_TOWER: TowerSize = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}

# The prompts and answers every tiny tokenizer is trained on; each family adds its chat words.
PROMPT_SENTENCES = [
    "Look at the image carefully and answer this visual question.",
    "For yes/no questions, just respond Yes or No. If the answer is numeric, just respond with the number.",
    "What color is the circle? red green blue yellow. What shape is the blue object? square triangle circle.",
    "How many shapes are there? one two three 1 2 3. Where is the triangle? left right top bottom.",
    "Is there a red square? yes no Yes No. The answer is wrong. The answer is correct.",
    "Generate the feedback given initial answer referring to question and image.",
    "Adjust the initial response considering the feedback and image. Question: Initial answer: Feedback:",
    "Answer with the option's letter from the given choices directly. A. B.",
]
# The tokenizer corpus of the LLaVA, LLaVA-NeXT and Mllama checkpoints.
LLAMA_CORPUS = [
    *PROMPT_SENTENCES,
    "A chat between a curious human and an artificial intelligence assistant. USER: ASSISTANT:",
    "user assistant system rather silver the red car a cat on the mat.",
]


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of one token of `tokenizer`'s vocabulary."""
    return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]


def llava_tokenizer() -> PreTrainedTokenizerFast:
    """The Llama-2-style tokenizer of the LLaVA and LLaVA-NeXT checkpoints, `<image>` added."""
    return build_tokenizer(LLAMA_CORPUS, style="llama2", vocab_size=300, extra_special_tokens=["<image>"])


def llama_text_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
) -> LlamaConfig:
    """A Llama decoder over `tokenizer`'s vocabulary and special tokens (MLP 2 × hidden by default),
    untied head."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def is_norm_weight(name: str) -> bool:
    """Whether parameter `name` is the weight of a module whose name contains "norm"."""
    return "norm" in name.split(".")[-2] and name.endswith("weight")


def norms_near_one(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Normalisation weights 1 + N(0, 0.1²), everything else N(0, `WEIGHT_STD`²)."""
    if is_norm_weight(name):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    return WEIGHT_STD * torch.randn(shape, generator=generator)


def open_gates(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Every gate U(0.5, 1) so that it is open; norm weights 1 + N(0, 0.1²); else N(0, `WEIGHT_STD`²)."""
    if "gate" in name:
        return 0.5 + 0.5 * torch.rand(shape, generator=generator)
    if name.endswith("norm.weight") or ("layernorm" in name and name.endswith("weight")):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    return WEIGHT_STD * torch.randn(shape, generator=generator)


def randomize(model: PreTrainedModel, seed: int, draw: Draw = norms_near_one) -> None:
    """Re-draw every parameter of `model`, in order, from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(draw(name, param.shape, generator))


def save_tiny_checkpoint(
    out_dir: str | Path,
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    *,
    tokenizer: PreTrainedTokenizerFast,
    processor: Any,
    seed: int,
    draw: Draw = norms_near_one,
    eos_token_id: int | list[int] | None = None,
) -> Path:
    """Build `model_class(config)` under `seed`, re-draw its weights (`randomize` with `draw`), set
    the generation config's EOS (default: the tokenizer's) and padding token, and save the model and
    `processor` into `out_dir`; returns it."""
    out = Path(out_dir)
    torch.manual_seed(seed)
    model = model_class(config)
    randomize(model, seed, draw)
    model.generation_config.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


__all__ = [
    "LLAMA_CORPUS",
    "PROMPT_SENTENCES",
    "TINY_TOWER",
    "WEIGHT_STD",
    "Draw",
    "TowerSize",
    "is_norm_weight",
    "llama_text_config",
    "llava_tokenizer",
    "norms_near_one",
    "open_gates",
    "randomize",
    "save_tiny_checkpoint",
    "token_id",
]
