"""Every equation in ppo_core.ppo.functional against numbers worked out by hand (or a naive reference)."""

import json
import math

import pytest
import torch

from ppo_core.ppo import functional as F

ATOL = 1e-6


def ft(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(actual, expected, atol=ATOL, equal_nan=False):
    # A plain allclose: torch.testing.assert_close costs ~1 s of lazy imports on first use.
    expected = torch.as_tensor(expected, dtype=torch.float32)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual.float(), expected, atol=atol, rtol=0.0, equal_nan=equal_nan), (actual, expected)


# --- masked statistics ---------------------------------------------------------------------------

# Real entries 1, 2, 3, 4: mean 2.5, biased var 5/4, unbiased var 5/3.
X = ft([1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
X_JUNK_PADDING = ft([1.0, 2.0, 3.0, 1e6], [4.0, float("nan"), -1e6, float("inf")])


def test_masked_sum_and_mean_by_hand():
    close(F.masked_sum(X, MASK), 10.0)
    close(F.masked_sum(X, MASK, dim=1), [6.0, 4.0])
    close(F.masked_mean(X, MASK), 2.5)
    close(F.masked_mean(X, MASK, dim=1), [2.0, 4.0])
    # Column-wise; the all-padding column has no mean.
    close(F.masked_mean(X, MASK, dim=0), [2.5, 2.0, 3.0, float("nan")], equal_nan=True)
    close(F.masked_mean(X, MASK.float()), 2.5)  # a 0/1 float mask works the same


def test_masked_var_by_hand():
    close(F.masked_var(X, MASK, unbiased=False), 1.25)
    close(F.masked_var(X, MASK), 5.0 / 3.0)
    close(F.masked_var(X, MASK.float()), 5.0 / 3.0)


def test_masked_var_unbiased_needs_two_entries():
    with pytest.raises(ValueError, match="at least 2"):
        F.masked_var(X, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))


def test_masked_whiten_by_hand():
    expected = (X - 2.5) / math.sqrt(5.0 / 3.0 + 1e-8) * MASK
    whitened = F.masked_whiten(X, MASK)
    close(whitened, expected)
    close(F.masked_mean(whitened, MASK), 0.0)
    close(F.masked_var(whitened, MASK), 1.0, atol=1e-5)
    close(F.masked_whiten(X, MASK, shift_mean=False), (expected + 2.5) * MASK)


@pytest.mark.parametrize(
    "stat",
    [
        lambda x, m: F.masked_sum(x, m),
        lambda x, m: F.masked_sum(x, m, dim=1),
        lambda x, m: F.masked_mean(x, m),
        lambda x, m: F.masked_mean(x, m, dim=1),
        lambda x, m: F.masked_var(x, m),
        lambda x, m: F.masked_var(x, m, unbiased=False),
        lambda x, m: F.masked_whiten(x, m),
        lambda x, m: F.masked_whiten(x, m, shift_mean=False),
    ],
)
def test_masked_statistics_ignore_padding(stat):
    """Changing (even to nan/inf) what sits in padded slots does not change the result."""
    assert torch.equal(stat(X_JUNK_PADDING, MASK), stat(X, MASK))


# --- log-probs and entropy -----------------------------------------------------------------------

# Two actions with logits [0, ln 3]: π = [1/4, 3/4]. At temperature 0.5: [0, 2 ln 3] → π = [1/10, 9/10].
TWO_LOGITS = torch.tensor([[[0.0, math.log(3.0)]]])


def test_logprobs_from_logits_by_hand_with_temperature():
    a1 = torch.tensor([[1]])
    a0 = torch.tensor([[0]])
    close(F.logprobs_from_logits(TWO_LOGITS, a1), [[math.log(0.75)]])
    close(F.logprobs_from_logits(TWO_LOGITS, a0), [[math.log(0.25)]])
    close(F.logprobs_from_logits(TWO_LOGITS, a1, temperature=0.5), [[math.log(0.9)]])
    # Temperature 2: logits [0, ln √3] → π(a1) = √3 / (1 + √3).
    close(F.logprobs_from_logits(TWO_LOGITS, a1, temperature=2.0), [[math.log(math.sqrt(3) / (1 + math.sqrt(3)))]])


def test_logprobs_from_logits_matches_log_softmax_and_is_stable():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(F.logprobs_from_logits(logits, tokens, temperature=0.7), expected, atol=1e-5)
    # A huge common offset changes nothing and does not overflow.
    close(F.logprobs_from_logits(logits + 1e4, tokens, temperature=0.7), expected, atol=1e-2)
    assert F.logprobs_from_logits(logits, tokens).shape == (3, 5)


def test_logprob_and_entropy_gradients_match_the_textbook_form():
    # ∂ log π(a)/∂z = (onehot(a) − π) / temperature; at temperature 0.5 π = [1/10, 9/10].
    logits = TWO_LOGITS.clone().requires_grad_()
    F.logprobs_from_logits(logits, torch.tensor([[1]]), temperature=0.5).sum().backward()
    close(logits.grad, [[[-0.1 / 0.5, 0.1 / 0.5]]])

    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 3, 6, generator=g)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    F.entropy_from_logits(z1, temperature=0.7).sum().backward()
    torch.distributions.Categorical(logits=z2 / 0.7).entropy().sum().backward()
    close(z1.grad, z2.grad, atol=1e-5)


def test_entropy_uniform_is_log_v_at_any_temperature():
    V = 8
    logits = torch.zeros(2, 3, V)
    for temperature in (1.0, 0.5, 3.0):
        close(F.entropy_from_logits(logits, temperature), torch.full((2, 3), math.log(V)))
    close(F.entropy_from_logits(torch.full((1, 1, V), 1e4)), [[math.log(V)]], atol=1e-5)


def test_entropy_by_hand_with_temperature():
    def h(p):
        return -sum(pi * math.log(pi) for pi in p)

    close(F.entropy_from_logits(TWO_LOGITS), [[h([0.25, 0.75])]])  # 0.562335
    close(F.entropy_from_logits(TWO_LOGITS, temperature=0.5), [[h([0.1, 0.9])]])  # 0.325083
    assert abs(h([0.25, 0.75]) - 0.562335) < 1e-6 and abs(h([0.1, 0.9]) - 0.325083) < 1e-6


# --- ratio and clipped policy loss ---------------------------------------------------------------


def test_probability_ratio_by_hand():
    logprobs = ft([math.log(2.0) - 1.0, -3.0])
    old_logprobs = ft([-1.0, -3.0 + math.log(4.0)])
    close(F.probability_ratio(logprobs, old_logprobs), [[2.0, 0.25]])


def test_ratio_is_exactly_one_through_the_single_logprob_path():
    """Rollout and training both call logprobs_from_logits with the sampling temperature."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 13, generator=g)
    tokens = torch.randint(0, 13, (2, 6), generator=g)
    old_logprobs = F.logprobs_from_logits(logits, tokens, temperature=0.7)
    logprobs = F.logprobs_from_logits(logits.clone(), tokens, temperature=0.7)
    assert torch.equal(F.probability_ratio(logprobs, old_logprobs), torch.ones(2, 6))

    advantages = torch.randn(2, 6, generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    loss, clipfrac, approx_kl = F.clipped_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    close(loss, -advantages.mean())
    assert clipfrac.item() == 0.0 and approx_kl.item() == 0.0


def test_clipped_policy_loss_by_hand():
    # ε = 0.2. Per token: ratio, A → min(r·A, clip(r)·A), clipped term active?
    #   1.5, +1 → min(1.5, 1.2)   =  1.2  yes
    #   1.5, −1 → min(−1.5, −1.2) = −1.5  no
    #   0.5, +1 → min(0.5, 0.8)   =  0.5  no
    #   0.5, −1 → min(−0.5, −0.8) = −0.8  yes
    #   9.0, +5 → padding
    # L_clip = (1.2 − 1.5 + 0.5 − 0.8) / 4 = −0.15 → loss 0.15; clipfrac 2/4.
    ratio = ft([1.5, 1.5, 0.5, 0.5, 9.0])
    old_logprobs = ft([-1.0, -2.0, -0.5, -1.5, -1.0])
    logprobs = (old_logprobs + torch.log(ratio)).requires_grad_()
    advantages = ft([1.0, -1.0, 1.0, -1.0, 5.0])
    mask = torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)

    loss, clipfrac, approx_kl = F.clipped_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    close(loss, 0.15)
    close(clipfrac, 0.5)
    close(approx_kl, 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)  # 0.161214
    assert not clipfrac.requires_grad and not approx_kl.requires_grad

    # The clipped tokens (and padding) get no gradient; elsewhere d loss/d log π = −A·r/4.
    loss.backward()
    close(logprobs.grad, [[0.0, 1.5 / 4, -0.5 / 4, 0.0, 0.0]])


# --- value loss ----------------------------------------------------------------------------------


def test_value_loss_unclipped_by_hand():
    values, returns = ft([1.0, 2.0, 7.0]), ft([0.0, 0.0, 0.0])
    mask = torch.tensor([1, 1, 0], dtype=torch.bool)
    loss, vf_clipfrac = F.clipped_value_loss(values, values + 100.0, returns, mask)
    close(loss, 0.5 * (1.0 + 4.0) / 2)  # 1.25, old values ignored
    assert vf_clipfrac.item() == 0.0


def test_value_loss_clipped_by_hand():
    # c = 0.2, R̂ = 0: V_clip = [0.5 + 0.2, 2.5 − 0.2, 2.5 − 0.2] = [0.7, 2.3, 2.3]
    # (V_clip − R̂)² = [0.49, 5.29, 5.29] vs (V − R̂)² = [1, 4, 4] → max [1, 5.29, 5.29]
    # loss ½·11.58/3 = 1.93; the clipped term is the larger one on 2 of 3 tokens.
    values, old_values = ft([1.0, 2.0, 2.0, 7.0]), ft([0.5, 2.5, 2.5, 0.0])
    returns = torch.zeros(1, 4)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss, vf_clipfrac = F.clipped_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    close(loss, 1.93)
    close(vf_clipfrac, 2.0 / 3.0)


# --- KL estimators -------------------------------------------------------------------------------

# p = [0.5, 0.5] (policy), q = [0.9, 0.1] (reference), both actions enumerated with weight p(a).
# KL(p‖q) = ½ ln(0.5/0.9) + ½ ln(0.5/0.1) = ½ (−0.587787 + 1.609438) = 0.510826
P, Q = [0.5, 0.5], [0.9, 0.1]
KL_PQ = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
LOGP = torch.tensor([math.log(P[0]), math.log(P[1])])
LOGQ = torch.tensor([math.log(Q[0]), math.log(Q[1])])
WEIGHTS = torch.tensor(P)


def test_k1_is_log_ratio_and_unbiased():
    k1 = F.kl_penalty(LOGP, LOGQ, "k1")
    close(k1, [math.log(5 / 9), math.log(5.0)])  # [−0.587787, 1.609438]
    close((WEIGHTS * k1).sum(), KL_PQ)
    close((WEIGHTS * k1).sum(), 0.510826, atol=1e-6)


def test_k2_by_hand():
    k2 = F.kl_penalty(LOGP, LOGQ, "k2")
    close(k2, [0.172747, 1.295145], atol=1e-6)  # ½ ln(5/9)², ½ ln(5)²
    close((WEIGHTS * k2).sum(), 0.733946, atol=1e-6)  # biased: ≠ KL(p‖q)


def test_k3_by_hand_unbiased_and_nonnegative():
    k3 = F.kl_penalty(LOGP, LOGQ, "k3")
    # q/p = [1.8, 0.2]: (1.8 − 1) − ln 1.8 = 0.212213; (0.2 − 1) − ln 0.2 = 0.809438
    close(k3, [0.8 - math.log(1.8), -0.8 - math.log(0.2)])
    close(k3, [0.212213, 0.809438], atol=1e-6)
    close((WEIGHTS * k3).sum(), KL_PQ)
    g = torch.Generator().manual_seed(2)
    assert (F.kl_penalty(torch.randn(50, generator=g), torch.randn(50, generator=g), "k3") >= 0).all()


def test_kl_estimators_are_zero_when_policy_equals_reference():
    for estimator in ("k1", "k2", "k3"):
        assert torch.equal(F.kl_penalty(LOGP, LOGP.clone(), estimator), torch.zeros(2))


def test_unknown_kl_estimator_is_named():
    with pytest.raises(ValueError, match="'k4'"):
        F.kl_penalty(LOGP, LOGQ, "k4")


# --- per-token rewards ---------------------------------------------------------------------------


def test_last_token_index_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    index = F.last_token_index(mask)
    assert index.dtype == torch.long
    assert index.tolist() == [1, 2, 0, 0]
    assert F.last_token_index(mask.float()).tolist() == [1, 2, 0, 0]


def test_per_token_rewards_score_on_last_real_token_not_padding():
    scores = ft(1.0, 2.0, 3.0, 4.0)
    kl = ft([0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rewards = F.per_token_rewards(scores, kl, kl_coef=0.1, mask=mask)
    expected = ft(
        [-0.01, -0.02, -0.03 + 1.0, 0.0],
        [-0.05 + 2.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],  # no real token: no score, no penalty
        [-0.1, -0.2, -0.3, -0.4 + 4.0],
    )
    close(rewards, expected)


# --- GAE -----------------------------------------------------------------------------------------


def naive_gae(rewards, values, mask, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} literally, per row, with V = 0 after the last real token."""
    advantages = torch.zeros_like(rewards, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        r, v = rewards[b].double(), values[b].double()
        delta = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
        for t in range(n):
            advantages[b, t] = sum((gamma * lam) ** l * delta[t + l] for l in range(n - t))
    returns = (advantages + values.double()) * mask
    return advantages.float(), returns.float()


def prefix_mask(lengths, T):
    return torch.arange(T)[None, :] < torch.as_tensor(lengths)[:, None]


def test_gae_by_hand():
    # γ = 0.9, λ = 0.5, r = [0, 1], V = [0.5, 0.2]:
    # δ_1 = 1 − 0.2 = 0.8; δ_0 = 0 + 0.9·0.2 − 0.5 = −0.32; Â_1 = 0.8; Â_0 = −0.32 + 0.45·0.8 = 0.04
    rewards, values = ft([0.0, 1.0, 5.0]), ft([0.5, 0.2, 3.0])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    advantages, returns = F.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(advantages, [[0.04, 0.8, 0.0]])
    close(returns, [[0.54, 1.0, 0.0]])


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_naive_double_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 9
    gamma = 0.8 + 0.2 * torch.rand((), generator=g).item()
    lam = torch.rand((), generator=g).item()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 0, T  # an empty row and a full row
    mask = prefix_mask(lengths, T)
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)

    advantages, returns = F.gae(rewards, values, mask, gamma, lam)
    expected_advantages, expected_returns = naive_gae(rewards, values, mask, gamma, lam)
    close(advantages, expected_advantages, atol=1e-5)
    close(returns, expected_returns, atol=1e-5)

    # Whatever sits in padded slots changes nothing.
    junk = torch.randn(B, T, generator=g) * 100
    advantages2, returns2 = F.gae(torch.where(mask, rewards, junk), torch.where(mask, values, junk), mask, gamma, lam)
    assert torch.equal(advantages2, advantages) and torch.equal(returns2, returns)


def test_gae_lambda_one_is_discounted_return_minus_value():
    g = torch.Generator().manual_seed(10)
    B, T, gamma = 4, 7, 0.95
    mask = prefix_mask([7, 5, 1, 3], T)
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    discounted = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            discounted[b, t] = sum(gamma**l * rewards[b, t + l] for l in range(n - t))
    advantages, returns = F.gae(rewards, values, mask, gamma, lam=1.0)
    close(advantages, (discounted - values) * mask, atol=1e-5)
    close(returns, discounted, atol=1e-5)


def test_gae_lambda_zero_is_one_step_td_error():
    g = torch.Generator().manual_seed(11)
    B, T, gamma = 3, 5, 0.9
    mask = prefix_mask([5, 3, 2], T)
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(B, 1)], dim=1)
    delta = (rewards + gamma * next_values - values) * mask
    advantages, returns = F.gae(rewards, values, mask, gamma, lam=0.0)
    close(advantages, delta, atol=1e-6)
    close(returns, (delta + values) * mask, atol=1e-6)


# --- explained variance, total loss --------------------------------------------------------------


def test_explained_variance_by_hand():
    returns = ft([1.0, 2.0, 3.0, 50.0])
    mask = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
    # residual [0, 0, 1]: Var = 2/9 vs Var(R̂) = 2/3 → EV = 1 − 1/3
    close(F.explained_variance(ft([1.0, 2.0, 2.0, -7.0]), returns, mask), 2.0 / 3.0)
    close(F.explained_variance(returns.clone(), returns, mask), 1.0)  # perfect critic
    close(F.explained_variance(torch.zeros(4), returns, mask), 0.0)  # residual = returns
    close(F.explained_variance(torch.full((4,), 2.0), returns, mask), 0.0)  # a constant critic


def test_explained_variance_is_nan_when_returns_are_constant():
    assert torch.isnan(F.explained_variance(ft([0.0, 1.0]), ft([3.0, 3.0]), torch.ones(2, dtype=torch.bool)))


def test_ppo_total_loss_by_hand():
    loss = F.ppo_total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), vf_coef=0.5, entropy_coef=0.01)
    close(loss, 1.0 + 0.5 * 2.0 - 0.01 * 3.0)  # 1.97


# --- KL controllers ------------------------------------------------------------------------------


def test_fixed_kl_controller_stays_put_and_round_trips():
    controller = F.FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=512)
    assert controller.value == 0.05
    restored = F.FixedKLController(1.0)
    restored.load_state_dict(json.loads(json.dumps(controller.state_dict())))
    assert restored.value == 0.05


@pytest.mark.parametrize(
    "current_kl, expected",
    [
        (6.6, 0.1 * (1 + 0.1 * 256 / 10_000)),  # err = 0.1 → 0.100256
        (9.0, 0.1 * (1 + 0.2 * 256 / 10_000)),  # err = 0.5, clipped to +0.2 → 0.100512
        (3.0, 0.1 * (1 - 0.2 * 256 / 10_000)),  # err = −0.5, clipped to −0.2 → 0.099488
        (0.0, 0.1 * (1 - 0.2 * 256 / 10_000)),  # err = −1, clipped to −0.2
        (6.0, 0.1),  # on target
    ],
)
def test_adaptive_kl_controller_by_hand(current_kl, expected):
    controller = F.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    controller.update(current_kl, n_steps=256)
    assert controller.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_controller_literal_numbers_and_tensor_kl():
    controller = F.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    controller.update(torch.tensor(9.0), n_steps=256)
    assert controller.value == pytest.approx(0.100512, rel=1e-9)
    controller.update(3.0, n_steps=256)
    assert controller.value == pytest.approx(0.100512 * 0.99488, rel=1e-9)


def test_adaptive_kl_controller_state_dict_is_json_and_round_trips():
    controller = F.AdaptiveKLController(init_kl_coef=0.2, target=4.0, horizon=5000)
    controller.update(5.0, n_steps=100)
    state = json.loads(json.dumps(controller.state_dict()))
    assert all(type(v) is float for v in state.values())
    restored = F.AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1.0)
    restored.load_state_dict(state)
    assert restored.state_dict() == controller.state_dict()
    controller.update(2.0, n_steps=64)
    restored.update(2.0, n_steps=64)
    assert restored.value == controller.value


# --- purity --------------------------------------------------------------------------------------


def test_functions_do_not_modify_their_inputs():
    g = torch.Generator().manual_seed(3)
    B, T, V = 2, 5, 7
    tensors = {
        "logits": torch.randn(B, T, V, generator=g),
        "tokens": torch.randint(0, V, (B, T), generator=g),
        "logprobs": torch.randn(B, T, generator=g),
        "old": torch.randn(B, T, generator=g),
        "adv": torch.randn(B, T, generator=g),
        "values": torch.randn(B, T, generator=g),
        "rewards": torch.randn(B, T, generator=g),
        "scores": torch.randn(B, generator=g),
        "mask": prefix_mask([5, 3], T),
    }
    before = {k: v.clone() for k, v in tensors.items()}
    x = tensors
    F.masked_whiten(x["adv"], x["mask"])
    F.logprobs_from_logits(x["logits"], x["tokens"], temperature=0.7)
    F.entropy_from_logits(x["logits"], temperature=0.7)
    F.clipped_policy_loss(x["logprobs"], x["old"], x["adv"], x["mask"], 0.2)
    F.clipped_value_loss(x["values"], x["old"], x["rewards"], x["mask"], 0.2)
    F.kl_penalty(x["logprobs"], x["old"], "k3")
    F.per_token_rewards(x["scores"], x["logprobs"], 0.1, x["mask"])
    F.gae(x["rewards"], x["values"], x["mask"], 0.99, 0.95)
    F.explained_variance(x["values"], x["rewards"], x["mask"])
    for k in tensors:
        assert torch.equal(tensors[k], before[k]), k
