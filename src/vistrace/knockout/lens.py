"""The answer's probability read after every decoder layer (a logit lens at the scored positions).

After layer l, the hidden state of the position that predicts answer token i goes through the model's
own final norm and LM head (the family adapter's finisher, so norm, head and any logit
post-processing are the model's) and softmax at temperature T; the probability of token i is read.
The state "after layer l" is what layer l+1 receives (for Qwen3-VL that includes the DeepStack
addition made after layer l); after the last layer, that layer's output, so the last row equals the
model's own answer probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vistrace import compat
from vistrace.adapters import PreparedPrompt, traced
from vistrace.hook import Plan
from vistrace.models.loading import LoadedModel


def answer_probability_by_layer(
    loaded: LoadedModel,
    prepared: PreparedPrompt,
    answer_tokens: Sequence[int],
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(L, T) float64: probability of answer token i (teacher forced) read after decoder layer l.

    Raises ValueError for an empty answer.
    """
    if not answer_tokens:
        raise ValueError("the answer has no tokens to score")
    model, adapter = loaded.model, loaded.adapter
    answer = [int(t) for t in answer_tokens]
    prompt_len = int(prepared.input_ids.shape[1])
    ids = torch.cat([prepared.input_ids[0], torch.tensor(answer[:-1], dtype=torch.long)])[None]
    inputs = {k: v.to(loaded.device) for k, v in adapter.extend_inputs(prepared.inputs, ids).items()}
    layers = compat.decoder_layers(model)
    rows = slice(prompt_len - 1, prompt_len - 1 + len(answer))
    states: dict[int, torch.Tensor] = {}

    def keep_input(index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            states[index - 1] = hidden[0, rows].detach()

        return hook

    def keep_last(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        states[len(layers) - 1] = hidden[0, rows].detach()

    handles = [
        layers[i].register_forward_pre_hook(keep_input(i), with_kwargs=True) for i in range(1, len(layers))
    ]
    handles.append(layers[-1].register_forward_hook(keep_last))
    try:
        with torch.no_grad(), traced(model, Plan(cross_layers=adapter.cross_layers(model))):
            model(**inputs)
            finish = adapter.finisher(model)
            stacked = torch.stack([states[i] for i in range(len(layers))])  # (L, T, hidden)
            logits = finish(stacked.reshape(-1, stacked.shape[-1])).float()
    finally:
        for handle in handles:
            handle.remove()
    probs = torch.softmax(logits / temperature, dim=-1).reshape(len(layers), len(answer), -1)
    index = torch.tensor(answer, device=probs.device)[None, :, None].expand(len(layers), -1, 1)
    return probs.gather(2, index)[..., 0].double().cpu()
