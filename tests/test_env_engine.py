"""The engine with an environment: GAE over action tokens, the action mask, one-turn episodes reproducing the
prompts-plus-rewards path bit for bit, multi-turn rollouts (exact first ratio, turn rewards, observations as
context, stop strings, metrics) and environment faults handled like reward faults."""

from __future__ import annotations

import time

import pytest
import torch
from pydantic import BaseModel

from ppo_core import EnvReset, EnvStep, Environment, Reward, hookimpl
from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch, train
from ppo_core.config import load_config
from ppo_core.errors import EnvironmentPluginError
from ppo_core.ppo.advantages import gae_over_actions
from ppo_core.ppo.functional import gae
from ppo_core.runtime.metrics import read_metrics

TIMING_KEYS = ("time/", "tokens_per_s")


# ---- GAE over action tokens (docs/design.md, Eq. 14) -------------------------------------------------------------
def test_gae_over_actions_by_hand():
    """Actions at 0, 1 and 4; 2-3 are an observation, 5 padding. gamma 0.9, lambda 0.5 (gamma*lambda 0.45):
    delta_4 = 2 - 0.25 = 1.75; delta_1 = 1 + 0.9 * V_4 - V_1 = 0.725 (the value after turn 1's last action is
    the value at turn 2's first); delta_0 = 0.5 + 0.9 * 0.5 - 1 = -0.05. A_4 = 1.75, A_1 = 0.725 + 0.45 * 1.75
    = 1.5125, A_0 = -0.05 + 0.45 * 1.5125 = 0.630625; R = A + V."""
    rewards = torch.tensor([[0.5, 1.0, 9.0, 9.0, 2.0, 9.0]])
    values = torch.tensor([[1.0, 0.5, 7.0, 7.0, 0.25, 7.0]])
    actions = torch.tensor([[True, True, False, False, True, False]])
    advantages, returns = gae_over_actions(rewards, values, actions, gamma=0.9, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.630625, 1.5125, 0.0, 0.0, 1.75, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.630625, 2.0125, 0.0, 0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_over_actions_is_gae_on_the_action_tokens_packed_together(seed):
    generator = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(4, 12, generator=generator), torch.randn(4, 12, generator=generator)
    actions = torch.rand(4, 12, generator=generator) < 0.6
    advantages, returns = gae_over_actions(rewards, values, actions, gamma=0.95, lam=0.9)
    for row in range(4):
        kept = actions[row]
        n = int(kept.sum())
        packed = gae(rewards[row:row + 1, kept], values[row:row + 1, kept], torch.ones(1, n), 0.95, 0.9)
        torch.testing.assert_close(advantages[row, kept], packed[0][0])
        torch.testing.assert_close(returns[row, kept], packed[1][0])
        assert not advantages[row, ~kept].any() and not returns[row, ~kept].any()


def test_gae_over_actions_without_gaps_is_gae_bit_for_bit():
    generator = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(3, 9, generator=generator), torch.randn(3, 9, generator=generator)
    mask = torch.arange(9)[None, :] < torch.tensor([[9], [4], [1]])  # real tokens, then padding
    for got, expected in zip(gae_over_actions(rewards, values, mask, 1.0, 0.95), gae(rewards, values, mask, 1.0, 0.95)):
        assert torch.equal(got, expected)


# ---- test plugins ----------------------------------------------------------------------------------------------
class OneTurn(Environment):
    """Today's case as an environment: the record's prompt, one answer, done."""

    name = "one_turn"

    def reset(self, records):
        return EnvReset(states=[None] * len(records), prompts=[list(r.messages) for r in records])

    def step(self, states, responses):
        n = len(states)
        return EnvStep(states=list(states), observations=[None] * n, rewards=[None] * n, done=[True] * n)


class RetryOptions(BaseModel):
    fail_at_turn: int = 0  # raise in step at this turn (0: never)
    sleep_s: float = 0.0
    silent: bool = False  # no observation: the next turn follows the answer directly


class Retry(Environment):
    """Answer with an 'a'; otherwise 'try again!' and another turn. Turn rewards: 1.0 for an 'a', else -0.5."""

    name = "retry"
    Options = RetryOptions

    def reset(self, records):
        return EnvReset(states=[{"turn": 0} for _ in records], prompts=[r.prompt_text for r in records])

    def step(self, states, responses):
        states = [{"turn": s["turn"] + 1} for s in states]
        if states and states[0]["turn"] == self.options.fail_at_turn:
            time.sleep(self.options.sleep_s)
            raise RuntimeError("the game broke")
        right = ["a" in r for r in responses]
        feedback = None if self.options.silent else " try again! "
        return EnvStep(states=states, observations=[None if ok else feedback for ok in right],
                       rewards=[1.0 if ok else -0.5 for ok in right], done=right, success=right,
                       tool_calls=[1] * len(states))


class Length(Reward):
    name = "length_share"

    def __call__(self, samples):
        return [len(s.response) / 16 for s in samples]


class EnvPlugin:
    @hookimpl
    def register_environments(self, register):
        register(OneTurn)
        register(Retry)

    @hookimpl
    def register_rewards(self, register):
        register(Length)


PLUGINS = [("env_test_plugin", EnvPlugin())]


@pytest.fixture
def tiny_model(tiny_model_dir):
    return tiny_model_dir


def make_config(model_dir, run_dir, *overrides):
    base = {
        "model": {"path": str(model_dir)},
        "data": {"dataset": "reverse", "options": {"size": 64}, "max_prompt_tokens": 32},
        "rewards": [{"name": "length_share"}],
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 4, "epochs": 2, "kl": {"coef": 0.01}},
        "generation": {"max_new_tokens": 8},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "train": {"updates": 2, "output_dir": str(run_dir), "progress": "none", "seed": 0},
        "plugins": {"allow": ["env_test_plugin", "datasets"]},
    }
    return load_config(None, list(overrides), base=base)


def without(records, prefixes):
    return [{k: v for k, v in r.items() if not k.startswith(prefixes)} for r in records]


# ---- one turn: today's training, bit for bit -----------------------------------------------------------------------
def test_a_one_turn_environment_reproduces_the_prompts_plus_rewards_path(tiny_model, tmp_path):
    train(make_config(tiny_model, tmp_path / "plain"), extra_plugins=PLUGINS)
    train(make_config(tiny_model, tmp_path / "env", "environment.name=one_turn", "environment.isolation=none"),
          extra_plugins=PLUGINS)
    plain = read_metrics(tmp_path / "plain" / "metrics.jsonl")
    env = read_metrics(tmp_path / "env" / "metrics.jsonl")
    assert without(plain, TIMING_KEYS) == without(env, TIMING_KEYS + ("env/",))
    assert [m["env/turns_mean"] for m in env] == [1.0, 1.0] and [m["env/truncated_rate"] for m in env] == [0.0, 0.0]


# ---- several turns -----------------------------------------------------------------------------------------------
def multi_turn_run(tiny_model, tmp_path, *overrides):
    config = make_config(tiny_model, tmp_path / "run", "environment.name=retry", "environment.max_turns=3",
                         "environment.isolation=none", *overrides)
    return build_run(config, PLUGINS)


def test_multi_turn_rollout_masks_observations_and_puts_turn_rewards_on_last_actions(tiny_model, tmp_path):
    run = multi_turn_run(tiny_model, tmp_path, "ppo.kl.coef=0", "ppo.whiten_advantages=false")
    engine, scorer = run.engine, make_scorer(run.composer, run.tokenizer)
    batch = next_prompt_batch(run)
    episodes = engine.episodes.play(engine.model.policy, batch.records, batch.states, torch.Generator().manual_seed(0))
    assert episodes.action_mask.dtype == torch.bool
    observation = run.tokenizer(" try again! ", add_special_tokens=False)["input_ids"]
    for row, sample in enumerate(episodes.samples):
        tokens = episodes.tokens[row][episodes.mask[row]].tolist()
        actions = episodes.action_mask[row][episodes.mask[row]].tolist()
        context = [t for t, is_action in zip(tokens, actions) if not is_action]
        assert context == observation * (len(sample.turns) - 1)  # every observation, and nothing else
        assert sample.response == sample.turns[-1]
        assert [m.role for m in sample.transcript][1:] == ["assistant", "user"] * (len(sample.turns) - 1) + ["assistant"]
        rewards = episodes.turn_rewards[row]
        assert sorted(rewards[rewards != 0].tolist()) == sorted([1.0 if "a" in t else -0.5 for t in sample.turns])
    assert (episodes.turn_rewards[~episodes.action_mask] == 0).all()
    assert 1 < sum(len(s.turns) for s in episodes.samples) / len(episodes.samples) <= 3  # some took several turns

    rollout, stats = engine.collect_rollout(batch, scorer)
    assert torch.equal(rollout.action_mask.bool() & ~rollout.response_mask.bool(),
                       torch.zeros_like(rollout.action_mask.bool()))
    assert (rollout.advantages[~rollout.action_mask.bool()] == 0).all()
    assert {"env/success_rate", "env/turns_mean", "env/tool_calls", "env/truncated_rate", "env/turn_reward/1",
            "env/errors"} <= set(stats)
    assert stats["env/tool_calls"] == stats["env/turns_mean"]  # one call per turn


def test_first_minibatch_ratio_is_exactly_one_on_multi_turn_batches(tiny_model, tmp_path):
    run = multi_turn_run(tiny_model, tmp_path)
    rollout, stats = run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
    assert stats["env/turns_mean"] > 1
    seen = []
    original = run.engine._loss

    def record(rollout_, rows):
        loss, step_stats = original(rollout_, rows)
        seen.append(step_stats)
        return loss, step_stats

    run.engine._loss = record
    run.engine.optimise(rollout)
    assert seen[0]["approx_kl"] == 0.0 and seen[0]["clipfrac"] == 0.0
    assert any(s["approx_kl"] > 0 for s in seen[1:])


def test_stop_strings_end_a_turn_and_the_token_limits_truncate(tiny_model, tmp_path):
    stops = ["I", "c", "d", "e", "h", "v"]  # one character = one token of the tiny model's tokenizer
    run = multi_turn_run(tiny_model, tmp_path, f"environment.stop_strings={stops}", "environment.max_episode_tokens=20")
    batch = next_prompt_batch(run)
    episodes = run.engine.episodes.play(run.model.policy, batch.records, batch.states, torch.Generator().manual_seed(1))
    turns = [turn for sample in episodes.samples for turn in sample.turns]
    assert not any(stop in turn[:-1] for stop in stops for turn in turns)  # a turn ends right after one (kept)
    assert any(turn[-1:] in stops for turn in turns)
    assert all(int(episodes.mask[row].sum()) <= 20 for row in range(len(episodes.samples)))
    assert episodes.stats["env/truncated_rate"] > 0


@pytest.mark.parametrize("silent", [False, True])
def test_continuing_from_the_kv_cache_samples_what_re_encoding_samples(tiny_model, tmp_path, silent):
    """Turn 2 onwards continues each chunk's KV cache (finished rows and turns' padding masked out, a row with no
    observation continuing from its last real token) instead of re-encoding the transcripts: greedy, the same
    episodes. (Sampled ones differ once some episodes are done: the cache keeps their rows, which draw from the
    generator too.)"""
    run = multi_turn_run(tiny_model, tmp_path, "generation.batch_size=3", "environment.max_episode_tokens=64",
                         f"environment.options={{silent: {str(silent).lower()}}}")
    batch = next_prompt_batch(run)
    runner = run.engine.episodes
    played = {}
    for reuse_cache in (True, False):
        runner.reuse_cache = reuse_cache
        played[reuse_cache] = runner.play(run.model.policy, batch.records, batch.states, None, greedy=True)
    cached, encoded = played[True], played[False]
    assert max(len(s.turns) for s in cached.samples) >= 3
    assert torch.equal(cached.tokens, encoded.tokens) and torch.equal(cached.action_mask, encoded.action_mask)
    assert [s.turns for s in cached.samples] == [s.turns for s in encoded.samples]


# ---- faults ---------------------------------------------------------------------------------------------------------
def test_an_environment_that_raises_is_named_with_its_plugin_turn_and_episode(tiny_model, tmp_path):
    run = multi_turn_run(tiny_model, tmp_path, "environment.options={fail_at_turn: 1}")
    with pytest.raises(EnvironmentPluginError, match=r"environment 'retry' \(plugin 'env_test_plugin'\) raised "
                                                     r"RuntimeError in step at turn 1 on episode 0 \(prompt "
                                                     r"'reverse: .*'\): the game broke"):
        run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))


@pytest.mark.parametrize("on_error, reward", [("skip", None), ("-1.0", -1.0)])
def test_on_error_ends_the_running_episodes_and_counts_the_fault(tiny_model, tmp_path, on_error, reward):
    run = multi_turn_run(tiny_model, tmp_path, "environment.options={fail_at_turn: 2}",
                         f"environment.on_error={on_error}")
    rollout, stats = run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
    assert stats["env/errors"] == 1.0 and stats["env/turns_mean"] <= 2
    assert stats.get("env/turn_reward/2") == reward


def test_a_hanging_environment_times_out_in_its_worker_process(tiny_model, tmp_path):
    config = make_config(tiny_model, tmp_path / "run", "environment.name=retry", "environment.max_turns=3",
                         "environment.options={fail_at_turn: 1, sleep_s: 30}", "environment.timeout_s=1")
    run = build_run(config, PLUGINS)
    try:
        started = time.perf_counter()
        with pytest.raises(EnvironmentPluginError, match=r"environment 'retry' \(plugin 'env_test_plugin'\) did "
                                                         r"not answer within timeout_s=1 .* in step at turn 1 on a "
                                                         r"batch of 8 episodes"):
            run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
        assert time.perf_counter() - started < 20
    finally:
        run.episodes.close()
        run.composer.close()


# ---- turns as tokens, own episodes, resume ---------------------------------------------------------------------------
def test_observations_go_through_the_chat_template_when_the_tokenizer_has_one(tiny_model):
    from transformers import AutoTokenizer

    from ppo_core import Record
    from ppo_core.config import DataConfig
    from ppo_core.data.prompts import encode_records
    from ppo_core.data.turns import encode_first_prompts, observation_ids, render_observation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert render_observation("try again", tokenizer, chat_template=True) == "try again"  # no template: plain text
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_observation("try again", tokenizer, chat_template=True) == "<user>try again|<assistant>"
    assert render_observation([{"role": "tool", "content": "42"}], tokenizer, True) == "<tool>42|<assistant>"
    assert render_observation("try again", tokenizer, chat_template=False) == "try again"
    assert observation_ids("ab", tokenizer, False) == tokenizer("ab", add_special_tokens=False)["input_ids"]
    record = Record.from_dict({"prompt": "reverse: abc =", "solution": "cba", "level": 2})
    config = DataConfig(dataset="x")
    first = encode_first_prompts(["reverse: abc ="], [record], tokenizer, config)[0]
    assert first.ids == encode_records([record], tokenizer, config)[0].ids  # text is a user turn, encoded alike
    assert first.record.solution == "cba" and first.record.fields == {"level": 2}


class OwnEpisodes(OneTurn):
    name = "own_episodes"

    def records(self, split):
        from ppo_core import Record

        for n in range(4):
            yield Record.from_dict({"prompt": f"count to {n} =", "solution": str(n)})


class OwnPlugin:
    @hookimpl
    def register_environments(self, register):
        register(OwnEpisodes)


def test_an_environment_brings_its_own_episodes_when_no_dataset_is_set(tiny_model, tmp_path):
    from ppo_core.errors import ConfigError

    config = make_config(tiny_model, tmp_path / "run", "environment.name=own_episodes", "environment.isolation=none",
                         "plugins.allow=[env_test_plugin, own_plugin]")
    config = config.model_copy(update={"data": config.data.model_copy(update={"dataset": None})})
    run = build_run(config, PLUGINS + [("own_plugin", OwnPlugin())])
    batch = next_prompt_batch(run)
    assert sorted(p.record.solution for p in batch.records) == ["0", "0", "1", "1", "2", "2", "3", "3"]
    run.composer.close()
    retry = config.model_copy(update={"environment": config.environment.model_copy(update={"name": "retry"})})
    with pytest.raises(ConfigError, match=r"data.dataset: Field required \(environment 'retry' of plugin "
                                          r"'env_test_plugin' makes no episodes of its own\)"):
        build_run(retry, PLUGINS + [("own_plugin", OwnPlugin())])


def test_a_multi_turn_run_resumes_exactly(tiny_model, tmp_path):
    from safetensors.torch import load_file

    turns = ("environment.name=retry", "environment.max_turns=3", "environment.isolation=none",
             "train.updates=4", "train.save_every=2")
    final_straight = train(make_config(tiny_model, tmp_path / "straight", *turns), extra_plugins=PLUGINS)
    interrupted = make_config(tiny_model, tmp_path / "resumed", *turns)
    train(interrupted.model_copy(update={"train": interrupted.train.model_copy(update={"updates": 3})}),
          extra_plugins=PLUGINS)
    final_resumed = train(interrupted, resume=True, extra_plugins=PLUGINS)
    straight = without(read_metrics(tmp_path / "straight" / "metrics.jsonl"), TIMING_KEYS)
    resumed = without(read_metrics(tmp_path / "resumed" / "metrics.jsonl"), TIMING_KEYS)
    assert [m["update"] for m in resumed] == [1, 2, 3, 4] and straight == resumed
    assert max(m["env/turns_mean"] for m in straight) > 1
    a, b = load_file(final_straight / "model.safetensors"), load_file(final_resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_learns_the_assistant_turns_of_multi_turn_records_only(tiny_model, tmp_path):
    """`ppo-core sft` on transcripts: the prompt is the conversation up to the first assistant turn; each
    assistant turn (+ eos) is a target; the turns between are context, tokenised as an episode's observations."""
    import json

    from ppo_core import Record
    from ppo_core.commands.sft import IGNORE_INDEX, build_batch, train_sft
    from ppo_core.modeling.loading import load_tokenizer

    records = [{"messages": [{"role": "user", "content": "reverse: ab ="}, {"role": "assistant", "content": "ab"},
                             {"role": "user", "content": " try again! "}, {"role": "assistant", "content": "ba"}]},
               {"prompt": "reverse: xyz =", "solution": "zyx"}]  # a one-turn record in the same batch
    data = tmp_path / "transcripts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records * 8))
    config = make_config(tiny_model, tmp_path / "run", f"data.options={{path: {data}}}", "data.dataset=jsonl",
                         "sft.steps=3", "sft.batch_size=4", "sft.max_response_tokens=32", "plugins.allow=[datasets]")
    config = config.model_copy(update={"rewards": []})
    tokenizer = load_tokenizer(str(tiny_model))
    batch = build_batch([Record.from_dict(r) for r in records], tokenizer, config)
    P = batch.prompt_length
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tokenizer.eos_token_id
    assert batch.input_ids[0, P:].tolist()[:18] == ids("ab") + [eos] + ids(" try again! ") + ids("ba") + [eos]
    assert batch.labels[0, P:].tolist()[:18] == ids("ab") + [eos] + [IGNORE_INDEX] * 12 + ids("ba") + [eos]
    assert batch.labels[1, P:].tolist()[:4] == ids("zyx") + [eos]
    assert batch.response_tokens == 6 + 4
    prompt = batch.input_ids[0, :P][batch.attention_mask[0, :P].bool()].tolist()
    assert prompt == tokenizer("reverse: ab =")["input_ids"]  # the first user turn only
    final = train_sft(config)
    losses = [m["loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses) and final.is_dir()
