"""What an adapter tells the seam about one model family, the values it returns, and what several
families share: inline image tokens, prompts the processor expands, image-only processors, geometry
of square frames."""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.hooks import RemovableHandle
from transformers.utils import is_torchvision_available

from vistrace import compat
from vistrace.adapters import decoder
from vistrace.images import to_rgb
from vistrace.roles import Prompt, render_prompt, resolve_roles

logger = logging.getLogger(__name__)

FeatureKind = Literal["patch", "cls", "padding"]
Frame = tuple[float, float, float, float]


@dataclass(frozen=True)
class Grid:
    """A rectangular block of patch features: features `first … first + rows*cols - 1`, row-major,
    covering `box` (x0, y0, x1, y1) of the model's input canvas."""

    first: int
    rows: int
    cols: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Geometry:
    """Where every image feature lies in the original image.

    `boxes`: (N, 4) float (x0, y0, x1, y1) in original-image pixels, clipped to the image; NaN for
    features with no region (CLS, padding tiles, patches over padding). `kinds`: N feature kinds.
    `grids`: the patch grids (one per tile) for drawing bare maps. `image_size`: (width, height).
    """

    boxes: np.ndarray
    kinds: tuple[FeatureKind, ...]
    grids: tuple[Grid, ...]
    image_size: tuple[int, int]

    @property
    def num_features(self) -> int:
        return len(self.kinds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "kinds": list(self.kinds),
            "boxes": [[None if np.isnan(v) else float(v) for v in box] for box in self.boxes],
            "grids": [
                {"first": g.first, "rows": g.rows, "cols": g.cols, "box": list(g.box)} for g in self.grids
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        boxes = np.array([[np.nan if v is None else v for v in box] for box in data["boxes"]], dtype=float)
        grids = tuple(
            Grid(int(g["first"]), int(g["rows"]), int(g["cols"]), tuple(g["box"])) for g in data["grids"]
        )
        return cls(boxes.reshape(-1, 4), tuple(data["kinds"]), grids, tuple(data["image_size"]))


@dataclass(frozen=True)
class PreparedPrompt:
    """One image + question through the processor, with its roles.

    `inputs`: processor output (batch 1). `roles`: (S,) int8 `Role` codes. `image_rows`: (S,) bool,
    rows allowed to see the image by the processor. `image_keys`: (N,) absolute key positions of the
    image features for inline families, None for cross-attention families.
    """

    inputs: dict[str, torch.Tensor]
    prompt: Prompt
    roles: torch.Tensor
    image_rows: torch.Tensor
    image_keys: torch.Tensor | None
    image_size: tuple[int, int]

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


class Adapter(abc.ABC):
    """Everything vistrace knows about one model family: where the image keys are, how roles resolve,
    how features map to pixels, and how the language model is driven (fed answer tokens, re-run rows,
    the logits). The defaults serve Llama-style backbones; a family overrides what differs."""

    model_type: str
    family: Literal["inline", "cross"]
    # Whether every text attention row is causal. A family whose image block attends both ways must
    # say False: the fast knockout re-runs rows on the assumption that later positions cannot matter.
    # A family whose non-causal rows break that only for some first rows says True and names them in
    # `rerun_start_error`.
    text_attention_causal: ClassVar[bool] = True
    # Processor inputs with one entry per token (besides input_ids and attention_mask), and how an
    # answer token extends each: a fill value or a function (tensor, extra) -> tensor.
    per_token_inputs: ClassVar[Mapping[str, Any]] = {}
    # Decoder-layer arguments indexed by query position, and the dimension that holds it.
    row_arguments: ClassVar[Mapping[str, int]] = decoder.LLAMA_ROW_ARGUMENTS
    # Decoder-layer arguments that a re-run replaces by the cache (e.g. cross-attention states).
    cached_arguments: ClassVar[frozenset[str]] = frozenset()

    def structure_error(self, config: Any) -> str | None:
        """Why a checkpoint of this `model_type` has a structure the adapter does not know, or None."""
        return None

    def load_processor(self, path: str | Path) -> Any:
        """The checkpoint's processor (default: `AutoProcessor`)."""
        _, auto_processor = compat.auto_classes()
        return auto_processor.from_pretrained(path)

    def prepare_model(self, model: Any) -> None:
        """Adjust a freshly loaded model once (e.g. restore a reference convention). Default: nothing."""
        return None

    def family_contracts(self, model: Any) -> list[compat.ContractStatus]:
        """The family's own contracts with transformers, as `vistrace check` lists them. Default: none."""
        return []

    def rerun_start_error(self, inputs: Mapping[str, torch.Tensor], row: int) -> str | None:
        """Why re-running rows `row` … end of model `inputs` over the clean rows before them would not
        be exact (a row before `row` attends to a later one), or None. Default: None (causal)."""
        return None

    def extend_inputs(self, inputs: Mapping[str, torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
        """Processor `inputs` of a prompt for `input_ids` (1, S): the prompt followed by fed answer tokens."""
        return decoder.extend_inputs(inputs, input_ids, self.per_token_inputs, self.model_type)

    def slice_layer_arguments(self, arguments: Mapping[str, Any], start: int, end: int) -> dict[str, Any]:
        """The decoder-layer arguments of a clean pass for query rows `start` … `end`-1."""
        return decoder.slice_rows(arguments, start, end, self.row_arguments, self.cached_arguments)

    def finisher(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """(B, hidden) last-layer hidden states → (B, V) logits, as the model computes them."""
        return compat.finisher(model)

    def decoder_extras(self, decoder_arguments: Mapping[str, Any]) -> Any:
        """What a re-run needs of the arguments the model passed its decoder (text model). Default: None."""
        return None

    def after_layer(
        self, layer: int, hidden: torch.Tensor, start: int, end: int, extras: Any
    ) -> torch.Tensor:
        """Hidden states (B, end - start, hidden) of rows `start` … `end`-1 after decoder layer `layer`,
        with what the model adds there outside attention (default: nothing)."""
        return hidden

    @abc.abstractmethod
    def num_layers(self, model: Any) -> int: ...

    @abc.abstractmethod
    def cross_layers(self, model: Any) -> frozenset[int]:
        """Layers whose keys are image features (empty for inline families)."""

    def image_layers(self, model: Any) -> tuple[int, ...]:
        """Decoder layers whose attention sees image features."""
        cross = self.cross_layers(model)
        return tuple(sorted(cross)) if cross else tuple(range(self.num_layers(model)))

    @abc.abstractmethod
    def image_token_id(self, model: Any) -> int: ...

    def prepare_image(self, processor: Any, image: Image.Image) -> Image.Image:
        """The image as every command hands it to the processor: 8-bit RGB, transparency composited
        onto white (:func:`vistrace.images.to_rgb`), size unchanged.

        Every path that calls a processor with an image goes through here (``prepare``, evaluation
        batches, the Volcano loop's conversations, demo training). Resizing, padding and cropping
        are the processor's: a checkpoint's settings live on its image processor (LLaVA's
        ``image_aspect_ratio: pad`` becomes ``do_pad``), so they apply wherever it runs.
        """
        return to_rgb(image)

    def prepare(self, model: Any, processor: Any, image: Image.Image, question: str) -> PreparedPrompt:
        """Render the chat prompt, run the processor and resolve roles for one image + question."""
        return _prepare(self, model, processor, image, question, expanded=False)

    def image_keys(self, model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """(N,) absolute key positions of the image features of processor output `inputs` (batch 1),
        or None for a cross-attention family (every key of a cross-attention layer is one)."""
        return self._image_rows_and_keys(dict(inputs), self.image_token_id(model))[1]

    @abc.abstractmethod
    def _image_rows_and_keys(
        self, inputs: dict[str, torch.Tensor], image_token: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    @abc.abstractmethod
    def geometry(self, model: Any, processor: Any, image_size: tuple[int, int]) -> Geometry:
        """Geometry of the features of one image of `image_size` (width, height)."""

    def install_hooks(self, model: Any) -> list[RemovableHandle]:
        """Hooks the family needs while traced (removed on exit). Default: none."""
        return []


class InlineAdapter(Adapter):
    """A family whose image features stand inline in the text: one per `config.image_token_id`
    position, every row may see them, no cross-attention layer (`text_config.num_hidden_layers`
    decoder layers). A family adds its geometry and what else differs."""

    family: Literal["inline", "cross"] = "inline"

    def num_layers(self, model: Any) -> int:
        return int(model.config.text_config.num_hidden_layers)

    def cross_layers(self, model: Any) -> frozenset[int]:
        return frozenset()

    def image_token_id(self, model: Any) -> int:
        return int(model.config.image_token_id)

    def _image_rows_and_keys(
        self, inputs: dict[str, torch.Tensor], image_token: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = inputs["input_ids"][0]
        keys = torch.nonzero(ids == image_token).flatten()
        return torch.ones(ids.shape[0], dtype=torch.bool), keys


class UnsupportedModelError(ValueError):
    """No adapter is registered for a model type."""


def expanded_prompt(prompt: Prompt, replacements: Sequence[Mapping[str, Any]]) -> Prompt:
    """`prompt` with the processor's replacements applied (its `text_replacement_offsets` entries of
    one sample: original `span` and `replacement` string), the question span shifted to match."""
    pieces: list[str] = []
    cursor = 0
    q_start, q_end = prompt.question_span
    shift = 0
    for item in sorted(replacements, key=lambda r: int(r["span"][0])):
        start, end = (int(v) for v in item["span"])
        replacement = str(item["replacement"])
        pieces.append(prompt.text[cursor:start])
        pieces.append(replacement)
        cursor = end
        if end <= q_start:
            shift += len(replacement) - (end - start)
        elif start < q_end:
            raise ValueError("an image placeholder lies inside the question; cannot locate the question")
    pieces.append(prompt.text[cursor:])
    return Prompt("".join(pieces), (q_start + shift, q_end + shift), prompt.add_special_tokens)


def prepare_expanded(
    adapter: Adapter, model: Any, processor: Any, image: Image.Image, question: str
) -> PreparedPrompt:
    """`Adapter.prepare` for a processor that replaces the chat template's image placeholder by more
    than a run of image tokens (frame or delimiter tokens around them): the processor reports its
    replacements (`return_text_replacement_offsets`), roles are resolved on the expanded text it
    tokenised (every image token `IMAGE`, the added frame tokens `TEMPLATE`), and the returned
    `prompt` stays the chat-template text with one placeholder, what the processor is given."""
    return _prepare(adapter, model, processor, image, question, expanded=True)


def _prepare(
    adapter: Adapter, model: Any, processor: Any, image: Image.Image, question: str, *, expanded: bool
) -> PreparedPrompt:
    image = adapter.prepare_image(processor, image)
    prompt = render_prompt(processor, question)
    offsets = {"return_text_replacement_offsets": True} if expanded else {}
    outputs = processor(
        images=image,
        text=prompt.text,
        add_special_tokens=prompt.add_special_tokens,
        return_tensors="pt",
        **offsets,
    )
    inputs = {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    ids = inputs["input_ids"][0]
    image_token = adapter.image_token_id(model)
    # An expanded prompt is the text the processor tokenised: its image tokens stand inline.
    tokenised = expanded_prompt(prompt, outputs["text_replacement_offsets"][0]) if expanded else prompt
    roles = resolve_roles(
        processor.tokenizer,
        tokenised,
        ids.tolist(),
        image_token,
        inline_image=expanded or adapter.family == "inline",
    )
    image_rows, image_keys = adapter._image_rows_and_keys(inputs, image_token)
    return PreparedPrompt(inputs, prompt, roles, image_rows, image_keys, image.size)


_IMAGE_ONLY_ATTRIBUTES = ["image_processor", "tokenizer"]
_image_only_classes: dict[type[Any], type[Any]] = {}


def image_only_processor_class(processor_class: type[Any]) -> type[Any]:
    """`processor_class` without its video processor: sub-processors = image processor + tokenizer.

    It keeps the family's class name, so `save_pretrained` records the real `processor_class` and a
    machine with torchvision loads the full processor with `AutoProcessor`; `from_pretrained` loads
    only the image processor (`AutoImageProcessor`) and the tokenizer."""
    if processor_class not in _image_only_classes:

        def get_attributes(cls: type[Any]) -> list[str]:
            return list(_IMAGE_ONLY_ATTRIBUTES)

        _image_only_classes[processor_class] = type(
            processor_class.__name__,
            (processor_class,),
            {
                "get_attributes": classmethod(get_attributes),
                "__module__": __name__,
                "__doc__": f"{processor_class.__name__} for images only (no video processor).",
            },
        )
    return _image_only_classes[processor_class]


def load_processor_with_image_only_fallback(path: str | Path, processor_class: type[Any]) -> Any:
    """The processor at `path`: `AutoProcessor` where torchvision is installed, else `processor_class`
    for images only (`image_only_processor_class`, logged in one line; its video processor needs
    torchvision)."""
    from transformers import AutoProcessor

    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path)
    logger.warning(
        "torchvision is not installed: %s loaded for images only (video inputs need torchvision)",
        processor_class.__name__,
    )
    return image_only_processor_class(processor_class).from_pretrained(path)


def grid_frames(rows: int, cols: int, image_size: tuple[int, int]) -> list[Frame]:
    """The `rows` × `cols` equal cells of an image of `image_size` (width, height), row-major, as
    (x0, y0, x1, y1) px."""
    width, height = image_size
    tile_w, tile_h = width / cols, height / rows
    return [
        (c * tile_w, r * tile_h, (c + 1) * tile_w, (r + 1) * tile_h) for r in range(rows) for c in range(cols)
    ]


def frames_geometry(frames: Sequence[Frame], per_side: int, image_size: tuple[int, int]) -> Geometry:
    """Geometry of an image seen as `frames` (x0, y0, x1, y1 in original-image px of `image_size`
    (width, height)), each stretched to a square of `per_side`² patch features, row-major; features
    follow the frames' order, boxes clipped to the image."""
    width, height = image_size
    n = per_side
    i, j = np.divmod(np.arange(n * n), n)
    boxes = []
    grids = []
    for index, (x0, y0, x1, y1) in enumerate(frames):
        cell_w, cell_h = (x1 - x0) / n, (y1 - y0) / n
        boxes.append(
            np.stack([x0 + j * cell_w, y0 + i * cell_h, x0 + (j + 1) * cell_w, y0 + (i + 1) * cell_h], 1)
        )
        grids.append(Grid(index * n * n, n, n, (x0, y0, x1, y1)))
    all_boxes = np.minimum(np.concatenate(boxes).astype(float), [width, height, width, height])
    patch_kind: FeatureKind = "patch"
    return Geometry(all_boxes, (patch_kind,) * len(all_boxes), tuple(grids), (width, height))
