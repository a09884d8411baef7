"""The Python API: load a model, knock out pathways, capture image attention, run the Volcano loop.

import vistrace
model = vistrace.load("demo:mllama")                  # a directory, a cached hub id, demo:…, tiny:…
prompt = model.prompt(image, "What color is the circle?")
sweep = vistrace.knockout_sweep(model, prompt, "red", pathways=["image_to_last"], window=9)
sweep.plot(); sweep.to_frame(); sweep.save("sweep")
attention = vistrace.capture.generate(model, image, "What color is the circle?")
attention.plot_image(); attention.map(pool="top_k_mean")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vistrace.adapters import Adapter, PreparedPrompt
from vistrace.capture.generate import capture as capture_stage
from vistrace.hook.plan import KnockoutMode
from vistrace.knockout.lens import answer_probability_by_layer as by_layer
from vistrace.knockout.sweep import (
    PAPER_PATHWAYS,
    KnockoutRunner,
    Pathway,
    SampleSweep,
    pack_bytes,
)
from vistrace.models.builtin import resolve_model_dir
from vistrace.models.loading import LoadedModel
from vistrace.models.loading import load as load_checkpoint
from vistrace.results import ImageAttention, KnockoutSweep
from vistrace.volcano.loop import VolcanoResult, volcano_instance


@dataclass(frozen=True)
class VisionModel:
    """A loaded vision-language model with its processor and family adapter.

    `loaded` is the lower-level `vistrace.models.loading.LoadedModel` that the batch commands use.
    """

    loaded: LoadedModel

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def processor(self) -> Any:
        return self.loaded.processor

    @property
    def adapter(self) -> Adapter:
        return self.loaded.adapter

    @property
    def num_layers(self) -> int:
        """Decoder layers of the language model (Mllama: self- and cross-attention layers together)."""
        return self.adapter.num_layers(self.model)

    @property
    def cross_attention_layers(self) -> tuple[int, ...]:
        """Layers whose keys are image features (empty for inline families)."""
        return tuple(sorted(self.adapter.cross_layers(self.model)))

    @property
    def context_length(self) -> int | None:
        """The language model's maximum positions (`max_position_embeddings`), or None."""
        return self.loaded.context_length

    @property
    def eos_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""
        return self.loaded.eos_ids

    def prompt(self, image: Image.Image, question: str) -> PreparedPrompt:
        """The question as the user's message after the image, through the model's chat template and
        processor, with every position's role resolved."""
        return self.adapter.prepare(self.model, self.processor, image, question)

    def answer_tokens(self, answer: str | Sequence[int]) -> list[int]:
        """Token ids of `answer` as the model writes it after its prompt (no special tokens; EOS ids
        removed). Raises ValueError when nothing is left to score."""
        if isinstance(answer, str):
            ids = self.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        else:
            ids = list(answer)
        tokens = [int(t) for t in ids if int(t) not in self.eos_ids]
        if not tokens:
            raise ValueError(f"the answer {answer!r} has no tokens to score")
        return tokens


def load(
    model: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    vision_tower: str | Path | None = None,
) -> VisionModel:
    """Load `model`: a checkpoint directory (HF or original LLaVA format), a hub id found in the local
    Hugging Face cache (no download), `demo:llava|mllama` or `tiny:<family>`.

    `dtype`: `auto` (the checkpoint's own dtype on a GPU, float32 on the CPU, where half precision
    is slow and inexact), float32, bfloat16 or float16. `device`: None (the CPU), `auto` (the GPU
    when one is present) or a torch device; `device_map="auto"` shards the model over the GPUs.

    Raises FileNotFoundError when `model` is none of these, and
    `vistrace.adapters.UnsupportedModelError` for a model type without an adapter.
    """
    directory = resolve_model_dir(str(model))
    loaded = load_checkpoint(
        directory, dtype=dtype, device=device, device_map=device_map, vision_tower=vision_tower
    )
    return VisionModel(loaded)


def knockout_sweep(
    model: VisionModel,
    prompt: PreparedPrompt,
    answer: str | Sequence[int],
    *,
    pathways: Sequence[str | Pathway] = PAPER_PATHWAYS,
    window: int = 9,
    mode: KnockoutMode = "strict",
    strategy: str = "fast",
    temperature: float | None = None,
) -> KnockoutSweep:
    """Block each pathway in a window of `window` layers centred on every layer and score `answer`.

    `answer`: text (tokenized as the model writes it) or token ids. `mode`: `strict` (a true
    knockout, T = 1) or `paper` (FlowTracker's numbers, T = 0.6); see docs/concepts.md.
    """
    (sweep,) = knockout_sweeps(
        model,
        [(prompt, answer)],
        pathways=pathways,
        window=window,
        mode=mode,
        strategy=strategy,
        temperature=temperature,
        pack_memory=0,
    )
    return sweep


def knockout_sweeps(
    model: VisionModel,
    samples: Iterable[tuple[PreparedPrompt, str | Sequence[int]]],
    *,
    pathways: Sequence[str | Pathway] = PAPER_PATHWAYS,
    window: int = 9,
    mode: KnockoutMode = "strict",
    strategy: str = "fast",
    temperature: float | None = None,
    pack_memory: float | None = None,
) -> Iterator[KnockoutSweep]:
    """`knockout_sweep` of each `(prompt, answer)`, yielded in order as each is done.

    The fast strategy packs the re-runs of consecutive samples into shared calls, holding up to
    `pack_memory` GiB of their clean passes (None: a tenth of the GPU's memory on CUDA, no packing
    elsewhere; 0: none): the same numbers up to float rounding (docs/scale.md). A sample that
    cannot be swept raises ValueError naming its position, after the samples before it.
    """
    if window < 1:
        raise ValueError(f"window must be a positive number of layers, not {window}")
    if pack_memory is not None and not (pack_memory >= 0 and math.isfinite(pack_memory)):
        raise ValueError(f"pack_memory must be 0 or more GiB, not {pack_memory}")
    parsed = [p if isinstance(p, Pathway) else Pathway.parse(p) for p in pathways]
    runner = KnockoutRunner(model.loaded, mode=mode, temperature=temperature)

    def tokenized() -> Iterator[tuple[int, PreparedPrompt, list[int]]]:
        for position, (prompt, answer) in enumerate(samples):
            try:
                tokens = model.answer_tokens(answer)
            except ValueError as error:
                raise ValueError(f"sample {position}: {error}") from None
            yield position, prompt, tokens

    packed = pack_bytes(pack_memory, model.loaded.device)
    outcomes = runner.sweep(tokenized(), parsed, [window], strategy, pack_bytes=packed)
    return _sweeps(model, runner, parsed, window, strategy, outcomes)


def _sweeps(
    model: VisionModel,
    runner: KnockoutRunner,
    parsed: list[Pathway],
    window: int,
    strategy: str,
    outcomes: Iterator[SampleSweep[int]],
) -> Iterator[KnockoutSweep]:
    mode = runner.mode
    for outcome in outcomes:
        if outcome.error is not None:
            raise ValueError(f"sample {outcome.tag}: {outcome.error}")
        result = outcome.results[window]
        yield KnockoutSweep(
            pathways=tuple(p.name for p in parsed),
            probs=torch.tensor([result.probs[p.name] for p in parsed], dtype=torch.float64),
            p_full=result.p_full,
            window=window,
            mode=mode,
            temperature=runner.temperature,
            strategy=strategy,
            answer_tokens=result.answer_tokens,
            cross_attention_layers=model.cross_attention_layers,
            layer_evaluations=result.layer_evaluations,
            token_probs=torch.tensor([result.token_probs[p.name] for p in parsed], dtype=torch.float64),
            p_full_tokens=torch.tensor(result.p_full_tokens, dtype=torch.float64),
        )


def answer_probability_by_layer(
    model: VisionModel, prompt: PreparedPrompt, answer: str | Sequence[int], *, temperature: float = 1.0
) -> torch.Tensor:
    """(L, T) probability of each answer token read after every decoder layer through the model's own
    final norm and head (a logit lens at the scored positions; `vistrace.knockout.lens`)."""
    return by_layer(model.loaded, prompt, model.answer_tokens(answer), temperature=temperature)


def attend(
    model: VisionModel,
    image: Image.Image,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    sample: bool = False,
) -> ImageAttention:
    """Generate an answer to `prompt` about `image` (greedy unless `sample`) and keep how much each
    generated token attends to each image feature, per layer and head."""
    stage = capture_stage(model.loaded, image, prompt, max_new_tokens=max_new_tokens, sample=sample)
    return ImageAttention(stage, image)


def volcano_loop(
    model: VisionModel,
    image: Image.Image,
    question: str,
    *,
    engineered: bool = False,
    sample: bool = False,
    max_new_tokens: int = 256,
) -> VolcanoResult:
    """The Volcano critique-and-revise loop on one image and question, every stage's image attention
    captured (`VolcanoResult.stages`)."""
    return volcano_instance(
        model.loaded, image, question, engineered=engineered, sample=sample, max_new_tokens=max_new_tokens
    )
