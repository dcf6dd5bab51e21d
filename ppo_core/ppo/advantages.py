"""Advantage estimators beside plain GAE (``functional.gae``), as small pure torch functions: GAE over an
environment's action tokens (Eq. 18) and the critic-free estimators (Eq. 14-16: GRPO, Dr. GRPO, RLOO, REINFORCE++).

Shapes and masks as in :mod:`ppo_core.ppo.functional`; "Eq. N" refers to docs/design.md, "The equations".
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch

from .functional import gae, masked_sum

__all__ = [
    "gae_over_actions",
    "group_relative_advantages",
    "leave_one_out_advantages",
    "discounted_returns",
    "sequence_to_tokens",
    "estimate_advantages",
]


def gae_over_actions(
    rewards: torch.Tensor,
    values: torch.Tensor,
    action_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 18, GAE over action tokens only: Eq. 3 on the sequence of the tokens the model generated, in order.

    Observation tokens (an environment's, between two turns) are context, not time steps: the value after a
    turn's last action token is the value at the next turn's first action token, and they take no discount.
    Computed by packing each row's action tokens to the front (a stable sort keeps their order), running
    :func:`gae` there and putting the results back; with no gaps (one turn) the packing is the identity, so the
    result is :func:`gae`'s, bit for bit. Returns ``(advantages, returns)``, 0 off the action tokens.
    """
    mask = action_mask.bool()
    order = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices  # action positions first
    packed_advantages, packed_returns = gae(rewards.gather(-1, order), values.gather(-1, order),
                                            mask.gather(-1, order), gamma, lam)
    advantages = torch.zeros_like(packed_advantages).scatter(-1, order, packed_advantages)
    returns = torch.zeros_like(packed_returns).scatter(-1, order, packed_returns)
    return advantages, returns


def group_relative_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14, GRPO: Â_i = (R_i − mean_g R) / (std_g R + ε); Dr. GRPO (``scale_by_std=False``): R_i − mean_g R.

    ``rewards`` [B]: rows g·n .. g·n + n − 1 are the n samples of prompt g; std is unbiased (n − 1). A group whose
    rewards are all equal (a group of 1 included) has nothing to compare: its advantages are exactly 0. Returns
    ``(advantages [B], the number of such groups)``.
    """
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale_by_std and group_size > 1:
        advantages = advantages / (grouped.std(-1, keepdim=True) + eps)
    equal = grouped.amax(-1) == grouped.amin(-1)
    return torch.where(equal.unsqueeze(-1), 0.0, advantages).reshape(-1), equal.sum()


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 15, RLOO: Â_i = R_i − (Σ_{j≠i} R_j) / (n − 1), the mean of the other samples of the same prompt.

    Grouping, equal-reward groups (0) and the returned count as :func:`group_relative_advantages`.
    """
    grouped = rewards.view(-1, group_size)
    equal = grouped.amax(-1) == grouped.amin(-1)
    if group_size == 1:
        return torch.zeros_like(rewards), equal.sum()
    others = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return torch.where(equal.unsqueeze(-1), 0.0, grouped - others).reshape(-1), equal.sum()


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 16, REINFORCE++: G_t = Σ_{l≥0} γ^l·r_{t+l} to the row's last real token, 0 on padding: GAE over
    the action tokens (Eq. 18) with V ≡ 0 and λ = 1."""
    return gae_over_actions(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[0]


def sequence_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One value per row [B] on every real token of that row [B, T]; 0 on padding."""
    return torch.where(mask.bool(), values.unsqueeze(-1), 0.0)


# per-sequence advantages of the group estimators (Eq. 14, 15): (rewards [B], n) -> (advantages [B], equal groups)
GROUP_ADVANTAGES = {
    "grpo": group_relative_advantages,
    "dr_grpo": partial(group_relative_advantages, scale_by_std=False),
    "rloo": leave_one_out_advantages,
}


def estimate_advantages(
    estimator: str,
    rewards: torch.Tensor,
    values: Optional[torch.Tensor],
    action_mask: torch.Tensor,
    gamma: float,
    lam: float,
    group_size: int,
) -> tuple[torch.Tensor, Optional[torch.Tensor], dict[str, float]]:
    """The advantages of ``estimator`` (``ppo.advantage``) from per-token rewards [B, T], before any whitening;
    the critic's returns (gae only, else None); the estimator's statistics.

    gae: Eq. 18 over the values (Eq. 3 with one turn). reinforce_pp: the discounted returns of the per-token
    rewards (Eq. 16). The group estimators: one advantage per response from its summed per-token rewards (the
    score, minus beta * its KL when the KL is in the reward, plus an environment's turn rewards), compared within
    its prompt's group (Eq. 14, 15) and put on every action token of the response.
    """
    if estimator == "gae":
        advantages, returns = gae_over_actions(rewards, values, action_mask, gamma, lam)
        return advantages, returns, {}
    if estimator == "reinforce_pp":
        return discounted_returns(rewards, action_mask, gamma), None, {}
    per_response, equal_groups = GROUP_ADVANTAGES[estimator](masked_sum(rewards, action_mask, dim=1), group_size)
    return sequence_to_tokens(per_response, action_mask), None, {"advantage/zero_std_groups": float(equal_groups)}
