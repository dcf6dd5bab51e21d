"""The reward ``reward_model`` of this distribution (``ppo-core-reward-model``): discovery through its entry
point, option and directory errors, and zero extra forward (scoring the frozen reference model's hidden states
equals the plugin's own forward).

The tiny checkpoint and the trained reward model are the session fixtures of :mod:`ppo_core.testing` (the core's
reward-model tests share them). The distribution must be installed (``pip install -e plugins/ppo-core-reward-model``):
without it this module fails on import, it never skips.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from ppo_core_reward_model import HubRewardModel, RewardModelOptions, RewardModelReward

from ppo_core import HiddenStateReward, Record, RunContext, Sample
from ppo_core.config import DataConfig, GenerationConfig, ModelConfig, OptimConfig, PPOConfig, RewardConfig
from ppo_core.data.prompts import encode_records, left_pad
from ppo_core.errors import ConfigError, UserError
from ppo_core.modeling.loading import frozen_copy, load_causal_lm, load_tokenizer
from ppo_core.plugin.loading import load_plugins
from ppo_core.ppo.actor_critic import build_actor_critic
from ppo_core.ppo.rollout import response_outputs
from ppo_core.reward_model import RewardModelError
from ppo_core.reward_model.model import right_pad
from ppo_core.reward_model.storage import REWARD_HEAD_FILE, REWARD_MODEL_FILE
from ppo_core.testing import one_torch_thread, random_samples, toy_preference_pairs

PLUGIN = "reward_model"
DISTRIBUTION = "ppo-core-reward-model"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def engine_batch(tokenizer, samples):
    """What the engine runs: left-padded prompts, right-padded responses (eos included when it stopped)."""
    prompts = [tokenizer(s.prompt)["input_ids"] for s in samples]
    input_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    responses = [list(s.response_ids) + ([tokenizer.eos_token_id] if s.stop_reason == "eos" else []) for s in samples]
    tokens, response_mask = right_pad(responses, tokenizer.pad_token_id)
    sequences = torch.cat([input_ids, tokens], dim=1)
    attention_mask = torch.cat([prompt_mask.bool(), response_mask.bool()], dim=1)
    return sequences, attention_mask, input_ids.size(1)


def test_normalised_scores_of_the_starting_policy_have_mean_0_std_1(trained_reward_model, tiny_tokenizer):
    directory, _result, normalization = trained_reward_model
    samples = normalization.samples
    assert len(samples) == 48 and normalization.count == 48
    assert normalization.raw_std > 0 and normalization.source.startswith("policy ")
    # the plugin, scoring the policy's responses as the engine builds them, gives mean 0 and std 1
    reward = RewardModelReward(RewardModelOptions(path=str(directory), zero_extra_forward="off"),
                               RunContext(tokenizer=tiny_tokenizer))
    scores = torch.tensor(reward(samples), dtype=torch.float64)
    assert abs(float(scores.mean())) < 1e-4
    assert float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    raw = RewardModelReward(RewardModelOptions(path=str(directory), normalize=False, zero_extra_forward="off"))
    torch.testing.assert_close(torch.tensor(raw(samples), dtype=torch.float64),
                               (scores - normalization.bias) / normalization.gain, rtol=0, atol=1e-4)


def test_zero_extra_forward_scores_equal_the_standalone_plugin(trained_reward_model, tiny_model_dir, tiny_tokenizer):
    directory = str(trained_reward_model[0])
    context = RunContext(tokenizer=tiny_tokenizer, policy_path=str(tiny_model_dir))
    fast = RewardModelReward(RewardModelOptions(path=directory), context)
    slow = RewardModelReward(RewardModelOptions(path=directory, zero_extra_forward="off", batch_size=5), context)
    assert isinstance(fast, HiddenStateReward)  # the capability is declared by the class, decided per instance
    assert fast.reads_reference_hidden and fast.members[0].model.backbone is None  # no backbone loaded at all
    assert not slow.reads_reference_hidden and slow.members[0].model.backbone is not None

    samples = random_samples(tiny_tokenizer, 12)
    assert {s.stop_reason for s in samples} == {"eos", "length"} and min(len(s.response_ids) for s in samples) == 0
    reference = frozen_copy(load_causal_lm(str(tiny_model_dir), tokenizer=tiny_tokenizer))
    sequences, attention_mask, prompt_length = engine_batch(tiny_tokenizer, samples)
    hidden = response_outputs(reference, sequences, attention_mask, prompt_length, 1.0, with_values=False,
                              with_last_hidden=True).last_hidden
    engine_scores = torch.tensor(fast.score_hidden(samples, hidden))
    standalone = torch.tensor(slow(samples))
    torch.testing.assert_close(engine_scores, standalone, rtol=0, atol=1e-5)
    # __call__ still works (the backbone is loaded on first use)
    torch.testing.assert_close(torch.tensor(fast(samples)), standalone, rtol=0, atol=1e-5)


def test_zero_extra_forward_in_a_real_rollout(trained_reward_model, tiny_model_dir, tiny_tokenizer):
    """The engine's rollout hands the reference hidden states to the composer; the reward's own forward
    (``__call__``) never runs, and the scores equal the standalone plugin's."""
    from ppo_core.commands.train import make_scorer
    from ppo_core.ppo.engine import PPOEngine, PromptBatch
    from ppo_core.rewards.composer import build_composer

    context = RunContext(tokenizer=tiny_tokenizer, policy_path=str(tiny_model_dir))
    registry = load_plugins(allow=[DISTRIBUTION]).registry
    directory = str(trained_reward_model[0])
    composer = build_composer([RewardConfig(name=PLUGIN, options={"path": directory})], registry, context)
    reward = composer.terms[0].reward
    assert composer.reads_reference_hidden

    def no_forward(samples):
        raise AssertionError("the reward model ran a forward pass of its own")

    reward.__call__ = no_forward  # instance attribute: the composer would call this one
    seen = {}

    class Recording:
        reads_reference_hidden = composer.reads_reference_hidden

        def start(self, samples):
            return samples

        def finish(self, chunks, reference_hidden=None, gather=None):
            samples = [sample for chunk in chunks for sample in chunk]
            seen["samples"], seen["hidden"] = samples, reference_hidden
            seen["composition"] = composition = composer(samples, reference_hidden)
            return composition

    model = build_actor_critic(ModelConfig(path=str(tiny_model_dir)), tiny_tokenizer, seed=0)
    reference = frozen_copy(model.policy)
    generator = torch.Generator().manual_seed(0)
    engine = PPOEngine(model, reference, PPOConfig(rollout_batch_size=8, minibatch_size=4, epochs=1),
                       GenerationConfig(max_new_tokens=6), OptimConfig(), 1, tiny_tokenizer.eos_token_id,
                       tiny_tokenizer.pad_token_id, generator)
    records = [Record.from_dict({"prompt": p["prompt"]}) for p in toy_preference_pairs(8, seed=4)]
    encoded = encode_records(records, tiny_tokenizer, DataConfig(dataset="toy"))
    input_ids, attention_mask = left_pad([e.ids for e in encoded], tiny_tokenizer.pad_token_id)
    engine.collect_rollout(PromptBatch(input_ids, attention_mask, encoded), make_scorer(Recording(), tiny_tokenizer))
    assert seen["hidden"] is not None and seen["hidden"].shape == (8, 64)
    standalone = RewardModelReward(RewardModelOptions(path=directory, zero_extra_forward="off"), context)
    torch.testing.assert_close(torch.tensor(seen["composition"].values[PLUGIN]),
                               torch.tensor(standalone(seen["samples"])), rtol=0, atol=1e-5)


def test_zero_extra_forward_only_when_the_head_sits_on_the_policys_frozen_backbone(trained_reward_model, tiny_model_dir,
                                                                                  tiny_tokenizer,
                                                                                  tmp_path):
    directory = str(trained_reward_model[0])

    def reads(context, **options):
        reward = RewardModelReward(RewardModelOptions(path=directory, **options), context)
        return reward.reads_reference_hidden, reward.zero_extra_forward_reason

    assert reads(RunContext(tokenizer=tiny_tokenizer, policy_path=str(tiny_model_dir)))[0]
    # the same checkpoint spelt differently still matches (paths are resolved)
    assert reads(RunContext(policy_path=str(tiny_model_dir / ".." / tiny_model_dir.name)))[0]
    assert reads(RunContext(policy_path=str(tiny_model_dir)), zero_extra_forward="off") == (
        False, "zero_extra_forward: off")
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    flag, reason = reads(RunContext(policy_path=str(copy)))
    assert not flag and "is not the policy's starting checkpoint" in reason
    assert reads(RunContext())[0] is False
    other_vocab = load_tokenizer(str(tiny_model_dir))
    other_vocab.add_tokens(["<extra>"])
    flag, reason = reads(RunContext(tokenizer=other_vocab, policy_path=str(tiny_model_dir)))
    assert not flag and "vocabulary" in reason
    # a head on the mean over every token needs those states: it runs its own backbone
    mean_pooled = shutil.copytree(directory, tmp_path / "mean")
    info = json.loads((mean_pooled / REWARD_MODEL_FILE).read_text())
    (mean_pooled / REWARD_MODEL_FILE).write_text(json.dumps({**info, "pool": "mean"}))
    directory = str(mean_pooled)
    flag, reason = reads(RunContext(tokenizer=tiny_tokenizer, policy_path=str(tiny_model_dir)))
    assert not flag and "pool: mean" in reason


def test_score_hidden_rejects_the_wrong_shape(trained_reward_model, tiny_model_dir):
    reward = RewardModelReward(RewardModelOptions(path=str(trained_reward_model[0])),
                               RunContext(policy_path=str(tiny_model_dir)))
    assert reward.reads_reference_hidden  # only a member that reads the hidden states checks their width
    samples = [Sample(prompt="p", response="", response_ids=(), solution=None, stop_reason="eos")]
    with pytest.raises(ValueError, match=r"shape \[1, 64\]"):
        reward.score_hidden(samples, torch.zeros(1, 32))


def test_an_ensemble_scores_the_mean_of_its_members_each_normalised_its_own_way(trained_reward_model, tiny_model_dir,
                                                                                tiny_tokenizer, tmp_path):
    """``path`` as a list: a head on the policy's frozen backbone (reads the reference hidden states) and a member
    with its backbone saved beside it and another normalisation (runs its own forward); the score is the mean of
    the members' normalised scores, from the engine's hidden states and from the samples alone alike."""
    from ppo_core.reward_model import load_reward_model, save_reward_model

    frozen = str(trained_reward_model[0])
    member = load_reward_model(frozen)
    gain, bias = member.gain, member.bias
    member.backbone_frozen, member.gain, member.bias = False, 2.0 * gain, bias - 0.5  # same weights, other scale
    trained = str(save_reward_model(member, tmp_path / "trained"))
    context = RunContext(tokenizer=tiny_tokenizer, policy_path=str(tiny_model_dir))
    ensemble = RewardModelReward(RewardModelOptions(path=[frozen, trained]), context)
    assert ensemble.reads_reference_hidden
    assert [m.reads_reference_hidden for m in ensemble.members] == [True, False]
    assert ensemble.zero_extra_forward_reason.startswith("path[0]: reads the reference model's hidden states")
    assert "path[1]: the reward model's backbone was trained" in ensemble.zero_extra_forward_reason

    samples = random_samples(tiny_tokenizer, 8)
    one = [torch.tensor(RewardModelReward(RewardModelOptions(path=path, zero_extra_forward="off"), context)(samples))
           for path in (frozen, trained)]
    assert not torch.allclose(one[0], one[1], atol=1e-3)  # the members disagree: the mean is a real mean
    reference = frozen_copy(load_causal_lm(str(tiny_model_dir), tokenizer=tiny_tokenizer))
    sequences, attention_mask, prompt_length = engine_batch(tiny_tokenizer, samples)
    hidden = response_outputs(reference, sequences, attention_mask, prompt_length, 1.0, with_values=False,
                              with_last_hidden=True).last_hidden
    expected = (one[0] + one[1]) / 2
    torch.testing.assert_close(torch.tensor(ensemble.score_hidden(samples, hidden)), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ensemble(samples)), expected, rtol=0, atol=1e-5)
    raw = RewardModelReward(RewardModelOptions(path=[frozen, trained], normalize=False), context)
    # both members hold the same weights: their raw scores, and so the mean of them, are the first one's raw
    torch.testing.assert_close(torch.tensor(raw(samples)), (one[0] - bias) / gain, rtol=0, atol=1e-4)


def test_plugin_is_discovered_through_its_entry_point():
    plugins = load_plugins()
    infos = {info.name: info for info in plugins.loaded}
    assert PLUGIN in infos, f"{DISTRIBUTION} is not installed or failed: {[f.describe() for f in plugins.failed]}"
    assert infos[PLUGIN].distribution == DISTRIBUTION
    assert infos[PLUGIN].entry_point == "ppo_core_reward_model.plugin"
    assert plugins.registry.by_plugin(PLUGIN, "reward") == ["hf_reward_model", "reward_model"]
    assert plugins.registry.get("reward", "reward_model").cls is RewardModelReward
    assert plugins.registry.get("reward", "hf_reward_model").cls is HubRewardModel


@pytest.fixture(scope="module")
def registry():
    return load_plugins(allow=[DISTRIBUTION]).registry


@pytest.mark.parametrize("options, message", [
    ({}, "path: Field required"),
    ({"path": "x", "batch_size": 0}, "batch_size: Input should be greater than 0"),
    ({"path": "x", "zero_extra_forward": "yes"}, "zero_extra_forward: Input should be 'auto' or 'off'"),
    ({"path": "x", "normalize": "maybe"}, "normalize: Input should be a valid boolean"),
    ({"path": "x", "normalise": True}, "unknown option(s) normalise for reward 'reward_model'"),
    ({"path": ""}, "path: Value error, a directory is an empty string"),
    ({"path": []}, "path: Value error, an empty list names no reward model directory"),
    ({"path": ["a", ""]}, "path: Value error, a directory is an empty string"),
    ({"path": ["a", "b", "a"]}, "path: Value error, lists a more than once"),
])
def test_bad_options_are_config_errors(registry, options, message):
    with pytest.raises(ConfigError) as info:
        registry.build("reward", PLUGIN, options, RunContext(), where="run.yaml: rewards.0.options")
    assert "run.yaml: rewards.0.options" in str(info.value) and message in str(info.value)


def test_missing_or_broken_directories_are_clear_user_errors(registry, trained_reward_model, tmp_path):
    def build(path):
        with pytest.raises(UserError) as info:
            registry.build("reward", PLUGIN, {"path": str(path)}, RunContext())
        assert isinstance(info.value, RewardModelError)
        assert str(info.value).startswith("reward 'reward_model' option path: ")
        return str(info.value)

    assert "does not exist" in build(tmp_path / "missing") and "train-reward" in build(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert f"has no {REWARD_MODEL_FILE}" in build(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in build(tmp_path / "file")

    def broken(name, edit=None, text=None, drop=None):
        directory = Path(shutil.copytree(trained_reward_model[0], tmp_path / name))
        info_path = directory / REWARD_MODEL_FILE
        if text is not None:
            info_path.write_text(text)
        if edit is not None:
            data = json.loads(info_path.read_text())
            edit(data)
            info_path.write_text(json.dumps(data))
        if drop is not None:
            (directory / drop).unlink()
        return build(directory)

    assert "not valid JSON" in broken("json", text="{")
    assert REWARD_HEAD_FILE + " is missing" in broken("head", drop=REWARD_HEAD_FILE)
    assert "hidden_size: Input should be greater than 0" in broken("hidden", edit=lambda d: d.update(hidden_size=0))
    assert "do not fit a head of hidden size 32" in broken("shape", edit=lambda d: d.update(hidden_size=32))
    assert "colour: Extra inputs are not permitted" in broken("extra", edit=lambda d: d.update(colour="red"))
    assert "version 7 is not supported" in broken("version", edit=lambda d: d.update(version=7))
    assert "tokenizer: model.tokenizer: cannot load a tokenizer" in broken(
        "tokenizer", edit=lambda d: d.update(tokenizer=str(tmp_path / "gone")))
    # without zero extra forward the backbone is loaded at once, so a missing one is reported at start
    assert "backbone.path: cannot load a transformer backbone" in broken(
        "backbone", edit=lambda d: d["backbone"].update(path=str(tmp_path / "gone")))
    # an ensemble's broken member: the message names its place in the list and its path
    with pytest.raises(RewardModelError) as info:
        registry.build("reward", PLUGIN, {"path": [str(trained_reward_model[0]), str(tmp_path / "empty")]},
                       RunContext())
    assert str(info.value).startswith(f"reward 'reward_model' option path[1] ({tmp_path / 'empty'}): ")
    assert f"has no {REWARD_MODEL_FILE}" in str(info.value)


def test_zero_extra_forward_off_can_be_written_unquoted_in_yaml():
    import yaml
    from ppo_core_reward_model.reward import RewardModelOptions

    options = yaml.safe_load("path: somewhere\nzero_extra_forward: off\n")
    assert options["zero_extra_forward"] is False  # what YAML 1.1 makes of it
    assert RewardModelOptions.model_validate(options).zero_extra_forward == "off"

