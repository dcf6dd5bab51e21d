"""Gradient checkpointing (``model.gradient_checkpointing``): a transformer layer keeps only its input for the
backward pass and runs its forward again there, instead of keeping every intermediate activation.

transformers does the recomputation (``activation_checkpointing_enable``; ``gradient_checkpointing_enable``
before 5.x), non-reentrant (``use_reentrant=False``): that variant needs no input that requires a gradient, so it
works with frozen embeddings under LoRA, and it gives the same gradients as the plain backward. transformers checkpoints only in training mode; sampling and the rollout's
log-probs run in eval mode, so generation keeps its KV cache and pays nothing.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper, or ``model`` itself."""
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on non-reentrant gradient checkpointing in a transformers model (peft-wrapped or not)."""
    inner = transformers_model(model)
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise ConfigError(f"model.gradient_checkpointing: {type(inner).__name__} does not support gradient "
                          "checkpointing in transformers; set it to false")
    options = {"use_reentrant": False}
    if callable(getattr(inner, "activation_checkpointing_enable", None)):  # transformers >= 5 renamed it
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
