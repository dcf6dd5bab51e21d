"""Environments beyond the engine: `ppo-core eval` plays episodes (success, turns, transcripts), evaluation
during PPO reports them, and every advantage estimator trains on multi-turn episodes."""

from __future__ import annotations

import json

import pytest

from ppo_core.commands.evaluate import evaluate_model, format_table
from ppo_core.commands.train import train
from ppo_core.runtime.metrics import read_metrics
from test_env_engine import PLUGINS, make_config

RETRY = ("environment.name=retry", "environment.max_turns=3", "environment.isolation=none")


@pytest.fixture
def tiny_model(tiny_model_dir):
    return tiny_model_dir


def test_eval_plays_the_environments_episodes_greedy_and_sampled(tiny_model, tmp_path):
    config = make_config(tiny_model, tmp_path / "unused", *RETRY)
    out = tmp_path / "samples.jsonl"
    numbers = evaluate_model(config, tiny_model, samples=12, out=out, extra_plugins=PLUGINS)
    again = evaluate_model(config, tiny_model, samples=12, extra_plugins=PLUGINS)
    assert numbers == again  # deterministic, sampled decoding included
    rows = out.read_text().splitlines()
    assert len(rows) == 24
    for decoding in ("greedy", "sampled"):
        entry = numbers[decoding]
        assert 0.0 <= entry["success_rate"] <= 1.0 and 1.0 <= entry["turns_mean"] <= 3.0
        assert entry["tool_calls"] == entry["turns_mean"]  # the test environment counts one call per turn
    first = json.loads(rows[0])
    turns = len(first["turns"])
    assert first["success"] == ("a" in first["turns"][-1])
    assert [m["role"] for m in first["transcript"]] == ["user"] + ["assistant", "user"] * (turns - 1) + ["assistant"]
    assert "success_rate" in format_table(numbers) and "turns_mean" in format_table(numbers)


def test_a_one_turn_environment_evaluates_as_the_dataset_does(tiny_model, tmp_path):
    plain = evaluate_model(make_config(tiny_model, tmp_path / "a"), tiny_model, samples=12, extra_plugins=PLUGINS)
    env = evaluate_model(make_config(tiny_model, tmp_path / "b", "environment.name=one_turn",
                                     "environment.isolation=none"), tiny_model, samples=12, extra_plugins=PLUGINS)
    for decoding in ("greedy", "sampled"):
        for key in ("exact_match", "rewards", "reward_total", "length_mean", "eos_rate"):
            assert env[decoding][key] == plain[decoding][key], (decoding, key)
        assert env[decoding]["turns_mean"] == 1.0


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimators_train_on_multi_turn_episodes(tiny_model, tmp_path, estimator):
    groups = [] if estimator == "reinforce_pp" else ["ppo.samples_per_prompt=2", "ppo.rollout_batch_size=4"]
    config = make_config(tiny_model, tmp_path / "run", *RETRY, f"ppo.advantage={estimator}", *groups,
                         "train.eval_every=2", "train.eval_samples=4")
    train(config, extra_plugins=PLUGINS)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["update"] for m in metrics] == [1, 2]
    assert all(1.0 <= m["env/turns_mean"] <= 3.0 and "value/mean" not in m for m in metrics)
    assert ("advantage/zero_std_groups" in metrics[0]) == (estimator != "reinforce_pp")
    assert 0.0 <= metrics[-1]["eval/greedy/success_rate"] <= 1.0 and metrics[-1]["eval/sampled/turns_mean"] >= 1.0


def test_sft_lays_out_a_turn_ending_at_a_stop_string_without_eos_as_the_episode_will(tiny_model):
    """An episode's turn that ends at a stop string has no eos after it; SFT's transcript must match, or the
    warm-started model reads a context at PPO time that it never saw (calculator: the tool's result copied wrong)."""
    from ppo_core.data.turns import transcript_targets
    from ppo_core.modeling.loading import load_tokenizer
    from ppo_core.plugin.contract import Record

    tokenizer = load_tokenizer(str(tiny_model), False)
    record = Record.from_dict({"messages": [{"role": "user", "content": "12*3="},
                                            {"role": "assistant", "content": "<calc>12*3</calc>"},
                                            {"role": "tool", "content": "36"},
                                            {"role": "assistant", "content": "<answer>36</answer>"}]})
    eos = tokenizer.eos_token_id
    _, with_eos, _ = transcript_targets(record, tokenizer, False)
    _, without, targets = transcript_targets(record, tokenizer, False, ["</calc>"])
    assert with_eos.count(eos) == 2 and without.count(eos) == 1 and without[-1] == eos
    assert len(without) == len(with_eos) - 1 and len(targets) == len(without)


def test_sft_holds_a_transcripts_first_prompt_to_the_limit_not_the_whole_transcript(tiny_model, tmp_path):
    """data.max_prompt_tokens bounds the prompt the model reads; a transcript's later turns are its response. Judged
    on the whole transcript, a long one was cut from its start (its first prompt lost) before SFT saw it."""
    from ppo_core.commands.sft import build_batch, encode_sft_prompts
    from ppo_core.data.stream import PromptStream
    from ppo_core.data.turns import first_prompt
    from ppo_core.modeling.loading import load_tokenizer
    from ppo_core.plugin.contract import Record

    tokenizer = load_tokenizer(str(tiny_model), False)
    record = Record.from_dict({"messages": [{"role": "user", "content": "12*3="},
                                            {"role": "assistant", "content": "<calc>12*3</calc>"},
                                            {"role": "tool", "content": "36"},
                                            {"role": "assistant", "content": "<answer>36</answer>"}]})
    config = make_config(tiny_model, tmp_path / "run", "data.max_prompt_tokens=8")

    class OneRecord:
        def records(self, split):
            return iter([record])

    streamed = PromptStream(OneRecord(), "train", 0, False, name="one").take_prompts(1, tokenizer, config.data,
                                                                                     prompt_of=first_prompt)
    for prompt in (*streamed, *encode_sft_prompts([record], tokenizer, config)):
        assert tokenizer.decode(prompt.ids, skip_special_tokens=True) == "12*3=" and not prompt.truncated
        assert prompt.record is record  # the whole transcript, for its targets
    batch = build_batch([record], tokenizer, config)
    assert tokenizer.decode(batch.input_ids[0, :batch.prompt_length], skip_special_tokens=True) == "12*3="
