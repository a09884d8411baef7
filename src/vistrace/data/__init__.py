"""Dataset readers (VQAv2, Visual7W, DocVQA, MMHal-Bench, TextVQA, ChartQA, COCO captions, JSON/JSONL,
HF on disk), their official metrics and the papers' prompts."""

from vistrace.data.by_name import READERS, read_dataset
from vistrace.data.example import (
    DatasetError,
    Example,
    ReadResult,
    Skipped,
    load_image,
    resolve_image_path,
)
from vistrace.data.generic import read_hf_disk, read_json_records
from vistrace.data.metrics_text_rich import relaxed_accuracy, textvqa_accuracy
from vistrace.data.prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    docvqa_prompt,
    example_prompt,
    shuffle_options,
    visual7w_prompt,
    vqav2_prompt,
)
from vistrace.data.readers import read_docvqa, read_mmhal, read_visual7w, read_vqav2
from vistrace.data.readers_coco import read_coco_captions, read_coco_karpathy
from vistrace.data.readers_text_rich import read_chartqa, read_textvqa

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "READERS",
    "DatasetError",
    "Example",
    "ReadResult",
    "Skipped",
    "docvqa_prompt",
    "example_prompt",
    "load_image",
    "read_chartqa",
    "read_coco_captions",
    "read_coco_karpathy",
    "read_dataset",
    "read_docvqa",
    "read_hf_disk",
    "read_json_records",
    "read_mmhal",
    "read_textvqa",
    "read_visual7w",
    "read_vqav2",
    "relaxed_accuracy",
    "resolve_image_path",
    "shuffle_options",
    "textvqa_accuracy",
    "visual7w_prompt",
    "vqav2_prompt",
]
