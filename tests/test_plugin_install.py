"""Discovery for real: pip-install a plugin distribution into the running environment, list it, train with it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ppo_core.modeling.tiny import init_model

REPO = Path(__file__).resolve().parents[1]


def pip(*args):
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def ppo_core(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ppo_core.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


def plugins_json(cwd=None) -> dict:
    result = ppo_core("plugins", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rewards_of(listing: dict) -> dict[str, list[str]]:
    return {plugin["name"]: plugin["rewards"] for plugin in listing["plugins"]}


def train_two_updates(root: Path, model: Path, rewards: list[dict], **sections) -> list[dict]:
    config = {
        "model": {"path": str(model)},
        "data": {"dataset": "reverse", "options": {"size": 32}},
        "rewards": rewards,
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 4, "epochs": 1},
        "generation": {"max_new_tokens": 8},
        "train": {"updates": 2, "output_dir": str(root / "run"), "progress": "none"},
        **sections,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = ppo_core("train", str(path))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]


def test_bundled_rewards_are_discovered_through_their_entry_point():
    listing = plugins_json()
    plugin = next(p for p in listing["plugins"] if p["name"] == "rule_rewards")
    assert plugin["distribution"] == "ppo-core-rewards"
    assert plugin["rewards"] == ["edit_distance", "exact_match", "http_reward", "repetition_penalty"]


def test_a_throwaway_plugin_distribution_installs_lists_trains_and_uninstalls(tmp_path, tiny_model):
    source = tmp_path / "throwaway"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "ppo-core-throwaway-test-plugin"
        version = "0.0.1"
        [project.entry-points.ppo_core]
        throwaway = "ppo_core_throwaway"
        [tool.setuptools]
        py-modules = ["ppo_core_throwaway"]
    """))
    (source / "ppo_core_throwaway.py").write_text(textwrap.dedent("""
        from ppo_core import hookimpl
        from ppo_core import Reward

        class VowelShare(Reward):
            name = "vowel_share"

            def __call__(self, samples):
                return [sum(c in "aeiou" for c in s.response) / max(len(s.response), 1) for s in samples]

        @hookimpl
        def register_rewards(register):
            register(VowelShare)
    """))
    pip("install", "--no-deps", "--no-build-isolation", str(source))
    try:
        listing = plugins_json()
        throwaway = next(p for p in listing["plugins"] if p["name"] == "throwaway")
        assert throwaway["distribution"] == "ppo-core-throwaway-test-plugin"
        assert throwaway["rewards"] == ["vowel_share"]
        metrics = train_two_updates(tmp_path, tiny_model, [
            {"name": "vowel_share", "weight": 1.0},
            {"name": "edit_distance", "weight": 0.5},
            {"name": "repetition_penalty", "weight": 0.1},
        ])
        assert [m["update"] for m in metrics] == [1, 2]
        assert all(0.0 <= m["reward/vowel_share"] <= 1.0 for m in metrics)
        assert all("reward/edit_distance" in m for m in metrics)
    finally:
        pip("uninstall", "--yes", "ppo-core-throwaway-test-plugin")
    assert "throwaway" not in rewards_of(plugins_json())


def test_allow_and_block_settings_hide_plugins(monkeypatch):
    monkeypatch.setenv("PPO_CORE_BLOCK_PLUGINS", "ppo-core-rewards")
    listing = plugins_json()
    assert "rule_rewards" not in rewards_of(listing)
    assert "rule_rewards" in [p["name"] for p in listing["skipped"]]
    monkeypatch.delenv("PPO_CORE_BLOCK_PLUGINS")
    monkeypatch.setenv("PPO_CORE_PLUGINS", "rule_rewards")
    assert list(rewards_of(plugins_json())) == ["rule_rewards"]


def test_the_example_custom_reward_plugin_installs_and_trains(tmp_path, tiny_model):
    pip("install", "--no-deps", "--no-build-isolation", str(REPO / "examples" / "custom-reward-plugin"))
    try:
        assert rewards_of(plugins_json())["length_reward"] == ["target_length"]
        example = yaml.safe_load((REPO / "examples" / "custom-reward.yaml").read_text())
        metrics = train_two_updates(tmp_path, tiny_model, example["rewards"])
        assert all(-1.0 <= m["reward/target_length"] <= 1.0 for m in metrics)
    finally:
        pip("uninstall", "--yes", "ppo-core-length-reward")


# ---- the example environment plugin ---------------------------------------------------------------------------
ECHO_DIST, ECHO_PLUGIN = "ppo-core-echo-environment", "echo_environment"
PLAY_ONE_EPISODE = """
from ppo_core import RunContext
from ppo_core.plugin.loading import load_plugins
echo = load_plugins().registry.build("environment", "echo", {"rounds": 2, "episodes": 1}, RunContext())
(record,) = echo.records("train")
first, second = record.fields["words"]
reset = echo.reset([record])
step = echo.step(reset.states, [first])
last = echo.step(step.states, ["nope"])
print(reset.prompts[0] == "echo " + first, step.observations[0] == "echo " + second, step.rewards, last.done,
      last.success)
"""


def environments_of(listing: dict) -> dict[str, list[str]]:
    return {plugin["name"]: plugin["environments"] for plugin in listing["plugins"]}


def test_the_example_custom_environment_plugin_installs_lists_plays_and_uninstalls():
    pip("install", "--no-deps", "--no-build-isolation", str(REPO / "examples" / "custom-environment-plugin"))
    try:
        listing = plugins_json()
        echo = next(p for p in listing["plugins"] if p["name"] == ECHO_PLUGIN)
        assert (echo["distribution"], echo["environments"], echo["rewards"]) == (ECHO_DIST, ["echo"], [])
        played = subprocess.run([sys.executable, "-c", PLAY_ONE_EPISODE], capture_output=True, text=True,
                                timeout=120)
        assert played.stdout.split() == ["True", "True", "(1.0,)", "(True,)", "(False,)"], played.stderr
    finally:
        pip("uninstall", "--yes", ECHO_DIST)
    assert ECHO_PLUGIN not in environments_of(plugins_json())


def test_the_example_custom_environment_plugin_trains_two_updates(tmp_path, tiny_model):
    pip("install", "--no-deps", "--no-build-isolation", str(REPO / "examples" / "custom-environment-plugin"))
    try:
        metrics = train_two_updates(tmp_path, tiny_model, [{"name": "repetition_penalty", "weight": 0.1}], data={},
                                    environment={"name": "echo", "max_turns": 3, "max_turn_tokens": 8, "max_episode_tokens": 64,
                                                 "options": {"rounds": 3, "episodes": 16}})
        assert [m["update"] for m in metrics] == [1, 2]
        assert all(0.0 <= m["env/success_rate"] <= 1.0 and 1.0 <= m["env/turns_mean"] <= 3.0 for m in metrics)
    finally:
        pip("uninstall", "--yes", ECHO_DIST)
