"""The teacher-forced sequence a knockout scores: the prompt, then the answer tokens before the one
scored, with each step's roles, image rows and model inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vistrace.adapters import Adapter, PreparedPrompt
from vistrace.hook.plan import KnockoutMode
from vistrace.roles import paper_roles, with_answer


@dataclass
class TeacherForced:
    """The teacher-forced sequence prompt + answer[:-1] and its per-step views."""

    prepared: PreparedPrompt
    answer: tuple[int, ...]
    mode: KnockoutMode

    @property
    def prompt_len(self) -> int:
        return int(self.prepared.input_ids.shape[1])

    def ids(self, upto: int) -> torch.Tensor:
        """(1, upto) ids of the sequence prompt + answer tokens."""
        full = torch.cat([self.prepared.input_ids[0], torch.tensor(self.answer[:-1], dtype=torch.long)])
        return full[None, :upto]

    def roles(self, step: int) -> torch.Tensor:
        """(P + step,) roles when scoring answer token `step` (mode's assignment)."""
        strict = with_answer(self.prepared.roles, step)
        return paper_roles(strict) if self.mode == "paper" else strict

    def image_rows(self, length: int) -> torch.Tensor:
        rows = self.prepared.image_rows
        extra = rows[-1:].expand(length - rows.shape[0]) if length > rows.shape[0] else rows[:0]
        return torch.cat([rows, extra])[:length]

    def model_inputs(self, upto: int, adapter: Adapter) -> dict[str, torch.Tensor]:
        """Processor inputs extended with the fed answer tokens (naive passes, clean run), every
        per-token input extended as the family's adapter says."""
        return adapter.extend_inputs(self.prepared.inputs, self.ids(upto))
