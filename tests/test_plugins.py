"""The plugin contract: loading, stamping, failures, allow/block lists, and the `ppo-core plugins` listing.

Every test gets a fresh plugin manager (``load_plugins`` builds one per call). In-process test plugins are
module objects holding ``@hookimpl`` functions; failing *installed* plugins are real throwaway distributions
(``*.dist-info`` + ``entry_points.txt``) written to ``tmp_path`` and put on ``sys.path``, so entry-point
discovery runs for real. The bundled distributions ``ppo-core-rewards`` (plugin ``rule_rewards``) and
``ppo-core-datasets`` (plugin ``datasets``) must be installed: without them these tests fail, never skip; the
listing also checks ``ppo-core-environments`` (plugin ``environments``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from pydantic import BaseModel

from ppo_core import Dataset, NoOptions, Record, Reward, RunContext, hookimpl
from ppo_core.cli import main
from ppo_core.errors import PluginError, UserError
from ppo_core.plugin.loading import ALLOW_ENV, BLOCK_ENV, PluginSet, load_plugins

RULE_PLUGIN, RULE_DIST = "rule_rewards", "ppo-core-rewards"
DATA_PLUGIN, DATA_DIST = "datasets", "ppo-core-datasets"
ENV_PLUGIN, ENV_DIST = "environments", "ppo-core-environments"
RULE_REWARDS = ["edit_distance", "exact_match", "http_reward", "repetition_penalty"]
SYNTHETIC_DATASETS = {"copy", "json", "jsonl", "reverse", "sort"}
BUNDLED = {RULE_PLUGIN, DATA_PLUGIN}
TEST_PLUGIN = "test_plugin"


# ---- in-process test plugins ------------------------------------------------------------------------------
class Alpha(Reward):
    name = "alpha"

    def __call__(self, samples):
        return [1.0] * len(samples)


class Beta(Reward):
    name = "beta"

    class Options(BaseModel):
        scale: float = 1.0

    def __call__(self, samples):
        return [self.options.scale] * len(samples)


class Letters(Dataset):
    name = "letters"

    def records(self, split):
        yield Record.from_dict({"prompt": "abc", "solution": "cba"})


def rewards_hook(*classes: type) -> Callable:
    @hookimpl
    def register_rewards(register):
        for cls in classes:
            register(cls)

    return register_rewards


def datasets_hook(*classes: type) -> Callable:
    @hookimpl
    def register_datasets(register):
        for cls in classes:
            register(cls)

    return register_datasets


@pytest.fixture
def test_plugin(make_plugin) -> Iterator[PluginSet]:
    """The installed plugins plus an in-process plugin ``test_plugin`` (rewards alpha, beta; dataset letters)."""
    plugin = make_plugin(register_rewards=rewards_hook(Alpha, Beta), register_datasets=datasets_hook(Letters))
    plugins = load_plugins(extra=[(TEST_PLUGIN, plugin)])
    try:
        yield plugins
    finally:
        plugins.manager.unregister(name=TEST_PLUGIN)
        assert not plugins.manager.has_plugin(TEST_PLUGIN)


def loaded_names(plugins: PluginSet) -> set[str]:
    return {info.name for info in plugins.loaded}


def failed_names(plugins: PluginSet) -> set[str]:
    return {f.info.name for f in plugins.failed}


def failure(plugins: PluginSet, name: str):
    matches = [f for f in plugins.failed if f.info.name == name]
    assert len(matches) == 1, f"{name} not (or twice) in failed: {plugins.failed}"
    return matches[0]


def assert_bundled_plugins_still_load(plugins: PluginSet) -> None:
    assert BUNDLED <= loaded_names(plugins)
    assert set(RULE_REWARDS) <= set(plugins.registry.names("reward"))
    assert plugins.registry.get("reward", "exact_match").plugin == RULE_PLUGIN
    assert plugins.registry.get("dataset", "reverse").plugin == DATA_PLUGIN


# ---- registration and stamping ------------------------------------------------------------------------------
def test_test_plugin_shows_up_stamped_with_its_plugin_name(test_plugin):
    registry = test_plugin.registry
    assert registry.get("reward", "alpha").cls is Alpha
    assert registry.get("reward", "alpha").plugin == TEST_PLUGIN
    assert registry.get("reward", "beta").plugin == TEST_PLUGIN
    assert registry.get("dataset", "letters").cls is Letters
    assert registry.get("dataset", "letters").plugin == TEST_PLUGIN
    assert registry.by_plugin(TEST_PLUGIN, "reward") == ["alpha", "beta"]
    assert registry.by_plugin(TEST_PLUGIN, "dataset") == ["letters"]
    # the installed plugins are stamped with their entry-point names
    assert registry.by_plugin(RULE_PLUGIN, "reward") == RULE_REWARDS
    assert SYNTHETIC_DATASETS <= set(registry.by_plugin(DATA_PLUGIN, "dataset"))
    info = next(i for i in test_plugin.loaded if i.name == TEST_PLUGIN)
    assert (info.distribution, info.entry_point) == (None, None)
    assert not failed_names(test_plugin) & (BUNDLED | {TEST_PLUGIN})
    assert test_plugin.manager.has_plugin(TEST_PLUGIN)


def test_registered_reward_is_built_with_validated_options(test_plugin):
    beta = test_plugin.registry.build("reward", "beta", {"scale": 2.5}, RunContext())
    assert isinstance(beta, Beta) and beta.options.scale == 2.5
    assert beta([object(), object()]) == [2.5, 2.5]
    letters = test_plugin.registry.build("dataset", "letters", None, RunContext())
    assert [r.solution for r in letters.records("train")] == ["cba"]


def test_every_load_uses_a_fresh_plugin_manager(test_plugin):
    fresh = load_plugins(use_entry_points=False)
    assert fresh.manager is not test_plugin.manager
    assert not fresh.manager.has_plugin(TEST_PLUGIN)
    assert fresh.registry.names("reward") == [] and fresh.registry.names("dataset") == []
    assert fresh.loaded == [] and fresh.failed == [] and fresh.skipped == []


# ---- name clashes and unknown names --------------------------------------------------------------------------
def test_duplicate_reward_name_from_two_plugins_names_both(make_plugin):
    class AlphaAgain(Alpha):
        name = "alpha"

    first = make_plugin(register_rewards=rewards_hook(Alpha))
    second = make_plugin(register_rewards=rewards_hook(AlphaAgain))
    with pytest.raises(PluginError) as raised:
        load_plugins(extra=[("first_plugin", first), ("second_plugin", second)], use_entry_points=False)
    message = str(raised.value)
    assert "'alpha'" in message
    # both named, in registration order: the one that had the name first, then the newcomer
    assert message.index("'first_plugin'") < message.index("'second_plugin'")


def test_duplicate_of_an_installed_reward_names_the_installed_plugin(make_plugin):
    class Impostor(Alpha):
        name = "exact_match"

    impostor = make_plugin(register_rewards=rewards_hook(Impostor))
    with pytest.raises(PluginError) as raised:
        load_plugins(extra=[("impostor", impostor)])
    message = str(raised.value)
    assert "'exact_match'" in message
    assert message.index(f"'{RULE_PLUGIN}'") < message.index("'impostor'")


def test_duplicate_dataset_name_names_both_plugins(make_plugin):
    class LettersAgain(Letters):
        name = "letters"

    one = make_plugin(register_datasets=datasets_hook(Letters))
    two = make_plugin(register_datasets=datasets_hook(LettersAgain))
    with pytest.raises(PluginError, match=r"dataset 'letters'.*'one'.*'two'"):
        load_plugins(extra=[("one", one), ("two", two)], use_entry_points=False)


def test_unknown_reward_lists_the_known_ones():
    registry = load_plugins(allow=BUNDLED).registry  # other installed plugins, broken or not, stay out
    with pytest.raises(UserError) as raised:
        registry.get("reward", "exact_mach")
    message = str(raised.value)
    assert "'exact_mach'" in message
    for name in RULE_REWARDS:
        assert name in message
    assert "failed" not in message  # nothing failed, so nothing to mention
    with pytest.raises(UserError, match="reverse"):
        registry.get("dataset", "revers")


def test_unknown_reward_mentions_the_plugins_that_failed(make_plugin):
    @hookimpl
    def register_reward(register):  # misspelt: the plugin fails
        register(Alpha)

    plugins = load_plugins(extra=[("typo_plugin", make_plugin(register_reward=register_reward))])
    with pytest.raises(UserError) as raised:
        plugins.registry.get("reward", "alpha")
    message = str(raised.value)
    assert "exact_match" in message
    assert "failed" in message and "typo_plugin" in message


# ---- plugins that fail --------------------------------------------------------------------------------------
def test_misspelt_hook_implementation_is_rejected_by_check_pending(make_plugin):
    @hookimpl
    def register_reward(register):  # missing "s"
        register(Alpha)

    typo = make_plugin(register_reward=register_reward, register_datasets=datasets_hook(Letters))
    good = make_plugin(register_rewards=rewards_hook(Beta))
    plugins = load_plugins(extra=[("typo_plugin", typo), ("good_plugin", good)])

    failed = failure(plugins, "typo_plugin")
    assert "register_reward" in failed.error
    assert "typo_plugin" not in loaded_names(plugins)
    assert not plugins.manager.has_plugin("typo_plugin")  # unregistered whole: its valid hook is gone too
    assert "letters" not in plugins.registry.names("dataset")
    assert "alpha" not in plugins.registry.names("reward")
    assert "good_plugin" in loaded_names(plugins)
    assert plugins.registry.get("reward", "beta").plugin == "good_plugin"
    assert_bundled_plugins_still_load(plugins)


def test_hook_implementation_with_a_wrong_argument_is_reported(make_plugin):
    @hookimpl
    def register_rewards(reg):  # the spec's argument is `register`
        reg(Alpha)

    plugins = load_plugins(extra=[("bad_args", make_plugin(register_rewards=register_rewards))])
    failed = failure(plugins, "bad_args")
    assert "register_rewards" in failed.error and "reg" in failed.error
    assert "alpha" not in plugins.registry.names("reward")
    assert_bundled_plugins_still_load(plugins)


def test_plugin_raising_in_register_rewards_is_reported_and_the_others_load(make_plugin):
    @hookimpl
    def register_rewards(register):
        register(Alpha)  # registered before the failure: must be taken back
        raise RuntimeError("reward table is corrupt")

    broken = make_plugin(register_rewards=register_rewards, register_datasets=datasets_hook(Letters))
    good = make_plugin(register_rewards=rewards_hook(Beta))
    plugins = load_plugins(extra=[("broken_plugin", broken), ("good_plugin", good)])

    failed = failure(plugins, "broken_plugin")
    assert "register_rewards" in failed.error
    assert "RuntimeError" in failed.error and "reward table is corrupt" in failed.error
    assert "reward table is corrupt" in failed.traceback and "Traceback" in failed.traceback
    assert "broken_plugin" not in loaded_names(plugins)
    assert "alpha" not in plugins.registry.names("reward")
    assert "letters" not in plugins.registry.names("dataset")
    assert plugins.registry.failed_plugins == ["broken_plugin"]
    assert plugins.registry.get("reward", "beta").plugin == "good_plugin"
    assert_bundled_plugins_still_load(plugins)


def test_plugin_raising_in_register_datasets_loses_its_rewards_too(make_plugin):
    @hookimpl
    def register_datasets(register):
        raise ValueError("no data dir")

    broken = make_plugin(register_rewards=rewards_hook(Alpha), register_datasets=register_datasets)
    plugins = load_plugins(extra=[("half_broken", broken)])
    failed = failure(plugins, "half_broken")
    assert "register_datasets" in failed.error and "no data dir" in failed.error
    assert "alpha" not in plugins.registry.names("reward")
    assert_bundled_plugins_still_load(plugins)


class NotAReward:
    name = "not_a_reward"
    Options = NoOptions


class Nameless(Reward):
    pass


class BadName(Reward):
    name = "two words"


class NumberName(Reward):
    name = 3


class DictOptions(Reward):
    name = "dict_options"
    Options = dict


class InstanceOptions(Reward):
    name = "instance_options"
    Options = NoOptions()


@pytest.mark.parametrize("hook, obj, expected", [
    ("register_rewards", NotAReward, "not a subclass"),
    ("register_rewards", Letters, "not a subclass"),        # a dataset offered as a reward
    ("register_rewards", Alpha(NoOptions()), "not a subclass"),  # an instance, not a class
    ("register_datasets", Alpha, "not a subclass"),          # a reward offered as a dataset
    ("register_rewards", Nameless, "name"),
    ("register_rewards", BadName, "name"),
    ("register_rewards", NumberName, "name"),
    ("register_rewards", DictOptions, "Options"),
    ("register_rewards", InstanceOptions, "Options"),
], ids=["plain-class", "dataset-as-reward", "instance", "reward-as-dataset", "no-name", "name-not-identifier",
        "name-not-str", "options-dict", "options-instance"])
def test_invalid_registration_fails_that_plugin_only(make_plugin, hook, obj, expected):
    hook_function = (rewards_hook if hook == "register_rewards" else datasets_hook)(obj)
    plugin = make_plugin(**{hook: hook_function})
    plugins = load_plugins(extra=[("sloppy_plugin", plugin)])
    failure = next(f for f in plugins.failed if f.info.name == "sloppy_plugin")
    assert "'sloppy_plugin'" in failure.error
    assert expected in failure.error
    assert "sloppy_plugin" not in [info.name for info in plugins.loaded]
    assert "rule_rewards" in [info.name for info in plugins.loaded]


# ---- installed plugins that fail to import ------------------------------------------------------------------
BROKEN_DIST, BROKEN_EP, BROKEN_MODULE = "ppo-core-broken", "broken", "ppo_core_broken_plugin"


@pytest.fixture(params=["import-error", "syntax-error", "raises-at-import"])
def broken_distribution(request, make_distribution) -> tuple[Path, str]:
    """A real installed distribution whose plugin module cannot be imported; returns (site dir, error text)."""
    source, text = {
        "import-error": ("import ppo_core_missing_dependency\n", "ppo_core_missing_dependency"),
        "syntax-error": ("def register_rewards(register)\n    pass\n", "SyntaxError"),
        "raises-at-import": ("raise RuntimeError('no GPU here')\n", "no GPU here"),
    }[request.param]
    site = make_distribution(BROKEN_DIST, entry_points={BROKEN_EP: BROKEN_MODULE},
                             modules={BROKEN_MODULE: source}, version="0.3.0")
    return site, text


def test_plugin_failing_to_import_is_reported_with_distribution_and_entry_point(broken_distribution):
    _, text = broken_distribution
    plugins = load_plugins()
    failed = failure(plugins, BROKEN_EP)
    assert failed.info.distribution == BROKEN_DIST
    assert failed.info.entry_point == BROKEN_MODULE
    assert failed.info.version == "0.3.0"
    assert text in failed.error
    assert "Traceback" in failed.traceback
    described = failed.describe()
    assert BROKEN_DIST in described and f"{BROKEN_EP} = {BROKEN_MODULE}" in described and text in described
    assert BROKEN_EP not in loaded_names(plugins)
    assert BROKEN_EP in plugins.registry.failed_plugins
    assert_bundled_plugins_still_load(plugins)


def test_cli_plugins_reports_the_failed_plugin_and_exits_0(broken_distribution, capsys):
    _, text = broken_distribution
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    failed_lines = [line for line in out.splitlines() if line.startswith("FAILED") and BROKEN_DIST in line]
    assert len(failed_lines) == 1
    assert BROKEN_DIST in failed_lines[0] and BROKEN_MODULE in failed_lines[0] and f"'{BROKEN_EP}" in failed_lines[0]
    assert f"{RULE_PLUGIN} ({RULE_DIST} 0.1.0)" in out
    assert "exact_match" in out


def test_installed_console_script_reports_the_failed_plugin(make_distribution):
    """The real `ppo-core` command in a fresh process, the broken distribution found through PYTHONPATH."""
    site = make_distribution(BROKEN_DIST, entry_points={BROKEN_EP: BROKEN_MODULE},
                             modules={BROKEN_MODULE: "import ppo_core_missing_dependency\n"})
    script = Path(sys.executable).parent / "ppo-core"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ppo_core.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop(ALLOW_ENV, None)
    env.pop(BLOCK_ENV, None)
    result = subprocess.run(command + ["plugins"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    failed_lines = [line for line in result.stdout.splitlines() if line.startswith("FAILED") and BROKEN_DIST in line]
    assert len(failed_lines) == 1
    assert BROKEN_DIST in failed_lines[0] and BROKEN_MODULE in failed_lines[0]
    assert "ppo_core_missing_dependency" in failed_lines[0]
    assert f"{RULE_PLUGIN} ({RULE_DIST} 0.1.0)" in result.stdout


# ---- which plugins load: allow and block lists --------------------------------------------------------------
@pytest.mark.parametrize("allow, block, env_allow, env_block, expected", [
    (None, (), None, None, BUNDLED),
    ([RULE_PLUGIN], (), None, None, {RULE_PLUGIN}),
    ([DATA_DIST], (), None, None, {DATA_PLUGIN}),                      # by distribution name
    ([], (), None, None, set()),                                       # an empty allow list loads nothing
    (None, [RULE_PLUGIN], None, None, {DATA_PLUGIN}),
    (None, [RULE_DIST], None, None, {DATA_PLUGIN}),                    # by distribution name
    ([RULE_PLUGIN, DATA_PLUGIN], [DATA_DIST], None, None, {RULE_PLUGIN}),  # block beats allow
    (None, (), RULE_PLUGIN, None, {RULE_PLUGIN}),
    (None, (), f" {DATA_DIST} , ", None, {DATA_PLUGIN}),               # env: spaces and empty items ignored
    (None, (), None, f"{RULE_DIST},{DATA_PLUGIN}", set()),
    ([RULE_PLUGIN, DATA_PLUGIN], (), DATA_PLUGIN, None, {DATA_PLUGIN}),  # env narrows the argument
    ([RULE_PLUGIN], (), DATA_PLUGIN, None, set()),                     # disjoint: nothing is allowed
    ([RULE_PLUGIN, DATA_PLUGIN], (), None, RULE_DIST, {DATA_PLUGIN}),  # env block adds to the allow list
])
def test_allow_and_block_lists(monkeypatch, allow, block, env_allow, env_block, expected):
    if env_allow is not None:
        monkeypatch.setenv(ALLOW_ENV, env_allow)
    if env_block is not None:
        monkeypatch.setenv(BLOCK_ENV, env_block)
    plugins = load_plugins(allow=allow, block=block)
    assert loaded_names(plugins) & BUNDLED == expected
    assert {info.name for info in plugins.skipped} & BUNDLED == BUNDLED - expected
    assert not failed_names(plugins) & BUNDLED
    assert (RULE_PLUGIN in expected) == ("exact_match" in plugins.registry.names("reward"))
    assert (DATA_PLUGIN in expected) == ("reverse" in plugins.registry.names("dataset"))
    skipped = {info.name: info for info in plugins.skipped}
    if RULE_PLUGIN in skipped:
        assert skipped[RULE_PLUGIN].distribution == RULE_DIST


def test_allow_and_block_lists_apply_to_in_process_plugins_too(make_plugin, monkeypatch):
    plugin = make_plugin(register_rewards=rewards_hook(Alpha))
    assert "alpha" not in load_plugins(allow=[RULE_PLUGIN], extra=[(TEST_PLUGIN, plugin)]).registry.names("reward")
    assert "alpha" not in load_plugins(block=[TEST_PLUGIN], extra=[(TEST_PLUGIN, plugin)]).registry.names("reward")
    monkeypatch.setenv(BLOCK_ENV, TEST_PLUGIN)
    assert TEST_PLUGIN in {i.name for i in load_plugins(extra=[(TEST_PLUGIN, plugin)]).skipped}


@pytest.fixture
def tripwire(make_distribution, tmp_path) -> Path:
    """An installed plugin whose module records its import in a file, then raises; returns the record file."""
    marker = tmp_path / "tripwire-imported.txt"
    make_distribution("ppo-core-tripwire", entry_points={"tripwire": "ppo_core_tripwire_plugin"},
                      modules={"ppo_core_tripwire_plugin": f"""
                          with open({str(marker)!r}, "a") as log:
                              log.write("imported\\n")
                          raise ImportError("the tripwire plugin was imported")
                      """})
    return marker


def test_tripwire_plugin_is_imported_when_allowed(tripwire):
    """The control for the test below: without a list the tripwire is imported (and fails)."""
    plugins = load_plugins()
    assert tripwire.read_text() == "imported\n"
    assert "the tripwire plugin was imported" in failure(plugins, "tripwire").error


@pytest.mark.parametrize("allow, block, env", [
    ([RULE_PLUGIN], (), {}),
    ([DATA_DIST], (), {}),
    (None, ["tripwire"], {}),
    (None, ["ppo-core-tripwire"], {}),
    (None, (), {ALLOW_ENV: RULE_DIST}),
    (None, (), {BLOCK_ENV: "ppo-core-tripwire"}),
    (None, (), {BLOCK_ENV: "tripwire"}),
])
def test_plugin_outside_the_allow_list_is_never_imported(tripwire, monkeypatch, allow, block, env):
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    plugins = load_plugins(allow=allow, block=block)
    assert not tripwire.exists(), "the plugin module was imported"
    assert "ppo_core_tripwire_plugin" not in sys.modules
    assert "tripwire" not in failed_names(plugins)
    skipped = {info.name: info for info in plugins.skipped}
    assert skipped["tripwire"].distribution == "ppo-core-tripwire"
    assert loaded_names(plugins) & BUNDLED  # something else did load


# ---- `ppo-core plugins` -------------------------------------------------------------------------------------
def test_cli_plugins_json_lists_the_installed_plugins(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {item["name"]: item for item in listing["plugins"]}
    rule = by_name[RULE_PLUGIN]
    assert rule["distribution"] == RULE_DIST
    assert rule["version"] == "0.1.0"
    assert rule["entry_point"] == "ppo_core_rewards.plugin"
    assert rule["rewards"] == RULE_REWARDS
    assert rule["datasets"] == []
    data = by_name[DATA_PLUGIN]
    assert data["distribution"] == DATA_DIST
    assert data["rewards"] == []
    assert SYNTHETIC_DATASETS <= set(data["datasets"])
    assert data["datasets"] == sorted(data["datasets"])
    environments = by_name[ENV_PLUGIN]
    assert (environments["distribution"], environments["rewards"]) == (ENV_DIST, [])
    assert environments["environments"] == ["calculator", "guess_number", "retry_with_feedback"]
    assert rule["environments"] == data["environments"] == []
    assert not {item["name"] for item in listing["failed"]} & BUNDLED
    assert listing["skipped"] == []  # no allow or block list: nothing left out


def test_cli_plugins_text_listing_and_the_allow_variable(capsys, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, RULE_PLUGIN)
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(f"{RULE_PLUGIN} ({RULE_DIST} 0.1.0)")
    assert lines[header + 1].split() == ["rewards:", "edit_distance,", "exact_match,", "http_reward,", "repetition_penalty"]
    assert lines[header + 2].split() == ["datasets:", "-"]
    assert f"skipped {DATA_PLUGIN} (allow/block list)" in lines
    assert not any(line.startswith(DATA_PLUGIN + " (") for line in lines)
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in listing["plugins"]] == [RULE_PLUGIN]
    assert {"name": DATA_PLUGIN, "distribution": DATA_DIST} in listing["skipped"]
