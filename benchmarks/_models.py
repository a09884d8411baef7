"""Random-weight LLaVA-1.5 and Llama-3.2-Vision (Mllama) models for the benchmarks, built in memory.

`LLAVA_1_5_7B` and `LLAMA_3_2_11B_VISION` are the real configurations (7.06 B and 10.67 B
parameters); `narrow` keeps a model's image geometry and layer pattern at a small width, and `TINY`
holds look-alikes of the same structure that run on a CPU in seconds. `build` makes the model directly
on the target device in the target dtype (no checkpoint is written or read) with an offline tokenizer
and the family's real processor settings (vistrace.models.tiny's helpers at the given image size).

The tokenizer is a small BPE trained on the benchmark's own prompt, so prompt lengths are close to a
Llama tokenizer's (about one token per word); its ids, the image token's included, are small numbers
inside the real vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageDraw
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    MllamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig

from vistrace.adapters import get_adapter
from vistrace.adapters.mllama_vision import use_reference_vision_features
from vistrace.data.prompts import vqav2_prompt
from vistrace.models.loading import LoadedModel
from vistrace.models.tiny import llava_config, llava_processor, mllama_processor
from vistrace.models.tokenizer_build import VICUNA_V1_SYSTEM, build_tokenizer

Family = Literal["llava", "mllama"]
FAMILIES: tuple[Family, ...] = ("llava", "mllama")

PROMPT = vqav2_prompt("What color is the circle?")
ANSWER = "red circle"  # two tokens: the knockout sweeps score a 2-token answer
_MLLAMA_ASPECT_RATIOS = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]


@dataclass(frozen=True)
class LlavaSizes:
    """LLaVA-1.5: a Llama-2 decoder, a CLIP tower (penultimate layer, CLS dropped), a two-layer GELU
    projector; one image is (image_size / patch_size)² inline positions. `vocab_size` None: the
    tokenizer's size."""

    name: str
    text_layers: int = 32
    text_hidden: int = 4096
    text_heads: int = 32
    text_intermediate: int = 11008
    vocab_size: int | None = 32000
    vision_layers: int = 24
    vision_hidden: int = 1024
    vision_heads: int = 16
    vision_intermediate: int = 4096
    image_size: int = 336
    patch_size: int = 14

    family: Family = "llava"

    @property
    def image_keys(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def captured_layers(self) -> int:
        return self.text_layers

    @property
    def image_pixels(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)


@dataclass(frozen=True)
class MllamaSizes:
    """Llama-3.2-Vision: a decoder whose cross-attention layers sit every 5th from layer 3, a vision
    tower of local and global layers over up to `max_tiles` tiles of (tile / patch)² patches + CLS;
    image keys = max_tiles × that, padding tiles included. `vocab_size` None: the image token's id
    (the first of the 8 extra embedding rows, as in the real model)."""

    name: str
    text_layers: int = 40
    text_hidden: int = 4096
    text_heads: int = 32
    text_kv_heads: int = 8
    text_intermediate: int = 14336
    vocab_size: int | None = 128256
    vision_layers: int = 32
    vision_global_layers: int = 8
    vision_hidden: int = 1280
    vision_heads: int = 16
    vision_intermediate: int = 5120
    intermediate_layers: tuple[int, ...] = (3, 7, 15, 23, 30)
    tile_size: int = 560
    patch_size: int = 14
    max_tiles: int = 4

    family: Family = "mllama"

    @property
    def cross_attention_layers(self) -> list[int]:
        return list(range(3, self.text_layers, 5))

    @property
    def image_keys(self) -> int:
        return self.max_tiles * ((self.tile_size // self.patch_size) ** 2 + 1)

    @property
    def captured_layers(self) -> int:
        return len(self.cross_attention_layers)

    @property
    def image_pixels(self) -> tuple[int, int]:
        """A square image of 2 × 2 tiles: every one of the 4 tiles holds image, none is padding."""
        return (2 * self.tile_size, 2 * self.tile_size)


Sizes = LlavaSizes | MllamaSizes

LLAVA_1_5_7B = LlavaSizes("LLaVA-1.5-7B")
LLAMA_3_2_11B_VISION = MllamaSizes("Llama-3.2-11B-Vision")
REAL: dict[Family, Sizes] = {"llava": LLAVA_1_5_7B, "mllama": LLAMA_3_2_11B_VISION}
TINY: dict[Family, Sizes] = {
    "llava": LlavaSizes(
        "tiny LLaVA",
        text_layers=4,
        text_hidden=32,
        text_heads=4,
        text_intermediate=64,
        vocab_size=None,
        vision_layers=2,
        vision_hidden=16,
        vision_heads=2,
        vision_intermediate=32,
        image_size=56,
    ),
    "mllama": MllamaSizes(
        "tiny Mllama",
        text_layers=10,
        text_hidden=32,
        text_heads=4,
        text_kv_heads=2,
        text_intermediate=64,
        vocab_size=None,
        vision_layers=3,
        vision_global_layers=1,
        vision_hidden=16,
        vision_heads=2,
        vision_intermediate=32,
        intermediate_layers=(0, 2),
        tile_size=28,
    ),
}


def narrow(family: Family, *, text_layers: int, text_hidden: int, text_heads: int) -> Sizes:
    """The real model's image geometry (576 inline positions; 4 tiles × 1601 keys) and layer
    pattern at a small width: a small vision tower, the decoder `text_layers` deep and
    `text_hidden` wide, the vocabulary the tokenizer's."""
    real = REAL[family]
    if isinstance(real, MllamaSizes):
        return dataclasses.replace(
            real,
            name=f"Mllama, {text_layers} layers, hidden {text_hidden}",
            text_layers=text_layers,
            text_hidden=text_hidden,
            text_kv_heads=max(1, text_heads // 4),
            text_intermediate=2 * text_hidden,
            vocab_size=None,
            vision_layers=2,
            vision_global_layers=1,
            vision_hidden=32,
            vision_heads=2,
            vision_intermediate=64,
            intermediate_layers=(0,),
            text_heads=text_heads,
        )
    return dataclasses.replace(
        real,
        name=f"LLaVA, {text_layers} layers, hidden {text_hidden}",
        text_layers=text_layers,
        text_hidden=text_hidden,
        text_intermediate=2 * text_hidden,
        vocab_size=None,
        vision_layers=2,
        vision_hidden=32,
        vision_heads=2,
        vision_intermediate=64,
        text_heads=text_heads,
    )


def benchmark_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    """A Llama-2-style (LLaVA) or Llama-3-style (Mllama) BPE that knows the benchmark's words."""
    corpus = [VICUNA_V1_SYSTEM, PROMPT, ANSWER, "user assistant system USER: ASSISTANT:"]
    style: Literal["llama2", "llama3"] = "llama2" if family == "llava" else "llama3"
    image_token = "<image>" if family == "llava" else "<|image|>"
    return build_tokenizer(corpus, style=style, vocab_size=1024, extra_special_tokens=[image_token])


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]


def model_config(sizes: Sizes, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig | MllamaConfig:
    """The transformers config of `sizes`, special tokens from `tokenizer`."""
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
    }
    if isinstance(sizes, LlavaSizes):
        vision = CLIPVisionConfig(
            hidden_size=sizes.vision_hidden,
            intermediate_size=sizes.vision_intermediate,
            num_hidden_layers=sizes.vision_layers,
            num_attention_heads=sizes.vision_heads,
            image_size=sizes.image_size,
            patch_size=sizes.patch_size,
            projection_dim=768,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )
        text = LlamaConfig(
            vocab_size=sizes.vocab_size or len(tokenizer),
            hidden_size=sizes.text_hidden,
            intermediate_size=sizes.text_intermediate,
            num_hidden_layers=sizes.text_layers,
            num_attention_heads=sizes.text_heads,
            num_key_value_heads=sizes.text_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            **special,
        )
        return llava_config(
            vision,
            text,
            image_token_id=_token_id(tokenizer, "<image>"),
            image_size=sizes.image_size,
            patch_size=sizes.patch_size,
        )
    image_token_id = _token_id(tokenizer, "<|image|>")
    vision_m = MllamaVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_intermediate,
        num_hidden_layers=sizes.vision_layers,
        num_global_layers=sizes.vision_global_layers,
        attention_heads=sizes.vision_heads,
        image_size=sizes.tile_size,
        patch_size=sizes.patch_size,
        max_num_tiles=sizes.max_tiles,
        supported_aspect_ratios=_MLLAMA_ASPECT_RATIOS,
        intermediate_layers_indices=list(sizes.intermediate_layers),
        vision_output_dim=sizes.vision_hidden * (1 + len(sizes.intermediate_layers)),
        norm_eps=1e-5,
    )
    text_m = MllamaTextConfig(
        vocab_size=sizes.vocab_size or image_token_id,
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_kv_heads,
        cross_attention_layers=sizes.cross_attention_layers,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        **special,
    )
    return MllamaConfig(vision_config=vision_m, text_config=text_m, image_token_index=image_token_id)


def random_model(
    sizes: Sizes,
    tokenizer: PreTrainedTokenizerFast,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Any:
    """The model of `sizes` with transformers' own random initialisation, created directly on
    `device` in `dtype` (on `meta` it allocates nothing: for counting parameters)."""
    config = model_config(sizes, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def processor_for(sizes: Sizes, tokenizer: PreTrainedTokenizerFast) -> Any:
    """The family's processor at the image geometry of `sizes` (vistrace.models.tiny's helpers)."""
    if isinstance(sizes, LlavaSizes):
        return llava_processor(tokenizer, image_size=sizes.image_size, patch_size=sizes.patch_size)
    return mllama_processor(tokenizer, tile_size=sizes.tile_size, max_tiles=sizes.max_tiles)


def build(
    sizes: Sizes, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LoadedModel:
    """A random-weight model of `sizes`, its processor and adapter, ready for vistrace.

    Generation never stops at EOS (`eos_token_id` unset), so every generation of the benchmarks is
    exactly `max_new_tokens` long and runs with and without capture compare like with like.
    """
    tokenizer = benchmark_tokenizer(sizes.family)
    model = random_model(sizes, tokenizer, device=device, dtype=dtype, seed=seed)
    if isinstance(sizes, MllamaSizes):
        use_reference_vision_features(model)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = processor_for(sizes, tokenizer)
    return LoadedModel(model, processor, get_adapter(model), Path(f"random:{sizes.name}"))


def answer_tokens(loaded: LoadedModel) -> list[int]:
    """The two token ids of `ANSWER`."""
    ids = loaded.processor.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    if len(ids) != 2:
        raise RuntimeError(f"{ANSWER!r} should be 2 tokens, the benchmark tokenizer gives {len(ids)}")
    return [int(i) for i in ids]


def benchmark_image(sizes: Sizes) -> Image.Image:
    """A synthetic scene of the size the family's real geometry needs (see `image_pixels`)."""
    width, height = sizes.image_pixels
    image = Image.new("RGB", (width, height), (230, 230, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width // 8, height // 8, width // 2, height // 2], fill=(220, 20, 20))
    draw.rectangle([width // 2, height // 2, width - width // 8, height - height // 8], fill=(20, 20, 220))
    return image


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
