"""Result objects of the Python API: a knockout sweep of one sample, the image attention of one answer.

Both are frozen, save to safetensors + JSON (never pickle), turn into pandas tables and draw on a
matplotlib `ax` the caller gives (or a new figure), without touching matplotlib's backend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vistrace.capture.generate import StageCapture
from vistrace.capture.pooling import pool_tokens, token_image_attention
from vistrace.knockout import scores
from vistrace.plots.attention_maps import feature_raster


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(7, 4))
    return ax


def _paths(path: str | Path) -> tuple[Path, Path]:
    """(tensors file, metadata file) of a result saved under `path` (suffix ignored)."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".safetensors", ".json") else base
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


@dataclass(frozen=True, eq=False)
class KnockoutSweep:
    """Answer probability of one sample with each pathway blocked in a window sliding over the layers.

    - `probs`: (P, L) float64, `probs[i, l]` = probability of the answer with `pathways[i]` blocked in
      the window of `window` layers centred on layer `l` (FlowTracker's definition, SPEC "Window").
    - `p_full`: the answer's probability with nothing blocked.
    - `answer_tokens`: the scored token ids (EOS removed); the probability is their product under
      teacher forcing, softmax at `temperature`.
    - `mode` (`strict` or `paper`), `strategy` (`fast` or `naive`): how it was computed.
    - `cross_attention_layers`: layers whose keys are image features (Mllama), for plots.
    - `token_probs`: (P, L, T) the per-token probabilities behind `probs`, `p_full_tokens`: (T,)
      unblocked; any score of `vistrace.knockout.scores` is computed from them (`score`, `change`).
    """

    pathways: tuple[str, ...]
    probs: torch.Tensor
    p_full: float
    window: int
    mode: str
    temperature: float
    strategy: str
    answer_tokens: tuple[int, ...]
    cross_attention_layers: tuple[int, ...] = ()
    layer_evaluations: int = 0
    token_probs: torch.Tensor | None = None
    p_full_tokens: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return int(self.probs.shape[1])

    def score(self, name: str = "product") -> tuple[torch.Tensor, torch.Tensor]:
        """((P, L) blocked, () full) values of score `name` (`vistrace.knockout.scores`)."""
        if name == "product":
            return self.probs, torch.tensor(self.p_full, dtype=torch.float64)
        if self.token_probs is None or self.p_full_tokens is None:
            raise ValueError("this sweep kept no per-token probabilities: only the product score is known")
        return scores.score(name, self.token_probs), scores.score(name, self.p_full_tokens)

    def change(self, score: str = "product") -> torch.Tensor:
        """(P, L) change of the answer's score, percent: (blocked − full) / full × 100 (for the default
        `product`, the answer probability's change as FlowTracker defines it)."""
        blocked, full = self.score(score)
        return scores.change(score, blocked, full)

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per (pathway, layer): probability and change (percent)."""
        import pandas as pd

        change = self.change()
        rows = [
            {
                "pathway": name,
                "layer": layer,
                "probability": float(self.probs[i, layer]),
                "change": float(change[i, layer]),
            }
            for i, name in enumerate(self.pathways)
            for layer in range(self.num_layers)
        ]
        return pd.DataFrame(rows)

    def plot(self, ax: Any = None) -> Any:
        """Change in answer probability (percent) per window centre, one line per pathway; returns `ax`."""
        ax = _axes(ax)
        change = self.change().numpy()
        for i, name in enumerate(self.pathways):
            ax.plot(range(self.num_layers), change[i], label=name)
        for layer in self.cross_attention_layers:
            ax.axvline(layer, color="0.85", linewidth=0.8, zorder=0)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xlabel("layer (window centre)")
        ax.set_ylabel("change in answer probability (%)")
        ax.set_title(f"k = {self.window}, {self.mode} mode, p_full = {self.p_full:.3g}")
        ax.legend(fontsize="small")
        return ax

    def save(self, path: str | Path) -> Path:
        """Write `path`.safetensors (the probabilities) and `path`.json (the rest); returns the JSON."""
        tensors, meta = _paths(path)
        tensors.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"probs": self.probs.contiguous()}
        if self.token_probs is not None and self.p_full_tokens is not None:
            arrays["token_probs"] = self.token_probs.contiguous()
            arrays["p_full_tokens"] = self.p_full_tokens.contiguous()
        save_file(arrays, str(tensors))
        data = {
            "kind": "knockout_sweep",
            "pathways": list(self.pathways),
            "p_full": self.p_full,
            "window": self.window,
            "mode": self.mode,
            "temperature": self.temperature,
            "strategy": self.strategy,
            "answer_tokens": list(self.answer_tokens),
            "cross_attention_layers": list(self.cross_attention_layers),
            "layer_evaluations": self.layer_evaluations,
        }
        meta.write_text(json.dumps(data, indent=2) + "\n")
        return meta

    @classmethod
    def load(cls, path: str | Path) -> KnockoutSweep:
        """Read a sweep written by `save`."""
        tensors, meta = _paths(path)
        data = json.loads(meta.read_text())
        if data.get("kind") != "knockout_sweep":
            raise ValueError(f"{meta}: not a saved knockout sweep")
        arrays = load_file(str(tensors))
        return cls(
            pathways=tuple(data["pathways"]),
            probs=arrays["probs"],
            p_full=float(data["p_full"]),
            window=int(data["window"]),
            mode=str(data["mode"]),
            temperature=float(data["temperature"]),
            strategy=str(data["strategy"]),
            answer_tokens=tuple(int(t) for t in data["answer_tokens"]),
            cross_attention_layers=tuple(int(i) for i in data["cross_attention_layers"]),
            layer_evaluations=int(data.get("layer_evaluations", 0)),
            token_probs=arrays.get("token_probs"),
            p_full_tokens=arrays.get("p_full_tokens"),
        )


@dataclass(frozen=True, eq=False)
class ImageAttention:
    """How much every generated token of one answer attends to every image feature.

    `stage.image_attention` is (T, layers, heads, N): T generated tokens, the decoder layers that
    see the image (`stage.layers`), the heads, the N image features of `stage.geometry` (boxes in
    original-image pixels). `image` is the image the model saw, for drawing.
    """

    stage: StageCapture
    image: Any = field(default=None, compare=False)

    @property
    def attention(self) -> torch.Tensor:
        """(T, layers, heads, N) attention weights."""
        return self.stage.image_attention

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.stage.output_pieces or self.stage.output_tokens

    @property
    def text(self) -> str:
        return self.stage.text

    def map(self, pool: str = "top_k_mean", top_k: int = 3, tokens: slice | None = None) -> torch.Tensor:
        """(N,) attention on each image feature: layers and heads pooled per token with `pool` (the
        Volcano paper's mean of the top-3 layers, then of the top-3 heads, by default; `mean`, `max`),
        then averaged over the chosen tokens (default: every token but a final EOS)."""
        per_token = pool_tokens(self.attention.float(), pool, top_k)
        chosen = tokens if tokens is not None else slice(0, self.stage.content_tokens or None)
        return per_token[chosen].mean(dim=0)

    def per_token(self) -> torch.Tensor:
        """(T,) how much each generated token looks at the image: summed over features, L2 norm over
        heads, then over layers (the Volcano paper's Figure 4, step 2)."""
        return token_image_attention(self.attention.float())

    def plot_image(self, ax: Any = None, pool: str = "top_k_mean", alpha: float = 0.6) -> Any:
        """The pooled map drawn over the image (geometry from the capture); returns `ax`."""
        ax = _axes(ax)
        values = self.map(pool).numpy()
        raster = feature_raster(values, self.stage.geometry)
        if self.image is not None:
            ax.imshow(self.image)
        ax.imshow(np.ma.masked_invalid(raster), cmap="jet", alpha=alpha)
        ax.set_axis_off()
        return ax

    def plot_text(self, ax: Any = None) -> Any:
        """The answer's tokens as a bar chart of their attention to the image; returns `ax`."""
        ax = _axes(ax)
        values = self.per_token().numpy()
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), [t.replace("$", r"\$") for t in self.tokens], rotation=90)
        ax.set_ylabel("attention to the image")
        return ax

    def save(self, path: str | Path) -> Path:
        """Write `path`.safetensors (the attention) and `path`.json (tokens, geometry …)."""
        tensors, meta = _paths(path)
        tensors.parent.mkdir(parents=True, exist_ok=True)
        save_file({"image_attention": self.attention.contiguous()}, str(tensors))
        meta.write_text(json.dumps({"kind": "image_attention", **self.stage.to_dict()}, indent=2) + "\n")
        return meta

    @classmethod
    def load(cls, path: str | Path, image: Any = None) -> ImageAttention:
        """Read an attention written by `save` (give `image` to draw over it)."""
        tensors, meta = _paths(path)
        data = json.loads(meta.read_text())
        if data.get("kind") != "image_attention":
            raise ValueError(f"{meta}: not a saved image attention")
        stage = StageCapture.from_dict(data, load_file(str(tensors))["image_attention"])
        return cls(stage, image)
