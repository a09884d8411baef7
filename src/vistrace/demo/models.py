"""The demo models: their architecture and tokenizer, where the trained checkpoints ship, how they score.

Both families mimic their real counterparts at a tiny width. LLaVA: a CLIP tower on 64-px images with
16-px patches, so one image is 16 inline positions (a 4x4 grid), a two-layer GELU projector and a
Llama decoder with the Vicuna-v1 chat template. Mllama: 64-px tiles (up to 2) of 16-px patches, a
decoder whose cross-attention layers sit every 5th from layer 3 as in Llama-3.2-Vision, and the
Llama-3 chat template. `evaluate_answers` and `evaluate_volcano` go through `Adapter.prepare`
exactly as every vistrace command does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig

from vistrace.adapters import Adapter
from vistrace.adapters.mllama_vision import use_reference_vision_features
from vistrace.data.prompts import vqav2_prompt
from vistrace.demo.volcano_data import (
    DECISION_PROMPT,
    FEEDBACK_PROMPT,
    REVISION_PROMPT,
    feedback_text,
    is_correct,
    volcano_training_set,
    wrong_answer,
)
from vistrace.demo.world import (
    FEEDBACK_CORRECT,
    FEEDBACK_WRONG,
    QUESTION_KINDS,
    Sample,
    corpus,
    make_split,
    render,
)
from vistrace.models.builtin import DemoFamily
from vistrace.models.tiny import llava_config, llava_processor, mllama_processor
from vistrace.models.tokenizer_build import LLAMA3_VISION_TEMPLATE, VICUNA_V1_TEMPLATE, build_tokenizer
from vistrace.volcano.loop import parse_decision

EVAL_SEED = 20240917
IMAGE_SIZE = 64
PATCH_SIZE = 16
MAX_TILES = 2
_IMAGE_TOKENS: dict[str, str] = {"llava": "<image>", "mllama": "<|image|>"}


@dataclass(frozen=True)
class Architecture:
    """Sizes of a demo model: decoder width, depth and heads; vision tower width and depth.

    ``text_init_std`` is the standard deviation of the initial decoder, projector and output
    weights: larger than the usual 0.02 so that attention is far from uniform from the start, which
    shortens the plateau before the decoder learns to look up shapes in the image.
    """

    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_hidden: int = 64
    vision_layers: int = 3
    text_init_std: float = 0.1
    rope_theta: float = 10000.0


def tokenizer_corpus(family: DemoFamily, seed: int) -> list[str]:
    """World sentences, Volcano turns and whole chat-template conversations, to train BPE on."""
    turns = volcano_training_set(make_split(300, seed + 7919), seed, p_wrong=0.5, contrast_decision=True)
    texts = corpus() + [text for turn in turns for text in (turn.prompt, turn.target)]
    texts += [vqav2_prompt(turn.prompt) for turn in turns[:200]]
    draft = build_tokenizer(
        texts,
        style="llama2" if family == "llava" else "llama3",
        vocab_size=1024,
        extra_special_tokens=[_IMAGE_TOKENS[family]],
    )
    draft.chat_template = VICUNA_V1_TEMPLATE if family == "llava" else LLAMA3_VISION_TEMPLATE
    for turn in turns[:400]:
        conversation: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turn.prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": turn.target}]},
        ]
        texts.append(str(draft.apply_chat_template(conversation, tokenize=False)))
    return texts


def build_demo_tokenizer(family: DemoFamily, seed: int) -> PreTrainedTokenizerFast:
    """The family's offline BPE tokenizer: Llama-2 style for LLaVA, Llama-3 style for Mllama."""
    return build_tokenizer(
        tokenizer_corpus(family, seed),
        style="llama2" if family == "llava" else "llama3",
        vocab_size=1024,
        extra_special_tokens=[_IMAGE_TOKENS[family]],
    )


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]


def _decoder_settings(arch: Architecture, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """The decoder config fields both families share: sizes, rotary settings, special tokens."""
    return {
        "hidden_size": arch.text_hidden,
        "intermediate_size": 2 * arch.text_hidden,
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.text_heads,
        "num_key_value_heads": arch.text_kv_heads,
        "max_position_embeddings": 512,
        "rope_parameters": {"rope_type": "default", "rope_theta": arch.rope_theta},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def _build_llava(arch: Architecture, tokenizer: PreTrainedTokenizerFast) -> tuple[Any, Any]:
    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=2 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=arch.vision_hidden,
    )
    text = LlamaConfig(vocab_size=len(tokenizer), **_decoder_settings(arch, tokenizer))
    config = llava_config(
        vision,
        text,
        image_token_id=_token_id(tokenizer, "<image>"),
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    processor = llava_processor(tokenizer, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return LlavaForConditionalGeneration(config), processor


def _build_mllama(arch: Architecture, tokenizer: PreTrainedTokenizerFast) -> tuple[Any, Any]:
    image_token_id = _token_id(tokenizer, "<|image|>")
    intermediate_indices = [1, arch.vision_layers - 1]
    vision = MllamaVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=2 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_global_layers=1,
        attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        max_num_tiles=MAX_TILES,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
        intermediate_layers_indices=intermediate_indices,
        vision_output_dim=arch.vision_hidden * (1 + len(intermediate_indices)),
    )
    text = MllamaTextConfig(
        vocab_size=image_token_id,
        cross_attention_layers=list(range(3, arch.text_layers, 5)),
        **_decoder_settings(arch, tokenizer),
    )
    model = MllamaForConditionalGeneration(
        MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id)
    )
    use_reference_vision_features(model)
    processor = mllama_processor(tokenizer, tile_size=IMAGE_SIZE, max_tiles=MAX_TILES)
    return model, processor


def build_demo_model(
    family: DemoFamily, arch: Architecture, tokenizer: PreTrainedTokenizerFast
) -> tuple[Any, Any]:
    """An untrained demo model of ``family`` (initialised from torch's global seed) and its processor.

    Decoder-side weights are drawn with ``arch.text_init_std``; Mllama's cross-attention gates
    start open (tanh(1)) so that the image reaches the text at once,
    and its vision tower picks intermediate features as the reference implementation does.
    """
    model, processor = (_build_llava if family == "llava" else _build_mllama)(arch, tokenizer)
    with torch.no_grad():
        for part in (model.model.language_model, model.model.multi_modal_projector, model.lm_head):
            for module in part.modules():
                if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                    module.weight.normal_(0.0, arch.text_init_std)
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                param.fill_(1.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def generate(
    model: Any, processor: Any, adapter: Adapter, image: Image.Image, prompt: str, max_new_tokens: int
) -> str:
    """The greedy answer of ``model`` to ``prompt`` about ``image`` (special tokens skipped, stripped)."""
    prepared = adapter.prepare(model, processor, image, prompt)
    parameter = next(model.parameters())
    inputs = {
        key: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
        for key, value in prepared.inputs.items()
    }
    with torch.no_grad():
        sequences = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    output_ids = sequences[0, inputs["input_ids"].shape[1] :]
    return str(processor.tokenizer.decode(output_ids, skip_special_tokens=True)).strip()


def evaluate_answers(
    model: Any,
    processor: Any,
    adapter: Adapter,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int = 8,
    progress: bool = False,
    wrap: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Greedy accuracy on ``samples``: overall and per question kind (``is_correct`` matching).

    ``wrap`` turns a question into the user text asked (e.g. the paper's VQAv2 prompt); default: as is.
    """
    correct = dict.fromkeys(QUESTION_KINDS, 0)
    total = dict.fromkeys(QUESTION_KINDS, 0)
    images: dict[int, Image.Image] = {}
    for sample in tqdm(samples, desc="evaluate", disable=not progress):
        image = images.setdefault(sample.scene.id, render(sample.scene))
        prompt = sample.qa.question if wrap is None else wrap(sample.qa.question)
        answer = generate(model, processor, adapter, image, prompt, max_new_tokens)
        kind = sample.qa.question_kind
        total[kind] += 1
        correct[kind] += int(is_correct(sample.qa, answer))
    kinds = [kind for kind in QUESTION_KINDS if total[kind]]
    return {
        "questions": sum(total.values()),
        "accuracy": sum(correct.values()) / max(1, sum(total.values())),
        "accuracy_by_kind": {kind: correct[kind] / total[kind] for kind in kinds},
        "questions_by_kind": {kind: total[kind] for kind in kinds},
    }


def _round(
    model: Any, processor: Any, adapter: Adapter, image: Image.Image, sample: Sample, initial: str
) -> dict[str, bool]:
    qa = sample.qa
    feedback = generate(
        model, processor, adapter, image, FEEDBACK_PROMPT.format(question=qa.question, outputs=initial), 32
    )
    revision_prompt = REVISION_PROMPT.format(question=qa.question, outputs=initial, feedback=feedback)
    revision = generate(model, processor, adapter, image, revision_prompt, 8)
    decision_prompt = DECISION_PROMPT.format(question=qa.question, outputs=initial, revision=revision)
    choice = parse_decision(generate(model, processor, adapter, image, decision_prompt, 4))
    initial_ok = is_correct(qa, initial)
    verdict = FEEDBACK_CORRECT if initial_ok else FEEDBACK_WRONG
    final = revision if choice == "B" else initial
    return {
        "feedback_verdict_right": feedback.startswith(verdict),
        "feedback_exact": feedback == feedback_text(qa, initial),
        "revision_correct": is_correct(qa, revision),
        "decision_b": choice == "B",
        "final_correct": is_correct(qa, final),
    }


def evaluate_volcano(
    model: Any, processor: Any, adapter: Adapter, samples: Sequence[Sample], *, seed: int = 0
) -> dict[str, Any]:
    """One Volcano round (feedback, revision, decision) per sample, from three kinds of initial answer.

    ``own``: the model's own greedy answer; ``wrong``: a wrong answer of the right kind; ``right``:
    the true answer. Returns, per kind of start, the rate of each outcome of `_round` (for ``own``
    also how many initial answers were wrong, and those outcomes on them).
    """
    rng = np.random.default_rng(seed)
    results: dict[str, list[dict[str, bool]]] = {"own": [], "own_wrong": [], "wrong": [], "right": []}
    for sample in samples:
        image = render(sample.scene)
        own = generate(model, processor, adapter, image, sample.qa.question, 8)
        outcome = _round(model, processor, adapter, image, sample, own)
        results["own"].append(outcome)
        if not is_correct(sample.qa, own):
            results["own_wrong"].append(outcome)
        results["wrong"].append(
            _round(model, processor, adapter, image, sample, wrong_answer(sample.qa, rng))
        )
        results["right"].append(_round(model, processor, adapter, image, sample, sample.qa.answer))
    summary: dict[str, Any] = {}
    for start, outcomes in results.items():
        rates = {key: float(np.mean([o[key] for o in outcomes])) for key in outcomes[0]} if outcomes else {}
        summary[start] = {"instances": len(outcomes), **rates}
    return summary
