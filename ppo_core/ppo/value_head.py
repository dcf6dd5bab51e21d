"""The critic: an MLP value head on a backbone's last hidden state."""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """V(s_t) = W2 · tanh(W1 · h_t + b1) + b2, with W2 and b2 zero-initialised (V starts at 0 everywhere)."""

    def __init__(self, hidden_size: int, inner_size: int | None = None):
        super().__init__()
        inner_size = inner_size or hidden_size
        self.dense = nn.Linear(hidden_size, inner_size)
        self.out = nn.Linear(inner_size, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.dense(hidden_states))).squeeze(-1)
