"""Pathways (which queries may not attend to which keys) and the sliding windows of layers.

Definitions from FlowTracker (Information Flow in MLLMs, the authors' `attention_knockout` code):
a pathway `src_to_dst` blocks the attention of `dst` rows to `src` keys; a window of k layers is
centred on each layer in turn and clipped at the model's first and last layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from vistrace.roles import Role

PAPER_PATHWAYS = ("last_to_last", "question_to_last", "image_to_last", "image_to_question")


@dataclass(frozen=True)
class Pathway:
    """Queries of role `dst` may not attend to keys of role `src` (CLI name `src_to_dst`)."""

    src: Role
    dst: Role

    @property
    def name(self) -> str:
        return f"{self.src.name.lower()}_to_{self.dst.name.lower()}"

    @classmethod
    def parse(cls, name: str) -> Pathway:
        parts = name.strip().lower().split("_to_")
        if len(parts) != 2:
            raise ValueError(f"pathway {name!r} is not of the form src_to_dst (e.g. image_to_last)")
        return cls(Role.parse(parts[0]), Role.parse(parts[1]))


def window_layers(centre: int, k: int, n_layers: int) -> range:
    """Layers of the window of size `k` centred at `centre`, clipped at the edges (an even k gives k+1)."""
    half = k // 2
    return range(max(0, centre - half), min(n_layers, centre + half + 1))
