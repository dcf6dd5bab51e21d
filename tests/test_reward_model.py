"""The learned reward model: ppo_core.reward_model (data, training, normalisation, save/load, train-reward CLI)
and the separately installed distribution ``ppo-core-reward-model`` (reward ``reward_model``).

Everything runs on tiny random GPT-2 checkpoints from :func:`ppo_core.modeling.tiny.init_model`, seeded. The plugin
distribution must be installed (``pip install -e plugins/ppo-core-reward-model``): without it this module
fails on import, it never skips.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from ppo_core_reward_model import RewardModelOptions, RewardModelReward

from ppo_core import HiddenStateReward, Record, RunContext, Sample
from ppo_core.cli import main
from ppo_core.config import (
    DataConfig,
    GenerationConfig,
    ModelConfig,
    OptimConfig,
    PPOConfig,
    RewardConfig,
)
from ppo_core.config.train_reward import RewardTrainOptions
from ppo_core.data.prompts import encode_records, left_pad
from ppo_core.errors import ConfigError, DataError, UserError
from ppo_core.modeling.heads import MLPHead
from ppo_core.modeling.loading import (
    frozen_copy,
    load_backbone,
    load_causal_lm,
    load_tokenizer,
)
from ppo_core.modeling.tiny import init_model
from ppo_core.plugin.loading import load_plugins
from ppo_core.ppo.actor_critic import build_actor_critic
from ppo_core.ppo.rollout import position_ids_from_mask, response_outputs
from ppo_core.reward_model import (
    PreferencePair,
    RewardData,
    RewardModelError,
    corrupt,
    load_reward_model,
    make_preference_pairs,
    normalize_on_policy,
    normalize_on_responses,
    read_reward_data,
    sample_token_ids,
    save_reward_model,
    train_reward_model,
    write_jsonl,
)
from ppo_core.reward_model.model import right_pad
from ppo_core.reward_model.storage import (
    BACKBONE_DIR,
    REWARD_HEAD_FILE,
    REWARD_MODEL_FILE,
)

PLUGIN = "reward_model"
DISTRIBUTION = "ppo-core-reward-model"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are fastest on one thread (and a loaded machine makes more threads much slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return init_model(tmp_path_factory.mktemp("rm") / "policy", "tiny", seed=0)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return load_tokenizer(str(checkpoint))


def toy_pairs(n: int = 160, seed: int = 0) -> list[dict]:
    """Separable: the chosen response is only 'a's, the rejected one only 'b's (lengths vary)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = "".join(rng.choice("xyz") for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": f"say: {word} =", "chosen": "a" * rng.randint(1, 6),
                     "rejected": "b" * rng.randint(1, 6)})
    return rows


@pytest.fixture(scope="module")
def trained(checkpoint, tmp_path_factory):
    """Frozen backbone + head on the toy pairs, normalised on the starting policy, saved."""
    data = RewardData.from_rows(toy_pairs())
    result = train_reward_model(str(checkpoint), data, RewardTrainOptions(epochs=30, held_out_fraction=0.25))
    normalization = normalize_on_policy(result.model, str(checkpoint), data.prompts, num_prompts=48,
                                        max_new_tokens=8, seed=0)
    directory = save_reward_model(result.model, tmp_path_factory.mktemp("rm") / "reward")
    return directory, result, normalization


def engine_batch(tokenizer, samples):
    """What the engine runs: left-padded prompts, right-padded responses (eos included when it stopped)."""
    prompts = [tokenizer(s.prompt)["input_ids"] for s in samples]
    input_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    responses = [list(s.response_ids) + ([tokenizer.eos_token_id] if s.stop_reason == "eos" else []) for s in samples]
    tokens, response_mask = right_pad(responses, tokenizer.pad_token_id)
    sequences = torch.cat([input_ids, tokens], dim=1)
    attention_mask = torch.cat([prompt_mask.bool(), response_mask.bool()], dim=1)
    return sequences, attention_mask, input_ids.size(1)


def make_samples(tokenizer, n: int = 12, seed: int = 3) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        prompt = "say: " + "".join(rng.choice("xyz") for _ in range(rng.randint(1, 6))) + " ="
        response = "".join(rng.choice("abq") for _ in range(rng.randint(0 if i % 3 else 1, 9)))
        ids = tuple(tokenizer(response, add_special_tokens=False)["input_ids"])
        samples.append(Sample(prompt=prompt, response=response, response_ids=ids, solution=None,
                              stop_reason="eos" if i % 3 else "length"))
    return samples


# ---- the head and the model -------------------------------------------------------------------------------


def test_head_init_and_shape():
    torch.manual_seed(0)
    head = MLPHead(256, init="normal")
    for layer in (head.dense, head.out):
        expected = 1.0 / (layer.in_features + 1) ** 0.5
        assert abs(float(layer.weight.detach().std()) - expected) < 0.1 * expected
        assert float(layer.weight.detach().mean()) == pytest.approx(0.0, abs=0.2 * expected)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert head.dense.weight.shape == (256, 256) and head.out.weight.shape == (1, 256)
    assert head(torch.zeros(3, 5, 256)).shape == (3, 5)


def test_gpt2_lm_final_hidden_state_equals_base_model_last_hidden_state(checkpoint, tokenizer):
    """What the engine hands over (GPT2LMHeadModel hidden_states[-1]) is the backbone's last_hidden_state
    (ln_f applied), so a head trained on the backbone reads the reference model's states unchanged."""
    lm = load_causal_lm(str(checkpoint), tokenizer=tokenizer).eval()
    base = load_backbone(str(checkpoint), tokenizer=tokenizer).eval()
    input_ids, attention_mask = left_pad([tokenizer("say: xy =")["input_ids"], tokenizer("ab")["input_ids"]],
                                         tokenizer.pad_token_id)
    positions = position_ids_from_mask(attention_mask)
    with torch.no_grad():
        from_lm = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                     output_hidden_states=True).hidden_states[-1]
        from_base = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    assert torch.equal(from_lm, from_base)


def test_score_reads_the_last_real_token_with_left_or_right_padding(trained, tokenizer):
    model = load_reward_model(trained[0])
    rows = [sample_token_ids(tokenizer, s) for s in make_samples(tokenizer, 6)]
    right_ids, right_mask = right_pad(rows, tokenizer.pad_token_id)
    left_ids, left_mask = left_pad(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        right = model.score(right_ids, right_mask)
        left = model.score(left_ids, left_mask)
        alone = torch.cat([model.score(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)) for row in rows])
    assert right.shape == (6,)
    torch.testing.assert_close(left, right, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, right, rtol=0, atol=1e-5)


def test_sample_token_ids_prefer_the_engines_prompt_ids_when_a_sample_carries_them(tokenizer):
    from types import SimpleNamespace

    sample = SimpleNamespace(prompt="ignored", prompt_ids=(1, 80, 81), response="ab", response_ids=(69, 70),
                             stop_reason="eos")
    assert sample_token_ids(tokenizer, sample) == [1, 80, 81, 69, 70, tokenizer.eos_token_id]
    # another vocabulary: the response is re-tokenized from its text, the prompt from its text
    assert sample_token_ids(tokenizer, sample, same_vocab=False) == (
        tokenizer("ignored")["input_ids"] + tokenizer("ab", add_special_tokens=False)["input_ids"] + [2])


def test_sample_token_ids_are_the_engines(tokenizer):
    stopped = Sample(prompt="say: x =", response="ab", response_ids=(69, 70), solution=None, stop_reason="eos")
    cut = Sample(prompt="say: x =", response="ab", response_ids=(69, 70), solution=None, stop_reason="length")
    prompt = tokenizer("say: x =")["input_ids"]
    assert prompt[0] == tokenizer.bos_token_id
    assert sample_token_ids(tokenizer, stopped) == prompt + [69, 70, tokenizer.eos_token_id]
    assert sample_token_ids(tokenizer, cut) == prompt + [69, 70]


# ---- training ---------------------------------------------------------------------------------------------


def test_preference_pairs_reach_high_held_out_accuracy_on_a_frozen_backbone(trained):
    metrics = trained[1].metrics
    assert metrics["kind"] == "pairs" and metrics["held_out_size"] + metrics["train_size"] == 160
    assert 40 <= metrics["held_out_size"] <= 48  # a quarter, rounded up to whole prompts
    assert metrics["held_out_accuracy"] >= 0.95, metrics
    assert metrics["train_accuracy"] >= 0.95, metrics
    history = trained[1].history
    assert len(history) == 30 and history[-1]["loss"] < history[0]["loss"]


def test_training_the_backbone_too(checkpoint, tmp_path):
    result = train_reward_model(str(checkpoint), toy_pairs(64, seed=1),
                                RewardTrainOptions(train_backbone=True, epochs=3, lr=1e-3, batch_size=16,
                                                   held_out_fraction=0.25, seed=1))
    assert result.metrics["held_out_accuracy"] >= 0.95, result.metrics
    model = result.model
    assert not model.backbone_frozen and all(p.requires_grad for p in model.backbone.parameters())
    directory = save_reward_model(model, tmp_path / "rm")
    info = json.loads((directory / REWARD_MODEL_FILE).read_text())
    assert info["backbone"] == {"path": BACKBONE_DIR, "frozen": False} and info["tokenizer"] == BACKBONE_DIR
    assert (directory / BACKBONE_DIR / "model.safetensors").is_file()
    reloaded = load_reward_model(directory)
    rows = [[1, 40, 40, 2], [1, 41, 41, 41, 2], [1, 69]]
    model.eval()
    assert torch.equal(model.score_ids(rows), reloaded.score_ids(rows))


def test_scalar_labels_train_with_mse(checkpoint):
    rng = random.Random(2)
    rows = []
    for _ in range(120):
        good = rng.random() < 0.5
        rows.append({"prompt": "rate:", "response": ("a" if good else "b") * rng.randint(1, 6),
                     "score": 1.0 if good else -1.0})
    result = train_reward_model(str(checkpoint), rows, RewardTrainOptions(epochs=20, lr=3e-3, held_out_fraction=0.25))
    metrics = result.metrics
    assert metrics["kind"] == "labels"
    assert metrics["held_out_mse"] < 0.2, metrics
    assert metrics["held_out_accuracy"] >= 0.95, metrics


def test_held_out_split_keeps_a_prompts_items_together():
    from ppo_core.reward_model.training import _split

    prompts = [f"p{i // 3}" for i in range(30)]  # ten prompts, three pairs each
    held, train = _split(prompts, 0.2, torch.Generator().manual_seed(0))
    assert len(held) == 6 and sorted(held + train) == list(range(30))
    assert not {prompts[i] for i in held} & {prompts[i] for i in train}
    held, train = _split(["same"] * 10, 0.2, torch.Generator().manual_seed(0))  # one prompt: item by item
    assert len(held) == 2 and len(train) == 8
    assert _split(["a", "b"], 0.0, torch.Generator())[0] == []


def test_training_is_deterministic(checkpoint):
    options = RewardTrainOptions(epochs=2, held_out_fraction=0.2, seed=5)
    first = train_reward_model(str(checkpoint), toy_pairs(40), options)
    second = train_reward_model(str(checkpoint), toy_pairs(40), options)
    for a, b in zip(first.model.head.parameters(), second.model.head.parameters()):
        assert torch.equal(a, b)
    assert first.metrics == second.metrics


# ---- save and load ----------------------------------------------------------------------------------------


def test_saved_reward_model_reloads_with_bit_identical_scores(trained, checkpoint, tokenizer):
    directory, result, normalization = trained
    assert sorted(p.name for p in directory.iterdir()) == [REWARD_HEAD_FILE, REWARD_MODEL_FILE]  # no pickle
    info = json.loads((directory / REWARD_MODEL_FILE).read_text())
    assert info["backbone"] == {"path": str(checkpoint.resolve()), "frozen": True}
    assert info["tokenizer"] == str(checkpoint.resolve())
    assert info["hidden_size"] == 64 and info["head_hidden"] == 64
    assert (info["gain"], info["bias"]) == (normalization.gain, normalization.bias)
    assert info["training"]["metrics"]["held_out_accuracy"] == result.metrics["held_out_accuracy"]
    reloaded = load_reward_model(directory)
    assert (reloaded.gain, reloaded.bias) == (result.model.gain, result.model.bias)
    rows = [sample_token_ids(tokenizer, s) for s in make_samples(tokenizer)]
    for normalize in (True, False):
        assert torch.equal(result.model.score_ids(rows, normalize=normalize),
                           reloaded.score_ids(rows, normalize=normalize))


def test_save_is_atomic_and_replaces(trained, tmp_path):
    model = load_reward_model(trained[0])
    target = tmp_path / "out"
    save_reward_model(model, target)
    model.bias += 1.0
    save_reward_model(model, target)
    assert json.loads((target / REWARD_MODEL_FILE).read_text())["bias"] == model.bias
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .partial- or .old- left behind


# ---- normalisation ----------------------------------------------------------------------------------------


def test_normalised_scores_of_the_starting_policy_have_mean_0_std_1(trained, checkpoint, tokenizer):
    directory, _result, normalization = trained
    samples = normalization.samples
    assert len(samples) == 48 and normalization.count == 48
    assert normalization.raw_std > 0 and normalization.source.startswith("policy ")
    # the plugin, scoring the policy's responses as the engine builds them, gives mean 0 and std 1
    reward = RewardModelReward(RewardModelOptions(path=str(directory), zero_extra_forward="off"),
                               RunContext(tokenizer=tokenizer))
    scores = torch.tensor(reward(samples), dtype=torch.float64)
    assert abs(float(scores.mean())) < 1e-4
    assert float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    raw = RewardModelReward(RewardModelOptions(path=str(directory), normalize=False, zero_extra_forward="off"))
    torch.testing.assert_close(torch.tensor(raw(samples), dtype=torch.float64),
                               (scores - normalization.bias) / normalization.gain, rtol=0, atol=1e-4)


def test_normalisation_on_given_responses(trained):
    model = load_reward_model(trained[0])
    prompts = [f"say: {w} =" for w in ("x", "yy", "zxz", "y", "zz", "xyzx")]
    responses = ["a", "bb", "ab", "aaa", "bab", "q"]
    normalization = normalize_on_responses(model, prompts, responses)
    rows = [sample_token_ids(model.tokenizer, s) for s in normalization.samples]
    scores = model.score_ids(rows).double()
    assert abs(float(scores.mean())) < 1e-4 and float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


# ---- zero extra forward -----------------------------------------------------------------------------------


def test_zero_extra_forward_scores_equal_the_standalone_plugin(trained, checkpoint, tokenizer):
    directory = str(trained[0])
    context = RunContext(tokenizer=tokenizer, policy_path=str(checkpoint))
    fast = RewardModelReward(RewardModelOptions(path=directory), context)
    slow = RewardModelReward(RewardModelOptions(path=directory, zero_extra_forward="off", batch_size=5), context)
    assert isinstance(fast, HiddenStateReward)  # the capability is declared by the class, decided per instance
    assert fast.reads_reference_hidden and fast.model.backbone is None  # no backbone loaded at all
    assert not slow.reads_reference_hidden and slow.model.backbone is not None

    samples = make_samples(tokenizer, 12)
    assert {s.stop_reason for s in samples} == {"eos", "length"} and min(len(s.response_ids) for s in samples) == 0
    reference = frozen_copy(load_causal_lm(str(checkpoint), tokenizer=tokenizer))
    sequences, attention_mask, prompt_length = engine_batch(tokenizer, samples)
    hidden = response_outputs(reference, sequences, attention_mask, prompt_length, 1.0, with_values=False,
                              with_last_hidden=True).last_hidden
    engine_scores = torch.tensor(fast.score_hidden(samples, hidden))
    standalone = torch.tensor(slow(samples))
    torch.testing.assert_close(engine_scores, standalone, rtol=0, atol=1e-5)
    # __call__ still works (the backbone is loaded on first use)
    torch.testing.assert_close(torch.tensor(fast(samples)), standalone, rtol=0, atol=1e-5)


def test_zero_extra_forward_in_a_real_rollout(trained, checkpoint, tokenizer):
    """The engine's rollout hands the reference hidden states to the composer; the reward's own forward
    (``__call__``) never runs, and the scores equal the standalone plugin's."""
    from ppo_core.commands.train import make_scorer
    from ppo_core.ppo.engine import PPOEngine, PromptBatch
    from ppo_core.rewards.composer import build_composer

    context = RunContext(tokenizer=tokenizer, policy_path=str(checkpoint))
    registry = load_plugins(allow=[DISTRIBUTION]).registry
    composer = build_composer([RewardConfig(name=PLUGIN, options={"path": str(trained[0])})], registry, context)
    reward = composer.terms[0].reward
    assert composer.reads_reference_hidden

    def no_forward(samples):
        raise AssertionError("the reward model ran a forward pass of its own")

    reward.__call__ = no_forward  # instance attribute: the composer would call this one
    seen = {}

    class Recording:
        reads_reference_hidden = composer.reads_reference_hidden

        def __call__(self, samples, reference_hidden=None):
            seen["samples"], seen["hidden"] = samples, reference_hidden
            seen["composition"] = composition = composer(samples, reference_hidden)
            return composition

    model = build_actor_critic(ModelConfig(path=str(checkpoint)), tokenizer, seed=0)
    reference = frozen_copy(model.policy)
    generator = torch.Generator().manual_seed(0)
    engine = PPOEngine(model, reference, PPOConfig(rollout_batch_size=8, minibatch_size=4, epochs=1),
                       GenerationConfig(max_new_tokens=6), OptimConfig(), 1, tokenizer.eos_token_id,
                       tokenizer.pad_token_id, generator)
    records = [Record.from_dict({"prompt": p["prompt"]}) for p in toy_pairs(8, seed=4)]
    encoded = encode_records(records, tokenizer, DataConfig(dataset="toy"))
    input_ids, attention_mask = left_pad([e.ids for e in encoded], tokenizer.pad_token_id)
    engine.collect_rollout(PromptBatch(input_ids, attention_mask, encoded), make_scorer(Recording(), tokenizer))
    assert seen["hidden"] is not None and seen["hidden"].shape == (8, 64)
    standalone = RewardModelReward(RewardModelOptions(path=str(trained[0]), zero_extra_forward="off"), context)
    torch.testing.assert_close(torch.tensor(seen["composition"].values[PLUGIN]),
                               torch.tensor(standalone(seen["samples"])), rtol=0, atol=1e-5)


def test_zero_extra_forward_only_when_the_head_sits_on_the_policys_frozen_backbone(trained, checkpoint, tokenizer,
                                                                                  tmp_path):
    directory = str(trained[0])

    def reads(context, **options):
        reward = RewardModelReward(RewardModelOptions(path=directory, **options), context)
        return reward.reads_reference_hidden, reward.zero_extra_forward_reason

    assert reads(RunContext(tokenizer=tokenizer, policy_path=str(checkpoint)))[0]
    # the same checkpoint spelt differently still matches (paths are resolved)
    assert reads(RunContext(policy_path=str(checkpoint / ".." / checkpoint.name)))[0]
    assert reads(RunContext(policy_path=str(checkpoint)), zero_extra_forward="off") == (False, "zero_extra_forward: off")
    copy = shutil.copytree(checkpoint, tmp_path / "copy")
    flag, reason = reads(RunContext(policy_path=str(copy)))
    assert not flag and "is not the policy's starting checkpoint" in reason
    assert reads(RunContext())[0] is False
    other_vocab = load_tokenizer(str(checkpoint))
    other_vocab.add_tokens(["<extra>"])
    flag, reason = reads(RunContext(tokenizer=other_vocab, policy_path=str(checkpoint)))
    assert not flag and "vocabulary" in reason


def test_score_hidden_rejects_the_wrong_shape(trained):
    reward = RewardModelReward(RewardModelOptions(path=str(trained[0])), RunContext(policy_path="/nowhere"))
    samples = [Sample(prompt="p", response="", response_ids=(), solution=None, stop_reason="eos")]
    with pytest.raises(ValueError, match=r"shape \[1, 64\]"):
        reward.score_hidden(samples, torch.zeros(1, 32))


# ---- the plugin -------------------------------------------------------------------------------------------


def test_plugin_is_discovered_through_its_entry_point():
    plugins = load_plugins()
    infos = {info.name: info for info in plugins.loaded}
    assert PLUGIN in infos, f"{DISTRIBUTION} is not installed or failed: {[f.describe() for f in plugins.failed]}"
    assert infos[PLUGIN].distribution == DISTRIBUTION
    assert infos[PLUGIN].entry_point == "ppo_core_reward_model.plugin"
    assert plugins.registry.by_plugin(PLUGIN, "reward") == ["reward_model"]
    assert plugins.registry.get("reward", "reward_model").cls is RewardModelReward


@pytest.fixture(scope="module")
def registry():
    return load_plugins(allow=[DISTRIBUTION]).registry


@pytest.mark.parametrize("options, message", [
    ({}, "path: Field required"),
    ({"path": "x", "batch_size": 0}, "batch_size: Input should be greater than 0"),
    ({"path": "x", "zero_extra_forward": "yes"}, "zero_extra_forward: Input should be 'auto' or 'off'"),
    ({"path": "x", "normalize": "maybe"}, "normalize: Input should be a valid boolean"),
    ({"path": "x", "normalise": True}, "unknown option(s) normalise for reward 'reward_model'"),
])
def test_bad_options_are_config_errors(registry, options, message):
    with pytest.raises(ConfigError) as info:
        registry.build("reward", PLUGIN, options, RunContext(), where="run.yaml: rewards.0.options")
    assert "run.yaml: rewards.0.options" in str(info.value) and message in str(info.value)


def test_missing_or_broken_directories_are_clear_user_errors(registry, trained, tmp_path):
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
        directory = Path(shutil.copytree(trained[0], tmp_path / name))
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


# ---- data -------------------------------------------------------------------------------------------------


def test_reward_data_from_jsonl(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [PreferencePair(prompt="p", chosen="a", rejected="b"),
                                                   {"prompt": "q", "chosen": "c", "rejected": "d"}])
    data = read_reward_data(pairs)
    assert data.kind == "pairs" and [p.chosen for p in data.items] == ["a", "c"] and data.prompts == ["p", "q"]
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"prompt": "p", "response": "a", "score": 1}\n\n{"prompt": "p", "response": "b", "score": -0.5}\n')
    data = read_reward_data(labels)
    assert data.kind == "labels" and [s.score for s in data.items] == [1.0, -0.5] and data.prompts == ["p"]


@pytest.mark.parametrize("lines, kind, message", [
    (['{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p", "chosen": "a"}'], "auto",
     "line 2: rejected: Field required"),
    (['{"prompt": "p", "chosen": "a", "rejected": "b"}', "", '{"prompt": 1, "chosen": "a", "rejected": "b"}'], "auto",
     "line 3: prompt: Input should be a valid string"),
    (['{"prompt": "p", "chosen": "a", "rejected": "b"', ], "auto", "line 1: not valid JSON"),
    (['["p", "a", "b"]'], "auto", "line 1: expected a JSON object, got list"),
    (['{"prompt": "p", "text": "a"}'], "auto", "line 1: cannot tell preference pairs"),
    (['{"prompt": "p", "response": "a", "score": 1}', '{"prompt": "p", "chosen": "a", "rejected": "b"}'], "auto",
     "line 2: a preference pair in a file of labels (line 1 decided the kind"),
    (['{"prompt": "p", "response": "a", "score": NaN}'], "auto", "line 1: score: Input should be a finite number"),
    (['{"prompt": "p", "response": "a", "score": 1}'], "pairs", "line 1: chosen: Field required"),
    ([], "auto", "no records"),
])
def test_bad_reward_data_names_file_line_and_field(tmp_path, lines, kind, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError) as info:
        read_reward_data(path, kind)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="cannot read reward data"):
        read_reward_data(tmp_path / "nope.jsonl")


def test_make_preference_pairs_is_deterministic_and_corrupts(tmp_path):
    records = [Record.from_dict({"prompt": f"reverse: {w} =", "solution": w[::-1]})
               for w in ("abc", "hello", "zz", "qwerty", "ab", "mississippi")]
    first = make_preference_pairs(records, random.Random(7), pairs_per_record=3)
    assert first == make_preference_pairs(records, 7, pairs_per_record=3)
    assert first != make_preference_pairs(records, 8, pairs_per_record=3)
    assert len(first) == 18
    for pair, record in zip(first, [r for r in records for _ in range(3)]):
        assert pair.prompt == record.prompt_text and pair.chosen == record.solution
        assert pair.rejected not in ("", pair.chosen)
    rng = random.Random(0)
    for _ in range(50):
        deleted = corrupt("abcdef", rng, ["delete"])
        assert len(deleted) == 5 and all(c in "abcdef" for c in deleted)
        shuffled = corrupt("abcdef", rng, ["shuffle"])
        assert sorted(shuffled) == list("abcdef") and shuffled != "abcdef"
        substituted = corrupt("abcdef", rng, ["substitute"])
        assert len(substituted) == 6 and sum(a != b for a, b in zip(substituted, "abcdef")) == 1
    assert corrupt("a", rng, ["shuffle", "delete"]) is None
    assert corrupt("zz", rng, ["shuffle", "substitute"]) not in (None, "zz")  # shuffle impossible, substitute works
    # a list of accepted solutions: the first is chosen, none of them is ever rejected
    pairs = make_preference_pairs([{"prompt": "p", "solution": ["ab", "ba"]}], 0, ["shuffle", "delete"], 4)
    assert pairs[0].chosen == "ab" and {p.rejected for p in pairs} <= {"a", "b"}
    with pytest.raises(DataError, match="no corruption in shuffle"):
        make_preference_pairs([{"prompt": "p", "solution": ["ab", "ba"]}], 0, ["shuffle"])
    with pytest.raises(DataError, match="has no solution"):
        make_preference_pairs([{"prompt": "p"}], 0)
    path = write_jsonl(tmp_path / "pairs.jsonl", first)
    assert read_reward_data(path).items == first


# ---- ppo-core train-reward --------------------------------------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_train_reward_cli_from_a_dataset(checkpoint, tmp_path, capsys):
    config = write_config(tmp_path / "rm.yaml", f"""
model:
  path: {checkpoint}
data:
  dataset: reverse
  options: {{size: 64, eval_size: 0}}
  save_pairs: {tmp_path / "pairs.jsonl"}
train:
  epochs: 2
  held_out_fraction: 0.25
normalization:
  prompts: 8
  max_new_tokens: 4
output_dir: {tmp_path / "out"}
""")
    assert main(["train-reward", str(config)]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2: loss" in out
    assert "data: 48 preference pairs for training, 16 held out (dataset reverse (train split))" in out
    assert "held-out pair accuracy: " in out and "normalisation: gain " in out
    assert f"saved reward model: {tmp_path / 'out'}" in out
    info = json.loads((tmp_path / "out" / REWARD_MODEL_FILE).read_text())
    assert info["normalization"]["count"] == 8 and info["backbone"]["frozen"]
    pairs = read_reward_data(tmp_path / "pairs.jsonl").items
    assert len(pairs) == 64 and pairs[0].prompt.startswith("reverse: ")
    # the directory exists now: a second run needs --overwrite
    assert main(["train-reward", str(config)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["train-reward", str(config), "--overwrite", "--set", "train.epochs=1",
                 "--set", "normalization.enabled=false"]) == 0
    assert json.loads((tmp_path / "out" / REWARD_MODEL_FILE).read_text())["gain"] == 1.0


def test_train_reward_cli_from_labels_normalised_on_the_data(checkpoint, tmp_path, capsys):
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        {"prompt": "rate:", "response": c * n, "score": 1.0 if c == "a" else 0.0} for c in "ab" for n in range(1, 9)])
    config = write_config(tmp_path / "rm.json", json.dumps({
        "model": {"path": str(checkpoint)}, "data": {"path": str(labels)},
        "train": {"epochs": 3, "held_out_fraction": 0.25}, "normalization": {"source": "data"},
        "output_dir": str(tmp_path / "out")}))
    assert main(["train-reward", str(config)]) == 0
    out = capsys.readouterr().out
    assert "data: 12 labelled responses for training, 4 held out" in out and "held-out MSE: " in out
    model = load_reward_model(tmp_path / "out")
    rows = [sample_token_ids(model.tokenizer, s) for s in
            [Sample(prompt="rate:", response=c * n, response_ids=tuple(model.tokenizer(c * n, add_special_tokens=False)
                    ["input_ids"]), solution=None, stop_reason="eos") for c in "ab" for n in range(1, 9)]]
    scores = model.score_ids(rows).double()
    assert abs(float(scores.mean())) < 1e-4 and float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("text, message", [
    ("model: {path: P}\ndata: {path: d.jsonl, dataset: reverse}\n", "data: Value error, give exactly one of `path`"),
    ("model: {path: P}\ndata: {}\n", "data: Value error, give exactly one of `path`"),
    ("model: {path: P}\ndata: {path: d.jsonl}\ntrain: {epoch: 3}\n", "train.epoch: Extra inputs are not permitted"),
    ("model: {path: P}\ndata: {path: d.jsonl}\ntrain: {held_out_fraction: 1}\n",
     "train.held_out_fraction: Input should be less than 1"),
    ("data: {path: d.jsonl}\n", "model: Field required"),
    ("model: {path: P}\ndata: {path: d.jsonl, options: {size: 3}}\n", "options only apply with `dataset`"),
    ("model: {path: P}\ndata: {dataset: reverse, corruptions: [swap]}\n", "data.corruptions.0: Input should be"),
    ("model: {path: P}\ndata: {path: missing.jsonl}\noutput_dir: OUT\n", "missing.jsonl: cannot read reward data"),
    ("model: {path: P}\ndata: {dataset: nope}\noutput_dir: OUT\n", "unknown dataset 'nope'"),
])
def test_train_reward_cli_user_errors_exit_2(checkpoint, tmp_path, capsys, text, message):
    text = text.replace("P", str(checkpoint)).replace("OUT", str(tmp_path / "out"))
    text = text.replace("missing.jsonl", str(tmp_path / "missing.jsonl"))
    config = write_config(tmp_path / "bad.yaml", text)
    assert main(["train-reward", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppo-core: error: ") and message in err, err
    if "Field required" in message or "Extra" in message:
        assert str(config) in err
    assert not (tmp_path / "out").exists()


def test_train_reward_cli_bad_set_override(checkpoint, tmp_path, capsys):
    config = write_config(tmp_path / "rm.yaml", f"model: {{path: {checkpoint}}}\ndata: {{path: x.jsonl}}\n")
    assert main(["train-reward", str(config), "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "(with --set train.lr=-1)" in err and "train.lr: Input should be greater than 0" in err


def test_zero_extra_forward_off_can_be_written_unquoted_in_yaml():
    import yaml
    from ppo_core_reward_model.reward import RewardModelOptions

    options = yaml.safe_load("path: somewhere\nzero_extra_forward: off\n")
    assert options["zero_extra_forward"] is False  # what YAML 1.1 makes of it
    assert RewardModelOptions.model_validate(options).zero_extra_forward == "off"
