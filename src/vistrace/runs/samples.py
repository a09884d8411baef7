"""The inputs of one `vistrace trace` sample: its image, prompt and answer tokens, checked.

Every problem is a `SampleError` whose message says what is wrong with the sample; the run records
it in `skipped.jsonl` and goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from vistrace.adapters import PreparedPrompt
from vistrace.images import ImageError, open_image, resolve_image
from vistrace.models.loading import LoadedModel
from vistrace.runs.config import TraceConfig

__all__ = ["SampleError", "answer_token_ids", "open_sample_image", "sample_input", "special_token_problem"]


class SampleError(ValueError):
    """A sample cannot be traced; the message says why."""


def answer_token_ids(loaded: LoadedModel, sample: dict[str, Any]) -> list[int]:
    """The tokens to score: `answer_tokens` (a list of in-vocabulary ids, never coerced), or
    `answer` text tokenized without special tokens; EOS removed. SampleError says what is wrong."""
    tokenizer = loaded.processor.tokenizer
    if sample.get("answer_tokens") is not None:
        tokens = sample["answer_tokens"]
        if not isinstance(tokens, list):
            raise SampleError(f"`answer_tokens` must be a list of token ids, not {type(tokens).__name__}")
        vocab = _vocab_size(loaded)
        for token in tokens:
            if not isinstance(token, int) or isinstance(token, bool):
                raise SampleError(f"`answer_tokens` holds {token!r}; token ids are non-negative integers")
            if token < 0 or (vocab is not None and token >= vocab):
                raise SampleError(f"`answer_tokens` holds {token}, outside the vocabulary (0 … {vocab})")
        tokens = list(tokens)
    elif isinstance(sample.get("answer"), str):
        tokens = list(tokenizer(sample["answer"], add_special_tokens=False)["input_ids"])
    elif sample.get("answer") is not None:
        raise SampleError(f"`answer` must be text, not {type(sample['answer']).__name__}")
    else:
        raise SampleError("no `answer_tokens` and no `answer` text")
    # The tokenizer's EOS too, when the generation config names others.
    eos_ids = loaded.eos_ids | {tokenizer.eos_token_id}
    tokens = [t for t in tokens if t not in eos_ids]
    if not tokens:
        raise SampleError("the answer has no tokens to score once EOS is removed")
    return tokens


def _vocab_size(loaded: LoadedModel) -> int | None:
    """Rows of the output embedding (the ids the model can score), when known."""
    output = loaded.model.get_output_embeddings()
    if output is not None and hasattr(output, "weight"):
        return int(output.weight.shape[0])
    value = getattr(loaded.model.config.get_text_config(), "vocab_size", None)
    return int(value) if value else None


def special_token_problem(loaded: LoadedModel, prompt: str) -> str | None:
    """Why `prompt` cannot be used as it is: it spells one of the tokenizer's special tokens (an
    image placeholder such as `<image>` would add an image)."""
    tokenizer = loaded.processor.tokenizer
    specials = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    specials |= {str(t) for t in getattr(tokenizer, "added_tokens_encoder", {})}
    for name in ("image_token", "video_token", "boi_token", "eoi_token"):
        value = getattr(loaded.processor, name, None) or getattr(tokenizer, name, None)
        if isinstance(value, str):
            specials.add(value)
    found = sorted(t for t in specials if t and t in prompt)
    if found:
        return f"the prompt contains the special token(s) {', '.join(found)}, which would change the input"
    return None


def open_sample_image(path_text: str, data_file: Path, images_dir: str | Path | None) -> Image.Image:
    """The sample's image as RGB (:func:`vistrace.images.open_image`); a relative path is resolved
    against `images_dir`, else the data file's folder."""
    try:
        return open_image(resolve_image(path_text, data_file, images_dir))
    except ImageError as error:
        raise SampleError(str(error)) from None


def sample_input(
    loaded: LoadedModel, sample: dict[str, Any], config: TraceConfig
) -> tuple[PreparedPrompt, list[int]]:
    """The processed prompt and the answer tokens of one sample; SampleError when it cannot be run."""
    for field in ("image", "prompt"):
        if not isinstance(sample.get(field), str) or not sample[field].strip():
            raise SampleError(f"missing or empty `{field}`")
    for field in ("category", "dataset"):
        if sample.get(field) is not None and not isinstance(sample[field], str):
            raise SampleError(f"`{field}` must be text, not {type(sample[field]).__name__}")
    categories = sample.get("categories")
    if categories is not None and not (
        isinstance(categories, list) and all(isinstance(c, str) for c in categories)
    ):
        raise SampleError("`categories` must be a list of text")
    problem = special_token_problem(loaded, sample["prompt"])
    if problem:
        raise SampleError(problem)
    image = open_sample_image(sample["image"], config.data, config.images)
    answer = answer_token_ids(loaded, sample)
    try:
        prepared = loaded.adapter.prepare(loaded.model, loaded.processor, image, sample["prompt"])
    except ValueError as error:
        raise SampleError(f"the processor refused the sample ({' '.join(str(error).split())})") from None
    length = prepared.input_ids.shape[1] + len(answer)
    context = loaded.context_length
    if context is not None and length > context:
        raise SampleError(f"prompt + answer is {length} tokens, the model's context is {context}")
    return prepared, answer
