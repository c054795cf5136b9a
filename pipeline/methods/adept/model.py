"""ADePT: a token-shared FFN offsets every input-token embedding.

    h_i  = ReLU(Dropout(e_i A + a))      A: d×r, kaiming-uniform as the authors hold it, a = 0
    e_i' = e_i + h_i B + b               B: r×d = 0, b = 0  → the offset is zero at step 0

Initialisation follows the authors' code (HungerPWAY/ADePT ``prompt_tuning_lorax.py``): A is a
d×r tensor given ``kaiming_uniform_(a=√5)``, whose fan-in is r, so A ~ U(±1/√r). ``nn.Linear(d,
r)`` stores the same matrix as r×d (fan-in d) and the same call would give U(±1/√d), √(d/r) times
smaller (5.8× on Gemma 3 270M); B starts at zero, so its first gradients scale with A and a small
A slows the FFN's start.

Budget and rank rule: :mod:`.config`. Because the offset depends on e_i only, for a frozen embedding
table it folds into a copy of the table, E'[v] = e_v + FFN(e_v) (eval mode), so inference needs
no FFN at all.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..wrapper import SoftPromptModel
from .config import ADePTConfig


def authors_down_init(d: int, rank: int) -> torch.Tensor:
    """A (d×r) as the authors initialise it: kaiming-uniform with fan-in r, i.e. U(±1/√r)."""
    down = torch.empty(d, rank)
    nn.init.kaiming_uniform_(down, a=math.sqrt(5))
    return down


class TokenFFNOffset(nn.Module):
    """The residual bottleneck FFN applied to each input token (never to the prompt)."""

    def __init__(self, config: ADePTConfig, d: int) -> None:
        super().__init__()
        self.down = nn.Linear(d, config.rank)
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.Linear(config.rank, d)
        self.down.weight.data.copy_(authors_down_init(d, config.rank).T)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = embeds.to(self.down.weight.dtype)
        offset = self.up(torch.relu(self.dropout(self.down(x))))
        return embeds + offset.to(embeds.dtype)

    @torch.no_grad()
    def fold(self, embedding: nn.Module, vocab_size: int, chunk: int = 8192) -> torch.Tensor:
        """E' = E + FFN(E) for every vocabulary row, in the space ``embedding`` returns.

        Runs in eval mode (no dropout) in chunks so the peak extra memory stays small.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        rows = []
        for start in range(0, vocab_size, chunk):
            ids = torch.arange(start, min(start + chunk, vocab_size), device=device)
            rows.append(self(embedding(ids)))
        self.train(was_training)
        return torch.cat(rows)


class ADePT(SoftPromptModel):
    """ADePT; rank from the PT budget unless given: ``ADePT(base, num_virtual_tokens=60)``."""

    config_class = ADePTConfig

    @classmethod
    def build_offset(cls, config: ADePTConfig, d: int) -> nn.Module:
        return TokenFFNOffset(config, d)

    @torch.no_grad()
    def fold(self) -> ADePT:
        """Fold the token FFN into an input-side copy of the embedding table; eval mode.

        The LM head keeps the original table (it may be tied to the input embedding).
        """
        embedding = self.base.get_input_embeddings()
        folded = self.offset.fold(embedding, self.vocab_size)
        self.folded_embeddings = folded.to(embedding.weight.dtype)
        return self.eval()

    def unfold(self) -> ADePT:
        self.folded_embeddings = None
        return self
