"""Load any adapter the pipeline wrote onto a base model, from plain Python: the documented
counterpart of ``peft.PeftModel.from_pretrained`` for the methods PEFT does not have (ADePT,
DePT), and for PT and LoRA too.

    from transformers import AutoModelForCausalLM
    from pipeline import load_adapter

    base = AutoModelForCausalLM.from_pretrained(BASE)
    model = load_adapter(base, "runs/NAME/export/adapter")
    logits = model(input_ids).logits                     # (B, n, V), as the base model's
    ids = model.generate(input_ids, max_new_tokens=20)   # greedy, (B, n + new)

The model computes exactly what the pipeline's training, evaluation and ``pipeline predict``
compute (the same wrapper), with the soft prompt in front of the tokenizer's ids and ADePT's
token FFN on every input token.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from .generation import greedy_generate
from .wrapper import SoftPromptModel


class AdapterForCausalLM(nn.Module):
    """An adapter on its base, called as a transformers causal LM is: ``forward(input_ids,
    attention_mask, labels)`` gives logits at every input position (and the shifted-label
    loss), ``generate`` continues each row greedily. ``.adapter``: the pipeline's wrapper."""

    def __init__(self, adapter: SoftPromptModel) -> None:
        super().__init__()
        self.adapter = adapter.eval()

    @property
    def config(self):
        return self.adapter.base.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        logits = self.adapter.logits(input_ids, attention_mask)
        loss = None
        if labels is not None:  # position t predicts token t + 1, as transformers' models do
            loss = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy continuation of every row: ``input_ids`` followed by the new tokens, up to
        ``max_new_tokens`` and through the first ``eos_token_id``; shorter rows are padded
        with ``pad_token_id`` (default: the base config's, else the first eos id)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        new = greedy_generate(self.adapter, input_ids, attention_mask, max_new_tokens, stops)
        pad = pad_token_id if pad_token_id is not None else self.config.pad_token_id
        pad = pad if pad is not None else min(stops, default=0)
        ended = [[*row, min(stops)] if stops and len(row) < max_new_tokens else row for row in new]
        width = max(len(row) for row in ended)
        tail = torch.full((len(ended), width), pad, dtype=input_ids.dtype)
        for i, row in enumerate(ended):
            tail[i, : len(row)] = torch.tensor(row, dtype=input_ids.dtype)
        return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def load_adapter(
    base: nn.Module, directory: str | os.PathLike, shared_prefix: bool = True
) -> AdapterForCausalLM:
    """The adapter in ``directory`` (any method, any format the pipeline wrote) on ``base``."""
    return AdapterForCausalLM(SoftPromptModel.from_pretrained(base, directory, shared_prefix))
