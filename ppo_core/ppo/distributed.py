"""The equations that span ranks (docs/design.md, "Data parallel"): whitening over the whole rollout batch when
each rank holds 1/N of it. In one process they are the functions of :mod:`ppo_core.ppo.functional` themselves."""

from __future__ import annotations

import torch

from ..runtime.distributed import Distributed
from .functional import masked_sum, masked_whiten


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor, dist: Distributed,
                         shift_mean: bool = True) -> torch.Tensor:
    """Eq. 10 over every rank's real tokens: the mean and the unbiased variance from all-reduced sums (Σx, n, then
    Σ(x − mean)²: two passes, as :func:`masked_var`), then this rank's rows whitened with them."""
    if not dist.active:
        return masked_whiten(x, mask, shift_mean)
    mask = mask.bool()
    sums = dist.all_reduce_sum(torch.stack([masked_sum(x, mask).double(), mask.sum().double()]),
                               "whitening over ranks")
    total, n = sums[0], sums[1]
    if n < 2:
        raise ValueError(f"unbiased masked_var needs at least 2 masked entries, got {int(n)}")
    mean = (total / n).to(x.dtype)
    squares = dist.all_reduce_sum(masked_sum((x - mean) ** 2, mask).double(), "whitening over ranks")
    variance = (squares / (n - 1)).to(x.dtype)
    whitened = (x - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))
