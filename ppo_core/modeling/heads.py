"""The one MLP head: the critic's value head and a learned reward's head are the same module."""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import nn

HeadInit = Literal["zero_output", "normal"]


class MLPHead(nn.Module):
    """y = W2 · tanh(W1 · h + b1) + b2 on a final hidden state h [..., d] -> [...].

    ``init="zero_output"`` (the value head): W1, b1 as torch initialises a Linear, W2 and b2 zero, so V starts at 0
    everywhere. ``init="normal"`` (a reward head): every weight from N(0, 1/sqrt(d_in + 1)) (d_in: the layer's
    input width), biases 0, so the untrained head already separates inputs.
    """

    def __init__(self, hidden_size: int, inner_size: Optional[int] = None, init: HeadInit = "zero_output"):
        super().__init__()
        inner_size = inner_size or hidden_size
        self.dense = nn.Linear(hidden_size, inner_size)
        self.out = nn.Linear(inner_size, 1)
        if init == "zero_output":
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        elif init == "normal":
            for layer in (self.dense, self.out):
                nn.init.normal_(layer.weight, mean=0.0, std=1.0 / math.sqrt(layer.in_features + 1))
                nn.init.zeros_(layer.bias)
        else:
            raise ValueError(f"unknown head init {init!r}")

    @property
    def hidden_size(self) -> int:
        return self.dense.in_features

    @property
    def inner_size(self) -> int:
        return self.dense.out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.dense(hidden_states))).squeeze(-1)
