"""The optimizer, the learning-rate schedule and the gradient clipping every training command uses
(`train`, `sft`, `train-reward`)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from ..config import OptimConfig

# tensors, or param groups ({"params": [...], "lr": ...}) as torch.optim takes them
Params = Union[Iterable[nn.Parameter], Iterable[dict[str, Any]]]


def make_optimizer(params: Params, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW over the parameters that require a gradient; fused when every parameter allows it (unless
    ``fused`` is false: torch's default kernel, which rounds differently in the last bits)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{**group, "params": [p for p in group["params"] if p.requires_grad]} for group in params]
    else:
        groups = [{"params": [p for p in params if p.requires_grad]}]
    flat = [p for group in groups for p in group["params"]]
    # fused: one kernel per step instead of ~8 per parameter (and no .item() per parameter); CPU and CUDA
    fused = fused and bool(flat) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in flat)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)


def optimizer_for(model: nn.Module, optim: OptimConfig, lr: Optional[float] = None,
                  fused: bool = True) -> torch.optim.Optimizer:
    """:func:`make_optimizer` over a model's parameters as a run config's ``optim`` section says."""
    return make_optimizer(model.parameters(), lr or optim.lr, optim.weight_decay, optim.betas, optim.eps, fused)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up to 1, then constant, linear or cosine decay reaching 0 after the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                   schedule: str = "constant") -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate of optimizer step ``s`` is ``lr * lr_multiplier(s, ...)``.

    Not ``transformers.get_scheduler``: its warm-up starts at 0 (``s / warmup``, ours ``(s + 1) / warmup``)
    and its linear decay, ``(T - s) / (T - w)``, differs from ``1 - (s - w) / (T - w)`` in the last bit at
    some steps, so resumed runs and published numbers would change. torch's LinearLR and CosineAnnealingLR
    update the rate recursively and drift from the closed form.
    """
    # a plain function (not a partial) keeps the scheduler's state_dict, and so checkpoints, as they were
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, schedule))


def clip_gradients(params: Iterable[nn.Parameter], max_norm: Optional[float]) -> float:
    """The global L2 norm of the gradients (before clipping), clipped to ``max_norm`` unless it is None.

    Non-finite gradients give a non-finite norm (and are not clipped into finite ones): the caller skips the step.
    """
    params = [p for p in params if p.grad is not None]
    if max_norm is None:
        # for the statistics only: one foreach kernel rather than a norm per parameter
        grads = [p.grad.detach() for p in params]
        return float(torch.nn.utils.get_total_norm(grads, foreach=True)) if grads else 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
