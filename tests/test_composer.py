"""The weighted composer: weights, abstentions, running normalisation, per-reward metrics, and faults.

The rewards are small in-test classes registered by an in-process plugin ``test_rewards``; most read their
value for a sample from the sample's fields (``fields[<reward name>]``), so each test writes the values
it wants literally. Every expected number is worked out by hand in the comments.
"""

from __future__ import annotations

import math
import statistics
import threading
from typing import Iterator

import pytest
from pydantic import BaseModel
from pytest import approx

from ppo_core import HiddenStateReward, Reward, RunContext, hookimpl
from ppo_core.config import RewardConfig
from ppo_core.errors import ConfigError, PluginError, RewardError, UserError
from ppo_core.plugin.loading import load_plugins
from ppo_core.rewards.composer import Composer, build_composer

PLUGIN = "test_rewards"
ISOLATIONS = ["process", "none"]
RELEASE = threading.Event()  # lets a sleeping reward go when its test ends


class FieldReward(Reward):
    """Returns ``sample.fields[self.name]`` unchanged (a float, None, NaN, a string... whatever the test put)."""

    def __call__(self, samples):
        return [sample.fields[self.name] for sample in samples]


# one class per name, at the top level of this module: a worker process imports them from here
class FieldA(FieldReward):
    name = "a"


class FieldB(FieldReward):
    name = "b"


class FieldC(FieldReward):
    name = "c"


class Fragile(Reward):
    """Raises on a batch that holds a sample whose prompt mentions poison."""

    name = "fragile"

    def __call__(self, samples):
        for sample in samples:
            if "poison" in sample.prompt:
                raise ValueError("cannot score this")
        return [1.0] * len(samples)


class Short(Reward):
    name = "short"

    def __call__(self, samples):
        return [0.0] * (len(samples) - 1)


class Scalar(Reward):
    name = "scalar"

    def __call__(self, samples):
        return 1.0


class Sleepy(Reward):
    """Hangs (until released) on a batch holding a sample with ``fields["slow"]``; else scores 1.0."""

    name = "sleepy"

    def __call__(self, samples):
        if any(sample.fields.get("slow") for sample in samples):
            RELEASE.wait(10)
        return [1.0] * len(samples)


class Scaled(Reward):
    name = "scaled"

    class Options(BaseModel):
        factor: float

    def __call__(self, samples):
        return [self.options.factor] * len(samples)


class Unstartable(Reward):
    name = "unstartable"

    def __init__(self, options, context=RunContext()):
        raise OSError("model file missing")


class FromHidden(HiddenStateReward):
    """Declares at init (option ``reads``) whether it reads the reference's hidden states; from them it scores each
    row's sum, from the text ``fields["from_hidden"]``."""

    name = "from_hidden"

    class Options(BaseModel):
        reads: bool = True

    def __init__(self, options, context=RunContext()):
        super().__init__(options, context)
        self.reads_reference_hidden = options.reads

    def __call__(self, samples):
        return [sample.fields["from_hidden"] for sample in samples]

    def score_hidden(self, samples, hidden):
        return [float(sum(row)) for row in hidden]


class ForgotScoreHidden(HiddenStateReward):
    """Declares that it reads hidden states but never implemented score_hidden."""

    name = "forgot_score_hidden"

    def __init__(self, options, context=RunContext()):
        super().__init__(options, context)
        self.reads_reference_hidden = True

    def __call__(self, samples):
        return [0.0] * len(samples)


class ForgotCall(Reward):
    name = "forgot_call"


REWARD_CLASSES = [FieldA, FieldB, FieldC, Fragile, Short, Scalar, Sleepy, Scaled, Unstartable, FromHidden,
                  ForgotScoreHidden, ForgotCall]


@hookimpl
def register_rewards(register):
    for cls in REWARD_CLASSES:
        register(cls)


@pytest.fixture
def registry(make_plugin):
    plugins = load_plugins(extra=[(PLUGIN, make_plugin(register_rewards=register_rewards))], use_entry_points=False)
    try:
        assert plugins.failed == []
        yield plugins.registry
    finally:
        plugins.manager.unregister(name=PLUGIN)


@pytest.fixture
def compose(registry):
    """``compose({"name": "a", "weight": 2}, ..., isolation="process")``: a Composer over those reward configs.

    The arithmetic does not depend on where a reward runs, so it runs in process (``isolation: none``, fast);
    the faults, time-outs and building run both ways (``ISOLATIONS``). Worker processes stop at teardown.
    """
    built: list[Composer] = []

    def make(*configs: dict, isolation: str = "none") -> Composer:
        configs = [RewardConfig(**{"isolation": isolation, **config}) for config in configs]
        built.append(build_composer(configs, registry, RunContext()))
        return built[-1]

    try:
        yield make
    finally:
        for composer in built:
            composer.close()


@pytest.fixture
def batch(make_sample):
    """``batch(a=[...], b=[...])``: samples ``prompt 0``, ``prompt 1``... whose fields carry those values."""

    def make(prompts=None, **columns: list) -> list:
        size = len(next(iter(columns.values()))) if columns else len(prompts)
        prompts = prompts or [f"prompt {i}" for i in range(size)]
        return [make_sample(prompt=prompts[i], response=f"r{i}", **{k: v[i] for k, v in columns.items()})
                for i in range(size)]

    return make


@pytest.fixture
def release_sleepers() -> Iterator[None]:
    RELEASE.clear()
    try:
        yield
    finally:
        RELEASE.set()  # the timed-out call's thread finishes at once


# ---- weights ---------------------------------------------------------------------------------------------------
def test_weighted_sum_by_hand(compose, batch):
    composer = compose({"name": "a", "weight": 2.0}, {"name": "b", "weight": -0.5})
    result = composer(batch(a=[1.0, 2.0, 3.0], b=[4.0, 0.0, -2.0]))
    # 2*1 - 0.5*4 = 0;  2*2 - 0.5*0 = 4;  2*3 - 0.5*(-2) = 7
    assert result.totals == approx([0.0, 4.0, 7.0])
    assert result.values == {"a": [1.0, 2.0, 3.0], "b": [4.0, 0.0, -2.0]}  # raw, unweighted
    stats = result.stats
    assert stats["reward/a"] == approx(2.0)          # (1+2+3)/3, before weighting
    assert stats["reward/b"] == approx(2.0 / 3.0)    # (4+0-2)/3
    assert stats["reward/a/abstain_rate"] == 0.0 and stats["reward/b/abstain_rate"] == 0.0
    assert stats["reward/a/errors"] == 0.0 and stats["reward/b/errors"] == 0.0
    assert stats["reward/mean"] == approx(11.0 / 3.0)  # (0+4+7)/3
    assert stats["reward/std"] == approx(statistics.pstdev([0.0, 4.0, 7.0]))
    assert stats["reward/all_abstained"] == 0.0


def test_default_weight_is_one_and_zero_weight_only_logs(compose, batch):
    composer = compose({"name": "a"}, {"name": "b", "weight": 0.0}, {"name": "c", "weight": 3.0})
    result = composer(batch(a=[0.5, -1.0], b=[100.0, 200.0], c=[1.0, 0.0]))
    # 1*0.5 + 0*100 + 3*1 = 3.5;  1*(-1) + 0*200 + 3*0 = -1
    assert result.totals == approx([3.5, -1.0])
    assert result.stats["reward/b"] == approx(150.0)


# ---- abstentions -----------------------------------------------------------------------------------------------
def test_abstention_skip_leaves_the_term_out_and_a_number_stands_in(compose, batch):
    composer = compose({"name": "a", "weight": 2.0},                       # on_abstain: skip (default)
                       {"name": "b", "weight": 4.0, "on_abstain": 0.25})
    result = composer(batch(a=[1.0, None, 3.0], b=[None, 2.0, None]))
    # sample 0: 2*1 + 4*0.25 = 3;  sample 1: (a skipped) + 4*2 = 8;  sample 2: 2*3 + 4*0.25 = 7
    assert result.totals == approx([3.0, 8.0, 7.0])
    assert result.values == {"a": [1.0, None, 3.0], "b": [None, 2.0, None]}  # None kept where it abstained
    stats = result.stats
    assert stats["reward/a"] == approx(2.0)            # mean over the samples it scored: (1+3)/2
    assert stats["reward/b"] == approx(2.0)            # the stand-in 0.25 is not the reward's own answer
    assert stats["reward/a/abstain_rate"] == approx(1.0 / 3.0)
    assert stats["reward/b/abstain_rate"] == approx(2.0 / 3.0)
    assert stats["reward/all_abstained"] == 0.0        # b's stand-in counts as a score


def test_samples_every_reward_abstained_on_are_counted(compose, batch):
    columns = dict(a=[1.0, None, None, 4.0], b=[None, None, 2.0, None])
    result = compose({"name": "a"}, {"name": "b"})(batch(**columns))
    assert result.totals == approx([1.0, 0.0, 2.0, 4.0])  # the all-abstained sample 1 adds nothing: 0
    assert result.stats["reward/all_abstained"] == 1.0
    assert result.stats["reward/a/abstain_rate"] == approx(0.5)
    assert result.stats["reward/b/abstain_rate"] == approx(0.75)
    # with a stand-in for b no sample is left without a score
    result = compose({"name": "a"}, {"name": "b", "on_abstain": -1.0})(batch(**columns))
    assert result.totals == approx([0.0, -1.0, 2.0, 3.0])  # 1-1; -1; 2; 4-1
    assert result.stats["reward/all_abstained"] == 0.0


def test_a_reward_abstaining_on_the_whole_batch_is_an_error_unless_configured(compose, batch):
    samples = batch(a=[None, None], b=[1.0, 2.0])
    with pytest.raises(RewardError) as raised:
        compose({"name": "a"}, {"name": "b"})(samples)
    assert f"reward 'a' (plugin '{PLUGIN}')" in str(raised.value) and "sample 0" in str(raised.value)
    result = compose({"name": "a", "on_abstain": 0.5}, {"name": "b"})(samples)
    assert result.totals == approx([1.5, 2.5])
    assert result.stats["reward/a/abstain_rate"] == 1.0
    assert math.isnan(result.stats["reward/a"])        # no answer of its own to average
    result = compose({"name": "a", "on_error": "skip"}, {"name": "b"})(samples)
    assert result.totals == approx([1.0, 2.0])
    assert result.stats["reward/a/errors"] == 1.0


# ---- running normalisation --------------------------------------------------------------------------------------
def test_running_normalisation_standardises_over_everything_seen(compose, batch):
    composer = compose({"name": "a", "weight": 2.0, "normalize": True}, {"name": "b", "weight": 1.0})
    first = composer(batch(a=[1.0, 2.0, 3.0], b=[10.0, 10.0, 10.0]))
    # after batch 1: mean 2, std sqrt(((1-2)^2 + 0 + (3-2)^2)/3) = sqrt(2/3); b is added raw
    std = math.sqrt(2.0 / 3.0)
    assert first.totals == approx([2 * (1 - 2) / std + 10, 2 * 0 + 10, 2 * (3 - 2) / std + 10])
    assert first.stats["reward/a"] == approx(2.0)     # the logged mean is the raw one
    second = composer(batch(a=[5.0, 7.0], b=[0.0, 0.0]))
    # over 1,2,3,5,7: mean 18/5 = 3.6; variance (2.6^2 + 1.6^2 + 0.6^2 + 1.4^2 + 3.4^2)/5 = 23.2/5 = 4.64
    std = math.sqrt(4.64)
    assert second.totals == approx([2 * (5 - 3.6) / std, 2 * (7 - 3.6) / std])
    assert second.stats["reward/a"] == approx(6.0)
    assert composer.state_dict() == {"a": {"count": approx(5.0), "mean": approx(3.6), "m2": approx(23.2)}}


def test_normalisation_ignores_abstentions_and_starts_with_unit_std(compose, batch):
    composer = compose({"name": "a", "normalize": True}, {"name": "b"})
    result = composer(batch(a=[1.0, None, 3.0], b=[0.0, 5.0, 0.0]))
    # moments over 1 and 3 only: mean 2, std 1
    assert result.totals == approx([-1.0, 5.0, 1.0])
    single = compose({"name": "a", "normalize": True})(batch(a=[4.0]))
    assert single.totals == approx([0.0])  # one value: (4 - 4) / 1


def test_normalisation_state_survives_a_round_trip(compose, batch):
    config = {"name": "a", "weight": 2.0, "normalize": True}
    original = compose(config)
    original(batch(a=[1.0, 2.0, 3.0]))
    restored = compose(config)
    restored.load_state_dict(original.state_dict())
    assert restored(batch(a=[5.0, 7.0])).totals == approx(original(batch(a=[5.0, 7.0])).totals)
    fresh = compose(config)(batch(a=[5.0, 7.0])).totals
    assert fresh == approx([-2.0, 2.0])  # what forgetting the state would give: mean 6, std 1, weight 2


# ---- faults -----------------------------------------------------------------------------------------------------
FAULTS = {
    # id: (reward config, the batch's columns, prompts, what the message must also say)
    "raises": ({"name": "fragile"}, {}, ["ok", "fine", "the poison prompt"],
               ["ValueError", "cannot score this", "sample 2", "'the poison prompt'"]),
    "wrong-length": ({"name": "short"}, {}, ["x0", "x1", "x2"], ["2 values for 3 samples", "sample 0", "'x0'"]),
    "not-a-sequence": ({"name": "scalar"}, {}, ["x0", "x1"], ["float", "sample 0", "'x0'"]),
    "nan": ({"name": "a"}, {"a": [1.0, float("nan"), 2.0]}, None, ["nan", "sample 1", "'prompt 1'"]),
    "inf": ({"name": "a"}, {"a": [1.0, 2.0, float("inf")]}, None, ["inf", "sample 2", "'prompt 2'"]),
    "minus-inf": ({"name": "a"}, {"a": [float("-inf"), 2.0]}, None, ["-inf", "sample 0", "'prompt 0'"]),
    "string": ({"name": "a"}, {"a": [0.0, "high", 1.0]}, None, ["str", "'high'", "sample 1", "'prompt 1'"]),
    "bool": ({"name": "a"}, {"a": [True, 1.0]}, None, ["bool", "sample 0", "'prompt 0'"]),
    "timeout": ({"name": "sleepy", "timeout_s": 0.05}, {"slow": [False, True]}, None,
                ["timeout_s=0.05", "sample 0", "'prompt 0'"]),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_fault_is_a_reward_error_naming_plugin_reward_and_sample(fault, isolation, compose, batch, release_sleepers):
    config, columns, prompts, expected = FAULTS[fault]
    composer = compose(config, {"name": "b"}, isolation=isolation)
    samples = batch(prompts, **columns, b=[1.0] * len(prompts or next(iter(columns.values()))))
    with pytest.raises(RewardError) as raised:
        composer(samples)
    message = str(raised.value)
    assert f"reward '{config['name']}'" in message
    assert f"plugin '{PLUGIN}'" in message
    for text in expected:
        assert text in message, f"{text!r} missing from: {message}"
    assert isinstance(raised.value, PluginError) and isinstance(raised.value, UserError)  # the CLI exits 2


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_raising_reward_keeps_the_original_exception(compose, batch, isolation):
    with pytest.raises(RewardError) as raised:
        compose({"name": "fragile"}, isolation=isolation)(batch(["poison", "ok"]))
    assert isinstance(raised.value.__cause__, ValueError)
    assert "sample 0" in str(raised.value)


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_on_error_skip_goes_on_and_counts_the_error(fault, isolation, compose, batch, release_sleepers):
    config, columns, prompts, _ = FAULTS[fault]
    size = len(prompts or next(iter(columns.values())))
    b = [float(i) for i in range(size)]
    result = compose({**config, "weight": 2.0, "on_error": "skip"}, {"name": "b"},
                     isolation=isolation)(batch(prompts, **columns, b=b))
    assert result.totals == approx(b)                 # the failing reward's term is left out
    name = config["name"]
    assert result.values[name] == [None] * size
    assert result.stats[f"reward/{name}/errors"] == 1.0
    assert result.stats[f"reward/{name}/abstain_rate"] == 1.0
    assert result.stats["reward/b/errors"] == 0.0


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_on_error_number_stands_in_for_every_sample(fault, isolation, compose, batch, release_sleepers):
    config, columns, prompts, _ = FAULTS[fault]
    size = len(prompts or next(iter(columns.values())))
    b = [float(i) for i in range(size)]
    result = compose({**config, "weight": 2.0, "on_error": 0.5}, {"name": "b"},
                     isolation=isolation)(batch(prompts, **columns, b=b))
    assert result.totals == approx([value + 2.0 * 0.5 for value in b])
    assert result.stats[f"reward/{config['name']}/errors"] == 1.0


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_after_a_time_out_the_next_batch_is_scored(compose, batch, release_sleepers, isolation):
    # 0.3 s: long enough for the healthy call below to answer in time on a busy machine (a fresh worker's
    # start-up does not count against it)
    composer = compose({"name": "sleepy", "timeout_s": 0.3, "on_error": "skip"}, isolation=isolation)
    hung = composer(batch(slow=[True, False]))
    assert hung.stats["reward/sleepy/errors"] == 1.0 and hung.totals == [0.0, 0.0]
    healthy = composer(batch(slow=[False, False]))   # while the hung call still holds its thread
    assert healthy.totals == approx([1.0, 1.0])
    assert healthy.stats["reward/sleepy/errors"] == 0.0


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_healthy_reward_under_a_time_limit_is_scored(compose, batch, isolation):
    result = compose({"name": "sleepy", "timeout_s": 5.0, "weight": 3.0}, isolation=isolation)(batch(slow=[False, False, False]))
    assert result.totals == approx([3.0, 3.0, 3.0])


# ---- building ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_build_composer_stamps_each_term_with_its_plugin(compose, isolation):
    composer = compose({"name": "a"}, {"name": "scaled", "options": {"factor": 2.0}}, isolation=isolation)
    assert [(term.name, term.plugin) for term in composer.terms] == [("a", PLUGIN), ("scaled", PLUGIN)]
    assert composer.terms[1].reward.options.factor == 2.0


def test_build_composer_unknown_reward_lists_the_known_ones(registry):
    with pytest.raises(UserError) as raised:
        build_composer([RewardConfig(name="nope")], registry, RunContext())
    assert "'nope'" in str(raised.value)
    for name in ("a", "b", "fragile", "scaled"):
        assert name in str(raised.value)


@pytest.mark.parametrize("options, expected", [
    ({"factor": 1.0, "facter": 2.0}, "unknown option(s) facter"),
    ({}, "factor: Field required"),
    ({"factor": "big"}, "factor: Input should be a valid number"),
])
def test_build_composer_bad_options_name_the_config_location(registry, options, expected):
    configs = [RewardConfig(name="a"), RewardConfig(name="scaled", options=options)]
    with pytest.raises(ConfigError) as raised:
        build_composer(configs, registry, RunContext(), source="run.yaml")
    assert "run.yaml: rewards.1.options" in str(raised.value)
    assert expected in str(raised.value)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_reward_that_cannot_start_is_a_plugin_error(registry, isolation):
    with pytest.raises(PluginError) as raised:
        build_composer([RewardConfig(name="unstartable", isolation=isolation)], registry, RunContext())
    message = str(raised.value)
    assert "'unstartable'" in message and f"plugin '{PLUGIN}'" in message and "model file missing" in message


# ---- rewards that score from the reference model's hidden states ------------------------------------------------
HIDDEN = [[1.0, 2.0], [3.0, 4.0]]  # [B, H]: what the engine hands over (a tensor in a run); row sums 3 and 7


def test_a_hidden_state_reward_that_declared_it_scores_from_the_hidden_states(compose, batch):
    composer = compose({"name": "from_hidden"}, {"name": "a"})
    assert composer.reads_reference_hidden
    samples = batch(a=[1.0, 2.0], from_hidden=[10.0, 20.0])
    result = composer(samples, HIDDEN)
    assert result.values == {"from_hidden": [3.0, 7.0], "a": [1.0, 2.0]}  # a plain reward still reads the text
    assert result.totals == approx([4.0, 9.0])
    # without hidden states (evaluation has no reference model) the same reward scores the text
    assert composer(samples).values["from_hidden"] == [10.0, 20.0]


def test_a_hidden_state_reward_that_declared_it_cannot_is_called_with_the_text(compose, batch):
    composer = compose({"name": "from_hidden", "options": {"reads": False}}, {"name": "a"})
    assert not composer.reads_reference_hidden
    result = composer(batch(a=[1.0, 2.0], from_hidden=[10.0, 20.0]), HIDDEN)
    assert result.values["from_hidden"] == [10.0, 20.0]


def test_only_a_hidden_state_reward_can_declare_it(compose):
    assert not compose({"name": "a"}, {"name": "b"}).reads_reference_hidden
    assert not hasattr(Reward, "reads_reference_hidden") and not hasattr(Reward, "score_hidden")
    assert issubclass(HiddenStateReward, Reward) and HiddenStateReward.reads_reference_hidden is False


@pytest.mark.parametrize("name, method", [("forgot_score_hidden", "score_hidden"), ("forgot_call", "__call__")])
def test_a_reward_missing_its_method_is_a_reward_error_that_says_which(compose, batch, name, method):
    with pytest.raises(RewardError) as raised:
        compose({"name": name})(batch(a=[1.0, 2.0]), HIDDEN)
    message = str(raised.value)
    assert f"reward '{name}'" in message and f"plugin '{PLUGIN}'" in message
    assert f"does not implement {method}" in message
