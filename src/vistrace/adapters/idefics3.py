"""Idefics3 and SmolVLM (`idefics3`, `smolvlm`): inline image features between frame tokens.

Read in transformers 5.24 (`processing_idefics3.py`, `image_processing_pil_idefics3.py`,
`modeling_idefics3.py`; SmolVLM's modules are generated from the same code).

Prompt
    The chat template writes one `<image>` per image. The processor replaces it by the image's
    frames (`Idefics3Processor.replace_image_token`): for a split image, for each row r and column c
    `<fake_token_around_image><row_r_col_c>` + `image_seq_len` × `<image>`, a `\\n` after each row,
    then `\\n<fake_token_around_image><global-img>` + `image_seq_len` × `<image>` +
    `<fake_token_around_image>`; an unsplit image is only the global part. The model scatters one
    feature onto each `<image>` position (`inputs_merger`), so the image keys are those positions;
    the frame tokens (`<fake_token_around_image>`, `<row_r_col_c>`, `<global-img>`, the newlines) are
    template. Because the processor's expansion is more than a run of image tokens, `prepare` resolves
    roles on the expanded text the processor tokenised (`return_text_replacement_offsets`).

Frames and geometry
    The image processor resizes the long side to `size["longest_edge"]` (aspect kept, even rounding),
    then `resize_for_vision_encoder` stretches each side up to a multiple of
    `M = max_image_size["longest_edge"]`, and `split_images` cuts that canvas into rows × cols
    M × M squares (row-major) and appends the whole image resized to M × M (the global image).
    When the canvas is a single square (or `do_image_splitting` is off) only the global image is
    kept and rows = cols = 0. The canvas covers the whole original image, stretched per axis, so
    square (r, c) is [c·W/cols, (c+1)·W/cols] × [r·H/rows, (r+1)·H/rows] of the original W × H.
    rows and cols are read from the image processor's own output (`return_row_col_info`).

Features per square
    The vision tower cuts a square into (M / patch)² patches; the connector's `pixel_shuffle` with
    `scale_factor` s gathers s × s patch blocks into one feature, row-major over the
    (M / patch / s)² grid (feature j at row j // n, column j % n, n = M / patch / s), so a square
    gives `image_seq_len` = n² features. Features follow the frames' order: squares row-major, then
    the global image.

Language model
    The decoder is built from `text_config` (Llama in the released Idefics3 and SmolVLM models):
    1-D positions, causal attention, logits `lm_head(norm(h))`. The processor's other inputs
    (`pixel_values` (1, frames, 3, M, M), `pixel_attention_mask` (1, frames, M, M)) are per image,
    not per token.

SmolVLM
    `modeling_smolvlm.py` and `image_processing_*_smolvlm.py` are generated from Idefics3's (same
    connector, same scatter of one feature per `<image>` position, same resize and split; SmolVLM
    checkpoints use scale factor 4 with 16-px patches on 512-px squares) and `SmolVLMProcessor` builds
    the same frames (`processing_smolvlm.get_image_prompt_string`). Its processor also needs
    torchvision and num2words, for videos only: without them it loads for images only.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistrace.adapters.base import (
    Geometry,
    InlineAdapter,
    PreparedPrompt,
    frames_geometry,
    grid_frames,
    prepare_expanded,
)

logger = logging.getLogger(__name__)


def split_grid(image_processor: Any, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """(rows, cols, square side M in px) the image processor gives an image of `image_size`
    (width, height): its own resize / split run on a blank image of that size (rows = cols = 0 when
    only the global image is kept)."""
    width, height = image_size
    blank = Image.new("RGB", (width, height))
    out = image_processor(
        images=[[blank]],
        return_row_col_info=True,
        do_rescale=False,
        do_normalize=False,
        do_pad=False,
    )
    rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
    frames = out["pixel_values"][0]
    side = int(image_processor.max_image_size["longest_edge"])
    shapes = {tuple(np.asarray(f).shape[-2:]) for f in frames}
    if shapes != {(side, side)} or len(frames) != (rows * cols + 1 if rows else 1):
        raise ValueError(
            f"Idefics3 geometry: the image processor gave {len(frames)} frames of {sorted(shapes)} for "
            f"{rows}×{cols} squares of {side} px"
        )
    return rows, cols, side


def frame_geometry(
    rows: int, cols: int, side: int, patch_size: int, scale_factor: int, image_size: tuple[int, int]
) -> Geometry:
    """Geometry of one image split into `rows` × `cols` squares of `side` px plus the global image.

    Each frame has n × n features (n = side / patch_size / scale_factor), row-major; boxes (N, 4) are
    in original-image pixels of `image_size` (width, height): squares first (row-major), then the
    global image, which covers the whole image."""
    if side % (patch_size * scale_factor):
        raise ValueError(f"square {side} px is not divisible by patch {patch_size} × scale {scale_factor}")
    n = side // (patch_size * scale_factor)
    frames = grid_frames(rows, cols, image_size) if rows else []
    frames.append((0.0, 0.0, float(image_size[0]), float(image_size[1])))
    return frames_geometry(frames, n, image_size)


class Idefics3Adapter(InlineAdapter):
    """Idefics3: (rows·cols + 1) · image_seq_len inline `<image>` positions framed by template tokens."""

    model_type = "idefics3"

    def prepare(self, model: Any, processor: Any, image: Image.Image, question: str) -> PreparedPrompt:
        """As `Adapter.prepare`, with roles resolved on the text the processor tokenised: its frame
        tokens (`<fake_token_around_image>`, `<row_r_col_c>`, `<global-img>`, newlines) are template,
        each `<image>` position an image key. `prompt` stays the chat-template text (one `<image>`)."""
        return prepare_expanded(self, model, processor, image, question)

    def geometry(self, model: Any, processor: Any, image_size: tuple[int, int]) -> Geometry:
        """Geometry of one image of `image_size` (width, height): rows × cols squares and the global
        image from the image processor's own resize and split, n × n features per frame from the
        vision patch size and the connector's scale factor."""
        rows, cols, side = split_grid(processor.image_processor, image_size)
        patch = int(model.config.vision_config.patch_size)
        vision_side = int(model.config.vision_config.image_size)
        if vision_side != side:
            raise ValueError(
                f"Idefics3 geometry: squares of {side} px but the vision tower takes {vision_side} px"
            )
        return frame_geometry(rows, cols, side, patch, int(model.config.scale_factor), image_size)


@functools.cache
def smolvlm_image_only_processor_class() -> type[Any]:
    """`SmolVLMProcessor` for images only: image processor + tokenizer, no video processor.

    SmolVLM's own processor needs torchvision (its video processor) and num2words (the words of its
    video prompts: "one frame, two frames …") even for an image. This subclass keeps every image path of
    `SmolVLMProcessor` (input layout, checks, `replace_image_token`) and sets in `__init__` the
    attributes SmolVLM's sets, without the video processor; its chat template is rendered as any
    processor's (SmolVLM's override only adds video defaults). It keeps the class name, so
    `save_pretrained` records `SmolVLMProcessor` and `AutoProcessor` loads the full processor where
    both packages are installed."""
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnly(SmolVLMProcessor):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

        def __init__(
            self,
            image_processor: Any,
            tokenizer: Any,
            image_seq_len: int = 169,
            chat_template: str | None = None,
            **kwargs: Any,
        ) -> None:
            self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
            self.image_token = getattr(tokenizer, "image_token", "<image>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
            self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
            self.image_seq_len = image_seq_len
            self.video_token = getattr(tokenizer, "video_token", "<video>")
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def apply_chat_template(  # type: ignore[override]
            self, conversation: Any, chat_template: str | None = None, **kwargs: Any
        ) -> Any:
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = "SmolVLMProcessor"
    ImageOnly.__doc__ = "SmolVLMProcessor for images only (no video processor, no num2words)."
    return ImageOnly


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM: Idefics3's frames, connector and prompt expansion; its processor loads for images only
    where torchvision or num2words is missing (`smolvlm_image_only_processor_class`)."""

    model_type = "smolvlm"

    def load_processor(self, path: str | Path) -> Any:
        """`AutoProcessor` where torchvision and num2words are installed, else SmolVLM's processor for
        images only (logged in one line)."""
        from transformers.utils import is_num2words_available, is_torchvision_available

        if is_torchvision_available() and is_num2words_available():
            return super().load_processor(path)
        logger.warning(
            "torchvision or num2words is not installed: SmolVLMProcessor loaded for images only "
            "(video inputs need both)"
        )
        return smolvlm_image_only_processor_class().from_pretrained(path)


IDEFICS3_ADAPTERS: tuple[Idefics3Adapter, ...] = (Idefics3Adapter(), SmolVLMAdapter())

__all__ = [
    "IDEFICS3_ADAPTERS",
    "Idefics3Adapter",
    "SmolVLMAdapter",
    "frame_geometry",
    "smolvlm_image_only_processor_class",
    "split_grid",
]
