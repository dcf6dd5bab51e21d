"""Critic-free advantage estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++) and the loss aggregations: the pure
functions against hand-computed values, the config's rules, and the engine with each estimator (docs/design.md,
Eq. 14-17)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

import ppo_core.ppo.advantages as A
import ppo_core.ppo.functional as F
from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch, train
from ppo_core.config import load_config
from ppo_core.errors import ConfigError
from ppo_core.runtime.metrics import read_metrics
from test_engine import PLUGINS, make_config, without_timing

ESTIMATORS = ["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"]
AGGREGATIONS = ["token_mean", "sequence_mean", "token_sum_constant"]
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


# ---- Eq. 14-16: advantages ---------------------------------------------------------------------------------
def test_grpo_divides_by_the_groups_std_and_counts_equal_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    advantages, equal = A.group_relative_advantages(rewards, group_size=4)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 1/sqrt(3): +-0.5 * sqrt(3); group 2 has nothing to compare
    a = 0.5 / (1 / math.sqrt(3) + 1e-6)
    torch.testing.assert_close(advantages, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]))
    assert int(equal) == 1


def test_dr_grpo_keeps_the_scale_of_the_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    advantages, equal = A.group_relative_advantages(rewards, group_size=2, scale_by_std=False)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(advantages, expected)
    assert int(equal) == 3
    # equal rewards whose mean is not exact in floating point still give exactly 0
    assert torch.count_nonzero(advantages[6:]) == 0


def test_rloo_subtracts_the_mean_of_the_other_samples():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 5.0, 5.0])
    advantages, equal = A.leave_one_out_advantages(rewards, group_size=4)
    # r = 1: baseline (0 + 0 + 1) / 3; r = 0: (1 + 0 + 1) / 3; r = 3: (1 + 5 + 5) / 3; r = 1: (3 + 5 + 5) / 3 ...
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 3 - 11 / 3, 1 - 13 / 3, 5 - 3.0, 5 - 3.0])
    torch.testing.assert_close(advantages, expected)
    assert int(equal) == 0
    # RLOO is n / (n - 1) times the group-centred reward
    centred, _ = A.group_relative_advantages(rewards, 4, scale_by_std=False)
    torch.testing.assert_close(advantages, centred * 4 / 3)


@pytest.mark.parametrize("estimator", [A.group_relative_advantages, A.leave_one_out_advantages,
                                       lambda r, n: A.group_relative_advantages(r, n, scale_by_std=False)])
def test_groups_of_one_have_zero_advantage(estimator):
    advantages, equal = estimator(torch.tensor([0.3, -1.0, 2.0]), 1)
    assert torch.equal(advantages, torch.zeros(3)) and int(equal) == 3


def test_reinforce_pp_discounts_the_per_token_rewards_to_the_rows_end():
    rewards = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    returns = A.discounted_returns(rewards, mask, gamma=0.5)
    # row 0: G2 = 3, G1 = 2 + 0.5 * 3, G0 = 1 + 0.5 * 3.5; the nan in the pad slot does not leak
    torch.testing.assert_close(returns, torch.tensor([[2.75, 3.5, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]]))


def test_a_sequence_value_lands_on_every_real_token():
    tokens = A.sequence_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert torch.equal(tokens, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))


# ---- Eq. 17: loss aggregation ------------------------------------------------------------------------------
X = torch.tensor([[1.0, 2.0, float("inf")], [3.0, float("nan"), 0.0], [5.0, 6.0, 7.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])


def test_aggregations_by_hand():
    # tokens 1 + 2 + 3 + 5 + 6 + 7 = 24 over 6; responses (1.5 + 3 + 6) / 3; token sums 24 / (C = 4 x 3 rows)
    assert F.aggregate_tokens(X, MASK, "token_mean") == pytest.approx(4.0)
    assert F.aggregate_tokens(X, MASK, "sequence_mean") == pytest.approx(3.5)
    assert F.aggregate_tokens(X, MASK, "token_sum_constant", normaliser=4) == pytest.approx(2.0)
    assert [float(F.aggregation_size(MASK, how)) for how in AGGREGATIONS] == [6.0, 3.0, 3.0]
    assert F.aggregate_tokens(X, torch.zeros_like(MASK), "sequence_mean") == 0.0  # an empty mask adds nothing


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_micro_batch_shares_add_up_to_the_whole(how):
    whole = F.aggregate_tokens(X, MASK, how, normaliser=4)
    parts = [slice(0, 1), slice(1, 3)]
    total = sum(F.aggregate_tokens(X[rows], MASK[rows], how, normaliser=4)
                * F.aggregation_size(MASK[rows], how) / F.aggregation_size(MASK, how) for rows in parts)
    assert float(total) == pytest.approx(float(whole), rel=1e-6)


# ---- the config ---------------------------------------------------------------------------------------------
BASE = {"model": {"path": "some/model"}, "data": {"dataset": "reverse"}, "rewards": [{"name": "exact_match"}]}


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(None, list(overrides), base=BASE)
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)
    return str(raised.value)


@pytest.mark.parametrize("estimator", ESTIMATORS[1:])
def test_a_critic_free_estimator_leaves_out_the_critic_and_takes_its_papers_defaults(estimator):
    config = load_config(None, [f"ppo.advantage={estimator}", "ppo.samples_per_prompt=4"], base=BASE)
    assert config.model.critic == "none" and config.ppo.rollout_samples == 256
    expected = {"grpo": ("k3", "loss", "sequence_mean", False), "dr_grpo": ("k3", "loss", "token_sum_constant", False),
                "rloo": ("k1", "reward", "token_mean", False), "reinforce_pp": ("k1", "reward", "token_mean", True)}
    ppo = config.ppo
    assert (ppo.kl_estimator, ppo.kl_placement, ppo.aggregation, ppo.whitens_advantages) == expected[estimator]
    # an explicit choice wins over the estimator's default
    config = load_config(None, [f"ppo.advantage={estimator}", "ppo.samples_per_prompt=4", "ppo.kl.estimator=k2",
                                "ppo.loss_aggregation=token_mean", "ppo.whiten_advantages=true"], base=BASE)
    assert (config.ppo.kl_estimator, config.ppo.aggregation, config.ppo.whitens_advantages) == ("k2", "token_mean",
                                                                                                True)


CONFIG_ERRORS = {
    "gae-without-critic": (["model.critic=none"], "model.critic", "gae"),
    "grpo-with-shared-critic": (["ppo.advantage=grpo", "ppo.samples_per_prompt=4", "model.critic=shared"],
                                "model.critic", "critic-free"),
    "rloo-with-separate-critic": (["ppo.advantage=rloo", "ppo.samples_per_prompt=2", "model.critic=separate"],
                                  "model.critic", "critic-free"),
    "critic-path-without-critic": (["ppo.advantage=reinforce_pp", "model.critic_path=other"], "model.critic_path",
                                   "critic: none"),
    "value-head-without-critic": (["ppo.advantage=reinforce_pp", "model.value_head_hidden=8"],
                                  "model.value_head_hidden", "critic: none"),
    "vf-coef-without-critic": (["ppo.advantage=dr_grpo", "ppo.samples_per_prompt=4", "ppo.vf_coef=0.5"],
                               "ppo.vf_coef", "no value loss"),
    "grpo-groups-of-one": (["ppo.advantage=grpo"], "ppo.samples_per_prompt", "set 2 or more"),
    "rloo-groups-of-one": (["ppo.advantage=rloo", "ppo.samples_per_prompt=1"], "ppo.samples_per_prompt", "2 or more"),
    "minibatch-not-dividing-the-samples": (["ppo.rollout_batch_size=6", "ppo.samples_per_prompt=3",
                                            "ppo.minibatch_size=4"], "ppo.minibatch_size", "(6 x 3 = 18)"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_combinations_that_cannot_work_are_one_line_errors_naming_the_field(case):
    overrides, field, text = CONFIG_ERRORS[case]
    message = config_error(*overrides)
    assert f"{field}: " in message and text in message, message


def test_allowed_combinations():
    load_config(None, ["ppo.samples_per_prompt=4"], base=BASE)  # gae with groups: allowed
    load_config(None, ["ppo.advantage=reinforce_pp"], base=BASE)  # REINFORCE++ needs no groups
    config = load_config(None, ["ppo.advantage=grpo", "ppo.samples_per_prompt=4", "model.critic=none",
                                "ppo.rollout_batch_size=6", "ppo.minibatch_size=8"], base=BASE)  # 8 divides 24
    assert config.ppo.rollout_samples == 24


# ---- the engine with each estimator -------------------------------------------------------------------------
def estimator_config(model_dir, run_dir, estimator, *overrides):
    """make_config of test_engine with 32 samples an update: 8 prompts x 4 for the group estimators."""
    groups = ["ppo.rollout_batch_size=8", "ppo.samples_per_prompt=4"] if estimator in GROUP_ESTIMATORS else []
    return make_config(model_dir, run_dir, f"ppo.advantage={estimator}", *groups, *overrides)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_keeps_the_first_ratio_exactly_one(tiny_model_dir, tmp_path, estimator):
    run = build_run(estimator_config(tiny_model_dir, tmp_path / "run", estimator, "ppo.epochs=1"), PLUGINS)
    batch = next_prompt_batch(run)
    assert batch.input_ids.size(0) == 32
    rollout, stats = run.engine.collect_rollout(batch, make_scorer(run.composer, run.tokenizer))
    run.model.train()  # as in the epochs; before any optimizer step log pi_theta is log pi_old bit for bit (D3)
    _, first = run.engine._loss(rollout, torch.randperm(32, generator=torch.Generator().manual_seed(0))[:8])
    assert first["approx_kl"] == 0.0 and first["clipfrac"] == 0.0
    stats.update(run.engine.optimise(rollout))
    assert stats["approx_kl"] > 0  # the policy moved over the epoch
    assert all(math.isfinite(value) for value in stats.values())
    has_critic = estimator == "gae"
    assert run.model.has_critic == has_critic and (rollout.values is not None) == has_critic
    assert ("loss/value" in stats) == has_critic and ("value/explained_variance" in stats) == has_critic
    assert ("advantage/zero_std_groups" in stats) == (estimator in GROUP_ESTIMATORS)
    if estimator in GROUP_ESTIMATORS:
        # rows g*4 .. g*4 + 3 answer the same prompt, and the advantage is one number per response
        groups = batch.input_ids.view(8, 4, -1)
        assert torch.equal(groups, groups[:, :1].expand_as(groups))
        mask = rollout.response_mask.bool()
        first = rollout.advantages[:, :1].expand_as(rollout.advantages)
        assert torch.equal(rollout.advantages[mask], first[mask])


@pytest.mark.parametrize("estimator,aggregation", [("grpo", how) for how in AGGREGATIONS]
                         + [("gae", "sequence_mean"), ("gae", "token_sum_constant")])
def test_micro_batches_do_not_change_the_gradient(tiny_model_dir, tmp_path, estimator, aggregation):
    """docs/design.md D5 for every aggregation: the micro-batch losses, weighted by their share of what the
    aggregation divides by, give the gradient of one loss over the minibatch."""
    config = estimator_config(tiny_model_dir, tmp_path / "run", estimator, f"ppo.loss_aggregation={aggregation}",
                              *(["ppo.kl.placement=loss"] if estimator == "gae" else []))
    run = build_run(config, PLUGINS)
    rollout, _ = run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
    lengths = rollout.response_mask[:8].sum(1)
    assert lengths.min() < lengths.max()  # responses of different lengths: the aggregations differ
    rows = torch.arange(8)
    results = []
    for micro in (None, 2, 1):
        run.engine.ppo = run.engine.ppo.model_copy(update={"micro_batch_size": micro})
        stats = run.engine._accumulate_gradients(rollout, rows)
        grads = {name: p.grad.clone() for name, p in run.model.named_parameters() if p.grad is not None}
        results.append((stats, grads))
    whole_stats, whole_grads = results[0]
    for stats, grads in results[1:]:
        assert stats.keys() == whole_stats.keys() and grads.keys() == whole_grads.keys()
        for key in whole_stats:
            assert stats[key] == pytest.approx(whole_stats[key], rel=1e-5, abs=1e-7), key
        for name in whole_grads:
            torch.testing.assert_close(grads[name], whole_grads[name], rtol=0, atol=1e-6, msg=name)


def test_grpo_raises_a_learnable_reward_and_saves_no_critic(tiny_model_dir, tmp_path):
    config = estimator_config(tiny_model_dir, tmp_path / "run", "grpo", "train.updates=12")
    final = train(config, extra_plugins=PLUGINS)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first = sum(m["reward/mean"] for m in metrics[:3]) / 3
    last = sum(m["reward/mean"] for m in metrics[-3:]) / 3
    assert last > first + 0.15, (first, last)
    assert not (final / "value_head.safetensors").exists() and not (final / "critic").exists()
    assert all("loss/value" not in m and "value/mean" not in m for m in metrics)
    assert all(0 <= m["advantage/zero_std_groups"] <= 8 for m in metrics)


def test_a_critic_free_run_resumes_exactly(tiny_model_dir, tmp_path):
    def config(name, updates):
        return estimator_config(tiny_model_dir, tmp_path / name, "rloo", f"train.updates={updates}",
                                "train.save_every=2")

    final_straight = train(config("straight", 4), extra_plugins=PLUGINS)
    train(config("resumed", 3), extra_plugins=PLUGINS)  # checkpoint of update 2, a metrics line for update 3
    checkpoints = sorted((tmp_path / "resumed").glob("checkpoints/*/policy"))
    assert checkpoints and not any((c / "value_head.safetensors").exists() for c in checkpoints)
    final_resumed = train(config("resumed", 4), resume=True, extra_plugins=PLUGINS)

    straight = without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    resumed = without_timing(read_metrics(tmp_path / "resumed" / "metrics.jsonl"))
    assert [m["update"] for m in resumed] == [1, 2, 3, 4] and straight == resumed
    weights_a = load_file(final_straight / "model.safetensors")
    weights_b = load_file(final_resumed / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
