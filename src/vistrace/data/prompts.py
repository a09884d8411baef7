"""The paper's prompts for VQAv2, Visual7W and DocVQA, byte for byte, and the Visual7W option order."""

from __future__ import annotations

import random
from collections.abc import Sequence

from vistrace.data.example import Example

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DOCVQA_PROMPT",
    "VISUAL7W_PROMPT",
    "VQAV2_PROMPT",
    "docvqa_prompt",
    "example_prompt",
    "shuffle_options",
    "visual7w_prompt",
    "vqav2_prompt",
]

VQAV2_PROMPT = (
    "Look at the image carefully and answer this visual question. For yes/no questions, just respond "
    "Yes or No. If the answer is numeric, just respond with the number and nothing else. If the answer "
    "has multiple words, just respond with the words and absolutely nothing else. Never respond in a "
    "sentence or a phrase.\n Respond with as few words as possible.\n Question: {question}"
)

VISUAL7W_PROMPT = (
    "Look at the image carefully and answer this visual question based on the provided choices. "
    "Respond with the correct answer only. Do not include any additional text.\n Question: {question}\n"
    " Choices: \n {o1}\n {o2}\n {o3}\n {o4}"
)

DOCVQA_PROMPT = (
    "Read the text in the image carefully and answer the question with the text as seen exactly in the "
    "image. For yes/no questions, just respond Yes or No. If the answer is numeric, just respond with "
    "the number and nothing else. If the answer has multiple words, just respond with the words and "
    "absolutely nothing else. Never respond in a sentence or a phrase.\n Question: {question}"
)

DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {"vqav2": 25, "visual7w": 25, "docvqa": 512}


def vqav2_prompt(question: str) -> str:
    """The paper's VQAv2 prompt for one question."""
    return VQAV2_PROMPT.format(question=question)


def docvqa_prompt(question: str) -> str:
    """The paper's DocVQA prompt for one question."""
    return DOCVQA_PROMPT.format(question=question)


def visual7w_prompt(question: str, options: Sequence[str]) -> str:
    """The paper's Visual7W prompt for one question and its four options, in the order given."""
    if isinstance(options, str) or len(options) != 4:
        raise ValueError(f"Visual7W needs exactly 4 options, got {options!r}")
    o1, o2, o3, o4 = options
    return VISUAL7W_PROMPT.format(question=question, o1=o1, o2=o2, o3=o3, o4=o4)


def shuffle_options(choices: Sequence[str], seed: int, example_id: str) -> list[str]:
    """The choices in an order fixed by ``(seed, example_id)``: the same on every call and machine.

    The order is drawn with ``random.Random(f"{seed}:{example_id}")``; record it with the results
    so that a later trace of the sample uses the same prompt.
    """
    options = list(choices)
    random.Random(f"{seed}:{example_id}").shuffle(options)
    return options


def example_prompt(example: Example, seed: int = 42) -> tuple[str, list[str] | None]:
    """(prompt, options) of a VQAv2, Visual7W or DocVQA example; options only for Visual7W.

    Visual7W options are ``shuffle_options(example.choices, seed, example.id)``.
    """
    if example.dataset == "vqav2":
        return vqav2_prompt(example.question), None
    if example.dataset == "docvqa":
        return docvqa_prompt(example.question), None
    if example.dataset == "visual7w":
        if example.choices is None:
            raise ValueError(f"Visual7W example {example.id} has no choices")
        options = shuffle_options(example.choices, seed, example.id)
        return visual7w_prompt(example.question, options), options
    raise ValueError(
        f"no paper prompt for dataset {example.dataset!r} (example {example.id}); "
        "expected 'vqav2', 'visual7w' or 'docvqa'"
    )
