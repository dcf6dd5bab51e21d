"""The Python API (ppo_core.train/sft/evaluate/train_reward) and plain functions as rewards.

The functions are defined at the top level of this module, so a reward worker process imports them from here,
as it would import a plugin's reward class.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import ppo_core
from ppo_core import Reward, hookimpl
from ppo_core.api import resolve_config, with_in_process_plugin
from ppo_core.config import RunConfig
from ppo_core.errors import ConfigError, PluginError, RewardError, UserError
from ppo_core.plugin.callables import FunctionReward, reward_class
from ppo_core.plugin.contract import RunContext
from ppo_core.plugin.loading import load_plugins
from ppo_core.rewards.composer import build_composer

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def length_share(samples):
    """The samples form: one float per sample."""
    return [len(sample.response) / 10 for sample in samples]


def trl_match(prompts, completions, solution, **fields):
    """TRL's form: lists of texts, the solutions and the record fields as keyword lists."""
    return [float(completion == answer) + fields["bonus"][i] for i, (completion, answer)
            in enumerate(zip(completions, solution))]


def trl_names_only(completions, completion_ids):
    """A TRL-form function without **kwargs gets only the names it declares."""
    return [float(len(ids)) for ids in completion_ids]


class Scale(BaseModel):
    factor: float = 1.0


@ppo_core.reward(name="scaled", options=Scale)
def scaled_length(samples, options):
    return [options.factor * len(sample.response) for sample in samples]


def raises(samples):
    raise ValueError("no score for you")


def sleeps(samples):
    time.sleep(30)


def config_for(*rewards: dict, **sections) -> RunConfig:
    return RunConfig.model_validate({"model": {"path": "m"}, "data": {"dataset": "reverse"},
                                     "rewards": list(rewards), **sections})


def compose(config: RunConfig, rewards, samples):
    """Score ``samples`` with the API's rewards through the registry and composer a run builds."""
    config, extra = with_in_process_plugin(config, rewards, None)
    plugins = load_plugins(extra=extra, use_entry_points=False)
    with build_composer(config.rewards, plugins.registry, RunContext()) as composer:
        return composer(samples), config


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_plain_functions_are_rewards_in_both_forms(make_sample, isolation):
    samples = [make_sample("abc", solution="abc", bonus=0.5),
               make_sample("ab", solution="xy", bonus=0.0)]
    listed = [{"name": name, "isolation": isolation} for name in ("length_share", "trl_match", "scaled")]
    listed[2]["options"] = {"factor": 2.0}
    composition, config = compose(config_for(*listed), [length_share, trl_match, scaled_length], samples)
    assert composition.values == {"length_share": [0.3, 0.2], "trl_match": [1.5, 0.0], "scaled": [6.0, 4.0]}
    assert composition.stats["reward/trl_match"] == 0.75  # logged like any reward
    assert [reward.isolation for reward in config.rewards] == [isolation] * 3


def test_a_trl_function_without_kwargs_gets_only_its_names(make_sample):
    composition, _ = compose(config_for(), {"ids": trl_names_only}, [make_sample("abcd")])
    assert composition.values == {"ids": [4.0]}  # mapping key names it; added to the rewards with defaults


def test_function_rewards_are_validated_and_fail_like_plugin_rewards(make_sample):
    with pytest.raises(ConfigError, match=r"unknown option\(s\) factr for reward 'scaled' \(plugin 'python'\)"):
        compose(config_for({"name": "scaled", "options": {"factr": 2}}), [scaled_length], [make_sample("a")])
    with pytest.raises(RewardError, match=r"reward 'raises' \(plugin 'python'\) raised ValueError: no score for "
                                          r"you on sample 0"):
        compose(config_for(), [raises], [make_sample("a")])
    composition, _ = compose(config_for({"name": "sleeps", "timeout_s": 0.5, "on_error": -1.0}), [sleeps],
                             [make_sample("a")])
    assert composition.values == {"sleeps": [-1.0]} and composition.stats["reward/sleeps/errors"] == 1.0


def test_a_function_a_worker_cannot_import_runs_in_process_with_a_warning(make_sample, capsys):
    def nested(samples):
        return [0.5] * len(samples)

    composition, config = compose(config_for(), {"halves": nested, "lam": lambda samples: [1.0] * len(samples)},
                                  [make_sample("a")])
    assert composition.values == {"halves": [0.5], "lam": [1.0]}
    assert [reward.isolation for reward in config.rewards] == ["none", "none"]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and "it is defined inside another function" in warnings[0]
    assert "it is a lambda" in warnings[1] and "runs in this process instead (isolation: none)" in warnings[1]
    with pytest.raises(PluginError, match=r"^reward function 'lam' cannot run in a worker process: it is a lambda "
                                          r"\(.*set `isolation: none` for reward 'lam'\)$"):
        compose(config_for({"name": "lam", "isolation": "process"}), {"lam": lambda samples: [1.0]}, [])


def test_a_function_reward_class_pickles_by_its_function():
    import pickle

    cls = reward_class(scaled_length)
    again = pickle.loads(pickle.dumps(cls))
    assert issubclass(again, FunctionReward) and again.name == "scaled" and again.Options is Scale
    assert again(Scale(factor=3.0))([]) == []
    with pytest.raises(PluginError, match="needs a name that is an identifier"):
        reward_class(lambda samples: [])


def test_a_plugin_registering_a_plain_function_shows_the_real_cause(make_plugin):
    @hookimpl
    def register_rewards(register):
        register(length_share)

    plugins = load_plugins(extra=[("nb", make_plugin(register_rewards=register_rewards))], use_entry_points=False)
    with pytest.raises(UserError) as caught:
        plugins.registry.get("reward", "length_share")
    message = str(caught.value)
    assert "plugins that failed to load: nb: PluginError in register_rewards" in message
    assert "is not a subclass of ppo_core.plugin.contract.Reward" in message
    assert "@ppo_core.reward(...)" in message and "\n" not in message


def test_reward_classes_and_datasets_join_as_the_python_plugin(make_sample):
    class Constant(Reward):
        name = "constant"

        def __call__(self, samples):
            return [2.0] * len(samples)

    composition, _ = compose(config_for({"name": "constant", "isolation": "none", "weight": 0.5}), [Constant],
                             [make_sample("a")])
    assert composition.totals == [1.0]
    with pytest.raises(PluginError, match="a Reward class keeps its own name"):
        with_in_process_plugin(config_for(), {"other": Constant}, None)


def test_the_config_may_be_a_mapping_a_path_or_a_run_config_with_overrides(tmp_path):
    data = {"model": {"path": "m"}, "data": {"dataset": "reverse"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    from_path, source = resolve_config(path, ["ppo.epochs=2"])
    assert from_path.ppo.epochs == 2 and source == str(path)
    from_mapping, _ = resolve_config(data, ["train.updates=3"])
    assert from_mapping.train.updates == 3 and "updates" not in data.get("train", {})  # the mapping is not changed
    again, _ = resolve_config(from_mapping, ["train.seed=5"])
    assert (again.train.updates, again.train.seed, from_mapping.train.seed) == (3, 5, 0)
    with pytest.raises(ConfigError, match=r"^config \(with --set ppo\.epochs=0\): ppo\.epochs: "):
        resolve_config(data, ["ppo.epochs=0"])
    with pytest.raises(ConfigError, match="expected a RunConfig, a mapping of sections or a path"):
        resolve_config(42)


def readme_block(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\s*```python\n(.*?)```\s*<!-- {name}:end -->", README, re.DOTALL)
    assert match, f"README has no {name} block"
    return match.group(1)


def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    """The README's Python API example, executed as a notebook cell would run it."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}  # as a notebook cell is run
    exec(compile(readme_block("api-example"), "README.md (Python API)", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, ppo_core.TrainResult)
    assert (result.final_model / "model.safetensors").is_file() and result.run_dir == tmp_path / "runs" / "api"
    assert [line["update"] for line in result.metrics] == [1, 2, 3, 4][:len(result.metrics)]
    assert {"reward/brevity", "reward/contains_solution"} <= set(result.metrics[0])
    evaluated = [line for line in result.metrics if "eval/greedy/reward/brevity" in line]
    assert evaluated and "eval/sampled/exact_match" in evaluated[0]
    out = capsys.readouterr()
    assert f"final model: {result.final_model}" in out.out
    assert "runs in this process instead (isolation: none)" in out.err  # functions of a notebook cell


def test_train_reward_and_evaluate_take_a_mapping_with_overrides(tiny_model_dir, tmp_path):
    outcome = ppo_core.train_reward({
        "model": {"path": str(tiny_model_dir)},
        "data": {"dataset": "reverse", "options": {"size": 32, "eval_size": 0}},
        "train": {"epochs": 1}, "normalization": {"enabled": False}, "output_dir": str(tmp_path / "rm"),
    }, overrides=["train.held_out_fraction=0.25"])
    assert outcome.path.resolve() == (tmp_path / "rm").resolve() and outcome.result.metrics["held_out_size"] == 8
    numbers = ppo_core.evaluate({
        "model": {"path": str(tiny_model_dir)}, "data": {"dataset": "reverse", "options": {"size": 32}},
        "generation": {"max_new_tokens": 4}, "train": {"threads": 1},
    }, tiny_model_dir, samples=3, rewards=[length_share], out=tmp_path / "samples.jsonl")
    assert numbers["records"] == 3
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for decoding in ("greedy", "sampled"):
        scored = [row["rewards"]["length_share"] for row in rows if row["decoding"] == decoding]
        assert scored == [len(row["response"]) / 10 for row in rows if row["decoding"] == decoding]
        assert numbers[decoding]["rewards"]["length_share"] == pytest.approx(sum(scored) / 3)
