"""The environment contract: registration through the real plugin manager, the batched results' checks, the
``environment`` config section and its token budget against the model's context."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import BaseModel

from ppo_core import EnvReset, EnvStep, Environment, Record, RunContext, hookimpl
from ppo_core.cli import main
from ppo_core.config import load_config
from ppo_core.errors import ConfigError, DuplicateNameError, PluginError, UserError
from ppo_core.modeling.loading import fit_to_context
from ppo_core.plugin.contract import Message
from ppo_core.plugin.environment import makes_own_records
from ppo_core.plugin.loading import load_plugins


class Retry(Environment):
    """A test environment: answer the record's solution; a wrong answer gets 'try again' until `tries` run out."""

    name = "retry"

    class Options(BaseModel):
        tries: int = 2

    def reset(self, records):
        return EnvReset(states=[{"solution": r.solution, "turn": 0} for r in records],
                        prompts=[list(r.messages) for r in records])

    def step(self, states, responses):
        states = [{**s, "turn": s["turn"] + 1} for s in states]
        right = [r.strip() == s["solution"] for s, r in zip(states, responses)]
        done = [ok or s["turn"] >= self.options.tries for ok, s in zip(right, states)]
        return EnvStep(states=states, observations=[None if ok else "try again" for ok in right],
                       rewards=[1.0 if ok else 0.0 for ok in right], done=done, success=right)


class Counting(Environment):
    """An environment that makes its own episodes."""

    name = "counting"

    def records(self, split):
        yield Record.from_dict({"prompt": "count: 1 2", "solution": "3"})


def environments_hook(*classes):
    @hookimpl
    def register_environments(register):
        for cls in classes:
            register(cls)

    return register_environments


@pytest.fixture
def env_plugins(make_plugin):
    plugins = load_plugins(extra=[("env_plugin", make_plugin(register_environments=environments_hook(Retry, Counting)))])
    yield plugins
    plugins.manager.unregister(name="env_plugin")


def test_environment_registers_through_the_plugin_manager_and_runs_an_episode(env_plugins):
    registry = env_plugins.registry
    assert registry.by_plugin("env_plugin", "environment") == ["counting", "retry"]
    assert registry.get("environment", "retry").plugin == "env_plugin"
    environment = registry.build("environment", "retry", {"tries": 3}, RunContext(seed=1))
    assert isinstance(environment, Retry) and environment.options.tries == 3 and environment.context.seed == 1
    reset = environment.reset([Record.from_dict({"prompt": "2+2=", "solution": "4"})] * 2)
    assert reset.prompts == ((Message(role="user", content="2+2="),),) * 2
    first = environment.step(reset.states, ["5", "4"])
    assert first.done == (False, True) and first.rewards == (0.0, 1.0) and first.observations == ("try again", None)
    assert first.success == (False, True) and first.tool_calls == (0, 0)
    assert json.loads(json.dumps(first.states)) == list(first.states)  # plain data


def test_environment_options_are_validated_and_unknown_names_list_the_known_ones(env_plugins):
    with pytest.raises(ConfigError, match="unknown option.*trys.*environment 'retry' \\(plugin 'env_plugin'\\)"):
        env_plugins.registry.build("environment", "retry", {"trys": 3}, RunContext())
    # installed plugins (the bundled ppo-core-environments) add their names to the list
    with pytest.raises(UserError, match="unknown environment 'rety'; known environments: "
                                        "(.*, )?counting, (.*, )?retry"):
        env_plugins.registry.get("environment", "rety")


def test_duplicate_environment_names_name_both_plugins(make_plugin):
    first = make_plugin(register_environments=environments_hook(Retry))
    second = make_plugin(register_environments=environments_hook(Retry))
    with pytest.raises(DuplicateNameError, match="environment 'retry' is registered twice: by plugin 'one' and by "
                                                 "plugin 'two'"):
        load_plugins(extra=[("one", first), ("two", second)], use_entry_points=False)


def test_registering_a_non_environment_fails_that_plugin_only(make_plugin):
    plugins = load_plugins(extra=[("bad", make_plugin(register_environments=environments_hook(dict)))],
                           use_entry_points=False)
    assert [f.info.name for f in plugins.failed] == ["bad"]
    assert "not a subclass of ppo_core.plugin.environment.Environment" in plugins.failed[0].error
    with pytest.raises(PluginError, match="failed to start"):
        load_plugins(extra=[("p", make_plugin(register_environments=environments_hook(Broken)))],
                     use_entry_points=False).registry.build("environment", "broken", {}, RunContext())


class Broken(Environment):
    name = "broken"

    def __init__(self, options, context):
        raise RuntimeError("no game today")


def test_own_records_are_optional():
    assert makes_own_records(Counting) and makes_own_records(Counting(Counting.Options(), RunContext()))
    assert not makes_own_records(Retry)
    with pytest.raises(NotImplementedError, match="makes no records"):
        next(Retry(Retry.Options(), RunContext()).records("train"))


@pytest.mark.parametrize("make, message", [
    (lambda: EnvReset(states=[{}], prompts=["a", "b"]), "differ in length"),
    (lambda: EnvReset(states=[object()], prompts=["a"]), "state 0 is not plain data"),
    (lambda: EnvReset(states=[float("nan")], prompts=["a"]), "state 0 is not plain data"),
    (lambda: EnvReset(states=[{}], prompts=[[]]), "prompt 0: expected text or a non-empty list"),
    (lambda: EnvReset(states=[{}], prompts=[[{"role": "user"}]]), "prompt 0: not chat messages"),
    (lambda: EnvStep(states=[{}], observations=[None], rewards=[float("nan")], done=[True]), "reward 0"),
    (lambda: EnvStep(states=[{}], observations=[None], rewards=["1"], done=[True]), "reward 0"),
    (lambda: EnvStep(states=[{}], observations=[None], rewards=[None], done=[1]), "done 0: expected True or False"),
    (lambda: EnvStep(states=[{}, {}], observations=[None], rewards=[None], done=[True]), "observations: 1"),
    (lambda: EnvStep(states=[{}], observations=[None], rewards=[1], done=[True], tool_calls=[-1]), "tool_calls 0"),
    (lambda: EnvStep(states=[{}], observations=[None], rewards=[1], done=[True], success=["yes"]), "success 0"),
])
def test_results_are_checked_where_they_are_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_results_normalise_messages_and_keep_integers_as_floats():
    step = EnvStep(states=[{"n": 1}], observations=[[{"role": "tool", "content": "42"}]], rewards=[1], done=[False])
    assert step.observations == ((Message(role="tool", content="42"),),)
    assert step.rewards == (1.0,) and isinstance(step.rewards[0], float)
    assert step.success == (None,) and step.tool_calls == (0,)


# ---- the `environment` config section -----------------------------------------------------------------------
BASE = {"model": {"path": "some/model"}, "data": {"dataset": "reverse"}, "rewards": [{"name": "exact_match"}]}


def config_of(tmp_path, **sections):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, **sections}), encoding="utf-8")
    return load_config(path)


def test_environment_section_defaults_and_the_optional_dataset(tmp_path):
    assert config_of(tmp_path).environment is None
    config = config_of(tmp_path, environment={"name": "retry", "options": {"tries": 3}, "max_turns": 3})
    environment = config.environment
    assert (environment.name, environment.options, environment.max_turns) == ("retry", {"tries": 3}, 3)
    assert (environment.on_error, environment.timeout_s, environment.isolation) == ("raise", 60.0, "process")
    assert environment.max_turn_tokens is None and environment.stop_strings == []
    assert config_of(tmp_path, environment={"name": "counting"}, data={}).data.dataset is None
    bare = {key: value for key, value in BASE.items() if key != "data"}
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump({**bare, "environment": {"name": "counting"}}), encoding="utf-8")
    assert load_config(path).data.dataset is None  # the environment brings its own episodes
    with pytest.raises(ConfigError, match="data.dataset: Field required"):
        config_of(tmp_path, data={})


@pytest.mark.parametrize("environment, field", [
    ({"name": "retry", "max_turns": 0}, "environment.max_turns"),
    ({"name": "retry", "stop_strings": [""]}, "environment.stop_strings"),
    ({"name": "retry", "on_error": "ignore"}, "environment.on_error"),
    ({"name": "retry", "isolation": "thread"}, "environment.isolation"),
    ({"name": "retry", "max_turns": True}, "environment.max_turns"),
    ({"name": "retry", "turns": 2}, "environment.turns"),
    ({"max_turns": 2}, "environment.name"),
])
def test_environment_section_names_the_field_at_fault(tmp_path, environment, field):
    with pytest.raises(ConfigError, match=f"run.yaml: {field}[:.]"):
        config_of(tmp_path, environment=environment)


def test_episode_tokens_are_checked_against_the_models_context(tmp_path, tiny_model_dir):
    """The tiny model's context is 128 tokens. Unset, the turn limit is max_new_tokens and the episode limit
    max_turns turns, shrunk to what the prompt leaves (never below one turn); a value the user set is checked."""
    model = {"path": str(tiny_model_dir)}
    data = {"dataset": "reverse", "max_prompt_tokens": 32}
    fitted = fit_to_context(config_of(tmp_path, model=model, data=data, generation={"max_new_tokens": 16},
                                      environment={"name": "retry", "max_turns": 3}), str(tiny_model_dir))
    assert (fitted.environment.max_turn_tokens, fitted.environment.max_episode_tokens) == (16, 48)
    fitted = fit_to_context(config_of(tmp_path, model=model, data=data,
                                      environment={"name": "retry", "max_turns": 8, "max_turn_tokens": 20}),
                            str(tiny_model_dir))
    assert (fitted.environment.max_turn_tokens, fitted.environment.max_episode_tokens) == (20, 96)
    unset_prompt = fit_to_context(config_of(tmp_path, model=model, environment={"name": "retry",
                                            "max_episode_tokens": 100}), str(tiny_model_dir))
    assert unset_prompt.data.max_prompt_tokens == 28  # the default prompt shrinks to what the episode leaves
    too_long = config_of(tmp_path, model=model, data=data, environment={"name": "retry", "max_episode_tokens": 100})
    with pytest.raises(ConfigError, match=r"data.max_prompt_tokens \(32\) \+ environment.max_episode_tokens \(100\) "
                                          r"= 132 tokens, more than the model's context of 128"):
        fit_to_context(too_long, str(tiny_model_dir), "run.yaml")
    sft = fit_to_context(too_long, str(tiny_model_dir), "run.yaml", "sft")  # sft runs no episodes
    assert sft.environment.max_episode_tokens == 100


def test_config_check_prints_the_resolved_episode_budget(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "model": {"path": str(tiny_model_dir)}, "generation":
                                    {"max_new_tokens": 8}, "environment": {"name": "retry", "max_turns": 2}}))
    assert main(["config", "check", str(path)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)["environment"]
    assert (resolved["max_turn_tokens"], resolved["max_episode_tokens"]) == (8, 16)
