"""The papers' prompts, byte for byte: FlowTracker's for VQAv2, Visual7W and DocVQA (and the Visual7W
option order), FG-TRACER's for TextVQA, ChartQA and COCO captions (sources in docs/datasets.md)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from vistrace.data.example import Example
from vistrace.data.readers_text_rich import COCO_CAPTION_PROMPT

__all__ = [
    "CHARTQA_COT_PROMPT",
    "CHARTQA_COT_PROMPT_MLLAMA",
    "COCO_CAPTION_PROMPT",
    "DEFAULT_MAX_NEW_TOKENS",
    "DOCVQA_PROMPT",
    "TEXTVQA_LLAVA_OCR_PROMPT",
    "TEXTVQA_PROMPT",
    "VISUAL7W_PROMPT",
    "VQAV2_PROMPT",
    "chartqa_prompt",
    "docvqa_prompt",
    "example_prompt",
    "shuffle_options",
    "textvqa_llava_prompt",
    "textvqa_prompt",
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

DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "vqav2": 25,
    "visual7w": 25,
    "docvqa": 512,
    # FG-TRACER's LLaMA budgets (LLaVA: 1024 everywhere; Qwen: 124 TextVQA, 512 otherwise); Meta's
    # ChartQA evaluation also uses 512.
    "textvqa": 512,
    "chartqa": 512,
    "coco": 512,
}


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
    """(prompt, options) of a VQAv2, Visual7W, DocVQA, TextVQA, ChartQA or COCO example; options only
    for Visual7W.

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
    if example.dataset in ("textvqa", "chartqa", "coco"):
        return _text_rich_prompt(example)
    raise ValueError(
        f"no paper prompt for dataset {example.dataset!r} (example {example.id}); "
        "expected 'vqav2', 'visual7w', 'docvqa', 'textvqa', 'chartqa' or 'coco'"
    )


TEXTVQA_PROMPT = DOCVQA_PROMPT
"""FG-TRACER's TextVQA prompt for LLaMA 3.2-Vision and Qwen 2.5-VL (``LLaMAVision/textvqa.py``,
``Qwen2.5_VL/textvqa.py``): the same text as FlowTracker's / Meta's DocVQA prompt. FG-TRACER's
LLaVA 1.5 gets the bare question (``LLaVA/textvqa.py``)."""

TEXTVQA_LLAVA_OCR_PROMPT = (
    "{question}\nReference OCR token: {ocr}\nAnswer the question using a single word or phrase."
)
"""LLaVA-1.5's TextVQA evaluation prompt (``llava_textvqa_val_v051_ocr.jsonl``; three lines, as
``llava/eval/eval_textvqa.py``'s ``prompt_processor`` parses it; lmms-eval builds it as
``question.capitalize() + "\\nReference OCR token: " + ", ".join(ocr_tokens) + post_prompt``)."""

CHARTQA_COT_PROMPT = (
    "You are provided a chart image and will be asked a question. "
    "You have to think through your answer and provide a step-by-step solution. "
    "Once you have the solution, write the final answer in at most a few words at the end with the "
    "phrase 'FINAL ANSWER:'. The question is: {question} Let's think step by step."
)
"""FG-TRACER's ChartQA prompt for LLaVA 1.5 and Qwen 2.5-VL (``LLaVA/chartqa.py``,
``Qwen2.5_VL/chartqa.py``)."""

CHARTQA_COT_PROMPT_MLLAMA = (
    "You are provided a chart image and will be asked a question. "
    "You have to think through your answer and provide a step-by-step solution. "
    "Once you have the solution, write the final answer in at most a few words at the end with the "
    "phrase 'FINAL ANSWER:'. The question is: {question}<cot_start>Let's think step by step."
)
"""FG-TRACER's ChartQA prompt for LLaMA 3.2-Vision (``LLaMAVision/chartqa.py``). Meta's own 11B
prompt (``models/llama3_2/eval_details.md``) is the same with ``"FINAL ANSWER:"`` in double quotes."""


def textvqa_prompt(question: str) -> str:
    """FG-TRACER's TextVQA prompt (LLaMA / Qwen) for one question."""
    return TEXTVQA_PROMPT.format(question=question)


def textvqa_llava_prompt(question: str, ocr_tokens: Sequence[str]) -> str:
    """LLaVA-1.5's TextVQA prompt with the Rosetta OCR tokens (``extra["ocr_tokens"]``)."""
    return TEXTVQA_LLAVA_OCR_PROMPT.format(question=question, ocr=", ".join(ocr_tokens))


def chartqa_prompt(question: str, *, mllama: bool = False) -> str:
    """FG-TRACER's ChartQA chain-of-thought prompt (``mllama=True``: the ``<cot_start>`` variant)."""
    return (CHARTQA_COT_PROMPT_MLLAMA if mllama else CHARTQA_COT_PROMPT).format(question=question)


def _text_rich_prompt(example: Example) -> tuple[str, None]:
    """(prompt, None) of a TextVQA, ChartQA or COCO example."""
    if example.dataset == "textvqa":
        return textvqa_prompt(example.question), None
    if example.dataset == "chartqa":
        return chartqa_prompt(example.question), None
    if example.dataset == "coco":
        return example.question, None
    raise ValueError(f"no prompt for dataset {example.dataset!r} (example {example.id})")
