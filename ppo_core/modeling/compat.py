"""Where transformers releases differ: renamed forward arguments, and activations torch fuses."""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch
from torch import nn


class FusedGELUTanh(nn.Module):
    """GELU, tanh approximation, as one fused torch kernel: the function of transformers' ``gelu_new``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module) -> nn.Module:
    """Swap transformers' Python tanh-GELU (``NewGELUActivation``, GPT-2's ``gelu_new``: 8 elementwise kernels
    forward and more backward) for torch's fused kernel of the same formula (differences are float rounding,
    below 1e-6). Only the module objects change: the config, and so every saved checkpoint, stays as it was."""
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - very old or very new transformers
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, FusedGELUTanh())
    return model


@functools.cache
def _forward_argument(model_class: type, names: tuple[str, ...]) -> Optional[str]:
    parameters = inspect.signature(model_class.forward).parameters
    return next((name for name in names if name in parameters), None)


def forward_argument(model: nn.Module, *names: str) -> Optional[str]:
    """The first of ``names`` that the model's forward accepts (transformers renames arguments across
    releases), or None. A wrapper that passes its keywords through (a peft model) is asked about its base."""
    base = getattr(model, "get_base_model", None)
    return _forward_argument(type(base() if callable(base) else model), names)


def logits_to_keep(model: nn.Module, count: int) -> dict:
    """Forward keyword asking a causal LM for the logits of its last ``count`` positions only, or {} when the
    model cannot (it then returns all of them; callers slice the end either way). Real vocabularies make the
    logits over prompt positions the largest tensor of a forward, and nothing reads them."""
    name = forward_argument(model, "logits_to_keep", "num_logits_to_keep")  # transformers >= 4.50, and older
    return {name: count} if name else {}
