"""Reward-hacking diagnostics: correlations between rewards (the composer), length drift and the divergence
warning (ppo_core.rewards.hacking), checked against numbers worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from ppo_core.rewards.composer import pearson, reward_correlations
from ppo_core.rewards.hacking import HackingWatch, direction, trend


def test_pearson_by_hand():
    # x = 1,2,3 ; y = 2,4,7: means 2 and 13/3; cov = (-1)(-7/3) + 0 + (1)(8/3) = 5; var_x = 2; var_y = 38/3
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # no spread
    assert math.isnan(pearson([1], [2]))


def test_reward_correlations_pair_every_two_rewards_over_the_samples_both_scored():
    values = {"reward_model": [0.5, 1.0, None, 2.0], "exact_match": [0.0, 1.0, 1.0, 1.0],
              "edit_distance": [0.2, 0.4, 0.1, None]}
    stats = reward_correlations(values)
    assert list(stats) == ["reward/corr/reward_model/exact_match", "reward/corr/reward_model/edit_distance",
                           "reward/corr/exact_match/edit_distance"]
    assert stats["reward/corr/reward_model/exact_match"] == pytest.approx(pearson([0.5, 1.0, 2.0], [0, 1, 1]))
    assert stats["reward/corr/reward_model/edit_distance"] == pytest.approx(1.0)  # (0.5, 0.2), (1.0, 0.4)
    assert stats["reward/corr/exact_match/edit_distance"] == pytest.approx(pearson([0, 1, 1], [0.2, 0.4, 0.1]))
    assert reward_correlations({"only": [1.0, 2.0]}) == {}


def test_trend_compares_the_last_window_with_the_one_before():
    assert trend([1, 2, 3], window=2) is None
    assert trend([1, 1, 3, 5], window=2) == pytest.approx(3.0)  # (3+5)/2 - (1+1)/2
    assert trend([0, 9, 1, 1, 3, 5], window=2) == pytest.approx(3.0)
    assert trend([1, float("nan"), 3, 5], window=2) is None


def test_direction_counts_a_change_only_past_the_noise():
    assert direction([0, 0, 1, 1], window=2) == 1 and direction([1, 1, 0, 0], window=2) == -1  # no noise at all
    # the same rise of the mean (+1) in noisy windows: sd 1.41 each, 2 standard errors = 2.83
    assert trend([-1, 1, 2, 0], window=2) == pytest.approx(1.0) and direction([-1, 1, 2, 0], window=2) == 0
    assert direction([-1, 1, 2, 0], window=2, significance=0.5) == 1
    assert direction([0, 0, 0, 0], window=2) == 0 and direction([1, 2, 3], window=2) == 0  # flat; too few


def test_watch_ignores_a_rule_reward_that_wobbles_and_warns_on_a_real_fall():
    """A learned reward climbing while a rule reward sits at 0 with small wobbles (as a repetition penalty does)
    is no divergence; while another rule reward drifts down by more than its noise, it is."""
    noise = random.Random(0)
    learned = [0.05 * i + noise.gauss(0, 0.05) for i in range(40)]
    wobbling = [-abs(noise.gauss(0, 0.005)) if noise.random() < 0.3 else 0.0 for _ in range(40)]
    falling = [0.5 - 0.01 * i + noise.gauss(0, 0.02) for i in range(40)]
    warnings = []
    watch = HackingWatch.for_rewards({"reward_model": 1.0, "repetition_penalty": 0.1, "edit_distance": 0.5},
                                     warn=warnings.append)
    for i in range(40):
        watch({"update": i + 1, "reward/reward_model": learned[i], "reward/repetition_penalty": wobbling[i],
               "reward/edit_distance": falling[i], "response/length_mean": 4.0})
    assert len(warnings) == 1 and "the rule reward edit_distance's fell" in warnings[0], warnings
    no_margin = HackingWatch.for_rewards({"reward_model": 1.0, "repetition_penalty": 0.1}, significance=0.0,
                                         warn=warnings.append)
    for i in range(40):
        no_margin({"update": i + 1, "reward/reward_model": learned[i], "reward/repetition_penalty": wobbling[i]})
    assert any("repetition_penalty" in line for line in warnings[1:])  # what the margin is for


def lines(learned, rule, lengths):
    return [{"update": i + 1, "reward/reward_model": a, "reward/exact_match": b, "response/length_mean": n}
            for i, (a, b, n) in enumerate(zip(learned, rule, lengths))]


def test_watch_adds_length_drift_and_warns_once_per_episode_of_divergence():
    warnings = []
    watch = HackingWatch.for_rewards({"reward_model": 1.0, "exact_match": 1.0}, window=2, patience=2,
                                     significance=0.0, warn=warnings.append)
    assert watch.learned == ["reward_model"] and watch.rules == ["exact_match"]
    riding = HackingWatch.for_rewards({"reward_model": 0.01, "exact_match": 1.0, "edit_distance": 1.0})
    assert riding.learned == [] and riding.rules == ["exact_match", "edit_distance"]  # 0.5% of the weight
    learned = [0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 5]
    rule = [1, 1, 0, 0, -1, -1, -1, -1, -1, -1, -2, -3, -3, -3, -3, -3, -4]
    lengths = [4, 4, 5, 5, 6, 6, 6, 6, 6, 6, 8, 8, 8, 8, 8, 8, 8]
    out = [watch(line) for line in lines(learned, rule, lengths)]
    assert [line["response/length_drift"] for line in out][:5] == [1.0, 1.0, 1.25, 1.25, 1.5]
    # apart at updates 4-7 (at 4: (1+1)/2 - 0 > 0 and (0+0)/2 - 1 < 0), warned at the 2nd: 5; flat 8-10; apart
    # 11-14, warned at 12; flat 15-16; apart at 17 alone: one update is no episode
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("warning: update 5: reward hacking? for 2 updates the learned reward reward_model")
    assert "update 12:" in warnings[1] and "the rule reward exact_match's fell" in warnings[1]


def test_watch_stays_quiet_when_both_rise_and_when_replaying_a_resumed_run():
    warnings = []
    watch = HackingWatch.for_rewards({"reward_model": 1.0, "exact_match": 1.0}, window=2, patience=1,
                                     significance=0.0, warn=warnings.append)
    for line in lines([0, 0, 1, 1], [0, 0, 1, 1], [4, 4, 4, 4]):
        watch(line)
    assert warnings == []
    resumed = HackingWatch.for_rewards({"reward_model": 1.0, "exact_match": 1.0}, window=2, patience=1,
                                       significance=0.0, warn=warnings.append)
    for line in lines([0, 0, 1, 1], [1, 1, 0, 0], [4, 4, 2, 2]):
        resumed(line, quiet=True)  # the earlier updates of a resumed run: state only
    assert warnings == [] and resumed.diverging == {("reward_model", "exact_match"): 1}
    assert resumed({"update": 5, "reward/reward_model": 2, "reward/exact_match": -1,
                    "response/length_mean": 3})["response/length_drift"] == pytest.approx(0.75)
    assert warnings == []  # the episode began before the resume: no second warning
