"""The PPO equations as small pure torch functions, one equation each.

Shapes: per-token tensors are ``[B, T]`` (batch, response position); ``mask`` is a bool or 0/1 float
tensor of the same shape, True for a real token. Padding never enters a sum, a mean or a variance:
masked-out slots are selected away with ``torch.where`` (not multiplied by 0), so even a nan or inf
sitting in a pad slot cannot leak into a result.

"Eq. N" refers to docs/design.md, "The equations"; "D1".."D11" to its "The details that decide whether it works".
No function here logs, keeps state or modifies its inputs; the two KL controllers are the only classes.
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "logprobs_from_logits",
    "entropy_from_logits",
    "probability_ratio",
    "clipped_policy_loss",
    "clipped_value_loss",
    "kl_penalty",
    "per_token_rewards",
    "last_token_index",
    "gae",
    "aggregate_tokens",
    "aggregation_size",
    "explained_variance",
    "ppo_total_loss",
    "FixedKLController",
    "AdaptiveKLController",
]

# --- masked statistics ---------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Eq. 10: Σ_{t: mask_t} x_t, over all entries (``dim=None``) or along ``dim``."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Eq. 10: Σ_{mask} x / Σ mask, the mean over real tokens only (nan where the mask is empty)."""
    n = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / n.to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Eq. 10: Var = mean_{mask}((x − mean_{mask} x)²) over all masked entries, times n/(n−1) if ``unbiased``.

    As in TRL's ``masked_var``, the unbiased variance of fewer than two entries is a ValueError.
    """
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum()
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 masked entries, got {int(n)}")
        variance = variance * n / (n - 1)
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Eq. 10: x̂ = (x − mean) / sqrt(Var + 1e-8), mean and (unbiased) Var over masked entries; 0 on padding.

    With ``shift_mean=False`` the mean is added back (scale only), as in TRL's ``masked_whiten``.
    """
    mean = masked_mean(x, mask)
    variance = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --- log-probabilities and entropy -----------------------------------------------------------------


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Eq. 0: log π(a_t|s_t) = log softmax(logits / temperature)[a_t]; logits [B, T, V], tokens [B, T] → [B, T].

    The single code path for log-probs in rollout and training (D3): the same temperature in both is what
    makes the ratio exactly 1 on the first minibatch of the first epoch.
    """
    logits = logits / temperature
    # gather − logsumexp instead of a full log_softmax: same value, no second [B, T, V] tensor.
    chosen = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 5: H = −Σ_a π(a|s) log π(a|s) = logsumexp(z) − Σ_a π(a|s)·z_a with z = logits / temperature."""
    logits = logits / temperature
    # H is shift-invariant; subtracting the max keeps logsumexp − Σ π·z free of cancellation.
    logits = logits - logits.amax(dim=-1, keepdim=True).detach()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


# --- PPO objective -------------------------------------------------------------------------------


def probability_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """Eq. 1: r_t = exp(log π_θ(a_t|s_t) − log π_old(a_t|s_t))."""
    return torch.exp(logprobs - old_logprobs)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    aggregation: str = "token_mean",
    normaliser: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 2: loss = −L_clip = −E_t[min(r_t·Â_t, clip(r_t, 1−ε, 1+ε)·Â_t)], over masked tokens (E_t: the
    ``aggregation`` of Eq. 17, the token mean by default).

    Returns ``(loss, clipfrac, approx_kl)``. ``clipfrac`` is the share of tokens where the clipped term
    is the active one (TRL's definition); ``approx_kl`` = E_t[½(log π_θ − log π_old)²]. Both statistics
    are detached token means.
    """
    ratio = probability_ratio(logprobs, old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = aggregate_tokens(torch.max(pg_losses, pg_losses2), mask, aggregation, normaliser)

    with torch.no_grad():
        clipfrac = masked_mean((pg_losses2 > pg_losses).float(), mask)
        approx_kl = masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)
    return loss, clipfrac, approx_kl


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None = None,
    aggregation: str = "token_mean",
    normaliser: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4: L_value = E_t[½(V_θ − R̂)²], or clipped E_t[½·max((V−R̂)², (V_clip−R̂)²)] (E_t: Eq. 17).

    V_clip = V_old + clamp(V − V_old, −c, c). Returns ``(loss, vf_clipfrac)``, the share of tokens where
    the clipped term is the larger one (a 0.0 tensor without clipping; detached).
    """
    vf_losses1 = (values - returns) ** 2
    if clip_range_value is None:
        return 0.5 * aggregate_tokens(vf_losses1, mask, aggregation, normaliser), torch.tensor(0.0)

    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf_losses2 = (values_clipped - returns) ** 2
    loss = 0.5 * aggregate_tokens(torch.max(vf_losses1, vf_losses2), mask, aggregation, normaliser)
    with torch.no_grad():
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)
    return loss, vf_clipfrac


def ppo_total_loss(
    policy_loss: torch.Tensor,
    value_loss: torch.Tensor,
    entropy: torch.Tensor,
    vf_coef: float,
    entropy_coef: float,
) -> torch.Tensor:
    """Eq. 6, minimized: −(L_clip − c1·L_value + c2·H) = policy_loss + c1·value_loss − c2·H."""
    return policy_loss + vf_coef * value_loss - entropy_coef * entropy


# --- KL to the reference and per-token rewards -----------------------------------------------------


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Eq. 7: per-token estimators of KL(p‖q), p = policy, q = reference, sampled a ~ p.

    k1 = log p − log q (unbiased, can be negative); k2 = ½(log p − log q)² (biased, low variance);
    k3 = (q/p − 1) − log(q/p) (unbiased and ≥ 0).
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if estimator == "k3":
        logr = ref_logprobs - logprobs  # log q/p
        return torch.expm1(logr) - logr  # expm1: exact (q/p − 1) when q ≈ p
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of k1, k2, k3")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True in each row of ``mask`` [B, T] → LongTensor [B]; 0 for an all-False row (D2)."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), positions, 0).max(dim=-1).values


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> torch.Tensor:
    """Eq. 8: r_t = −β·KL_t on every real token, plus the sequence score s on the last real token (D2).

    ``scores`` is [B]; ``kl`` [B, T]. Padding gets 0; a row without a real token gets nothing.
    """
    mask = mask.bool()
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    scores = torch.where(mask.any(dim=-1), scores.to(rewards.dtype), 0.0)
    last = last_token_index(mask).unsqueeze(-1)
    score_on_last = torch.zeros_like(rewards).scatter(-1, last, scores.unsqueeze(-1))
    return rewards + score_on_last


# --- advantages ----------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3, GAE: δ_t = r_t + γ·V(s_{t+1}) − V(s_t),  Â_t = Σ_l (γλ)^l δ_{t+l};  R̂_t = Â_t + V(s_t).

    The episode ends at the last real token of each row (mask: real tokens, then padding), so
    V(s_{t+1}) = 0 there. λ = 1 gives Monte Carlo returns minus values, λ = 0 the one-step TD error.
    Returns ``(advantages, returns)``, both 0 on padding.
    """
    mask = mask.bool()
    # Zeroed padding makes δ = 0 past the end and V(s_{t+1}) = 0 at the last real token.
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    values = torch.where(mask, values, torch.zeros_like(values))

    T = rewards.shape[-1]
    advantages_reversed = []
    lastgaelam = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=-1)

    zeros = torch.zeros_like(advantages)
    returns = torch.where(mask, advantages + values, zeros)
    advantages = torch.where(mask, advantages, zeros)
    return advantages, returns


# --- loss aggregation ----------------------------------------------------------------------------


def aggregate_tokens(
    x: torch.Tensor, mask: torch.Tensor, how: str = "token_mean", normaliser: float | None = None
) -> torch.Tensor:
    """Eq. 17: one loss from per-token terms x [B, T] (0 for an empty mask).

    token_mean Σ_{b,t} m·x / Σ m;  sequence_mean: the mean over rows with a real token of Σ_t m·x / Σ_t m;
    token_sum_constant Σ_{b,t} m·x / (C·B), C = ``normaliser`` (Dr. GRPO).
    """
    mask = mask.bool()
    if how == "token_mean":
        return masked_sum(x, mask) / mask.sum().clamp(min=1)
    if how == "sequence_mean":
        per_row = masked_sum(x, mask, dim=-1) / mask.sum(-1).clamp(min=1)
        return per_row.sum() / mask.any(-1).sum().clamp(min=1)
    if how == "token_sum_constant":
        return masked_sum(x, mask) / (normaliser * mask.size(0))
    raise ValueError(f"unknown loss aggregation {how!r}; expected token_mean, sequence_mean or token_sum_constant")


def aggregation_size(mask: torch.Tensor, how: str) -> torch.Tensor:
    """What Eq. 17 divides by, without C: tokens, rows with a token, or rows. A micro-batch's loss weighted by its
    share of the minibatch's size adds up to the minibatch's loss (D5)."""
    mask = mask.bool()
    if how == "token_mean":
        return mask.sum().float()
    if how == "sequence_mean":
        return mask.any(-1).sum().float()
    return torch.tensor(float(mask.size(0)))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 13: EV = 1 − Var(R̂ − V) / Var(R̂) over masked entries (1: perfect critic, 0: no better than a
    constant).

    Undefined when Var(R̂) = 0 (or the mask is empty): then nan, as in Stable-Baselines3. Detached.
    """
    with torch.no_grad():
        var_returns = masked_var(returns, mask, unbiased=False)
        var_residual = masked_var(returns - values, mask, unbiased=False)
        return torch.where(
            var_returns > 0, 1.0 - var_residual / var_returns, torch.full_like(var_returns, float("nan"))
        )


# --- KL coefficient controllers --------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """β stays fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Eq. 9: adaptive β (Ziegler et al. 2019).

    err = clip(KL/target − 1, −0.2, 0.2);  β ← β·(1 + err·n_steps/horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
