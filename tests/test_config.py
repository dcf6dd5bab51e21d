"""The run config: defaults, validation errors that name the file and the field, YAML/JSON, ``--set``, CLI.

The CLI tests at the end run ``python -m ppo_core.cli`` in a subprocess, as a user would: a mistake is a
one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import yaml

from ppo_core.cli import main
from ppo_core.config import (
    GenerationConfig,
    KLConfig,
    OptimConfig,
    PluginsConfig,
    PPOConfig,
    RewardConfig,
    RunConfig,
    TrainConfig,
    apply_override,
    load_config,
    save_config,
    validate_config,
)
from ppo_core.errors import ConfigError

MINIMAL = {"model": {"path": "some/model"}, "data": {"dataset": "reverse"}, "rewards": [{"name": "exact_match"}]}
SECTIONS = set(RunConfig.model_fields)
assert {"model", "data", "rewards", "ppo", "generation", "optim", "train", "plugins"} <= SECTIONS


def minimal() -> dict:
    return json.loads(json.dumps(MINIMAL))


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def config_error(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path, list(overrides))
    return str(raised.value)


# ---- defaults -------------------------------------------------------------------------------------------------
def test_defaults_validate():
    config = validate_config(minimal())
    assert config.model.path == "some/model" and config.model.critic == "shared" and config.model.device == "auto"
    assert config.data.dataset == "reverse" and config.data.options == {} and config.data.max_prompt_tokens == 256
    reward = config.rewards[0]
    assert (reward.name, reward.weight, reward.options, reward.normalize) == ("exact_match", 1.0, {}, False)
    assert (reward.on_abstain, reward.on_error, reward.timeout_s, reward.isolation) == ("skip", "raise", 60.0, "process")
    ppo = config.ppo
    assert (ppo.rollout_batch_size, ppo.minibatch_size, ppo.micro_batch_size, ppo.epochs) == (64, 16, None, 4)
    assert (ppo.clip_range, ppo.gamma, ppo.lam) == (0.2, 1.0, 0.95)
    assert (ppo.kl.coef, ppo.kl.estimator, ppo.kl.placement, ppo.kl.target) == (0.05, None, None, None)
    # unset KL estimator and placement, whitening and value coefficient: gae's (ESTIMATOR_DEFAULTS)
    assert (ppo.advantage, ppo.samples_per_prompt, ppo.kl_estimator, ppo.kl_placement) == ("gae", 1, "k1", "reward")
    assert (ppo.aggregation, ppo.whitens_advantages, ppo.value_coef) == ("token_mean", True, 0.1)
    assert config.generation.max_new_tokens == 32 and config.generation.temperature == 1.0
    assert config.optim.lr == 1e-5 and config.optim.schedule == "linear"
    assert config.train.updates == 100 and config.train.seed == 0
    assert config.plugins.allow is None and config.plugins.block == []
    # every optional section's defaults are valid on their own, and are what a missing section gets
    assert config.ppo == PPOConfig() and config.ppo.kl == KLConfig()
    assert config.generation == GenerationConfig() and config.optim == OptimConfig()
    assert config.train == TrainConfig() and config.plugins == PluginsConfig()


def test_saved_config_reads_back_equal(tmp_path):
    config = validate_config({**minimal(), "ppo": {"rollout_batch_size": 8, "minibatch_size": 4,
                                                    "kl": {"coef": 0.2, "target": 6.0}}})
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


# ---- validation errors name the file and the field ---------------------------------------------------------------
BAD = {
    # id: (change to the minimal config, field path in the message, other text in the message)
    "unknown-key": ({"ppo": {"minibatch": 4}}, "ppo.minibatch", "Extra inputs"),
    "unknown-section": ({"trainer": {"updates": 3}}, "trainer", "Extra inputs"),
    "unknown-reward-key": ({"rewards": [{"name": "exact_match", "wieght": 2}]}, "rewards.0.wieght", "Extra"),
    "wrong-type": ({"ppo": {"epochs": "many"}}, "ppo.epochs", "'many'"),
    "wrong-type-nested": ({"ppo": {"kl": {"coef": "high"}}}, "ppo.kl.coef", "'high'"),
    "wrong-type-list": ({"rewards": "exact_match"}, "rewards", "list"),
    "wrong-type-section": ({"generation": 5}, "generation", ""),
    "out-of-range": ({"ppo": {"clip_range": -0.1}}, "ppo.clip_range", "greater than 0"),
    "out-of-range-max": ({"ppo": {"gamma": 1.5}}, "ppo.gamma", "less than or equal to 1"),
    "out-of-range-nested": ({"ppo": {"kl": {"coef": -1}}}, "ppo.kl.coef", "greater than or equal to 0"),
    "out-of-range-reward": ({"rewards": [{"name": "exact_match", "timeout_s": 0}]}, "rewards.0.timeout_s", "0"),
    "bad-choice": ({"ppo": {"kl": {"estimator": "k4"}}}, "ppo.kl.estimator", "'k1', 'k2' or 'k3'"),
    "bad-on-abstain": ({"rewards": [{"name": "exact_match", "on_abstain": "sometimes"}]},
                       "rewards.0.on_abstain", "sometimes"),
    "minibatch-not-dividing": ({"ppo": {"rollout_batch_size": 10, "minibatch_size": 4}},
                               "ppo.minibatch_size", "divide rollout_batch_size (10)"),
    "default-minibatch-not-dividing": ({"ppo": {"rollout_batch_size": 24}},
                                       "ppo.minibatch_size", "minibatch_size (16) must divide"),
    "micro-not-dividing": ({"ppo": {"rollout_batch_size": 16, "minibatch_size": 8, "micro_batch_size": 3}},
                           "ppo.micro_batch_size", "micro_batch_size (3) must divide minibatch_size (8)"),
    "duplicate-rewards": ({"rewards": [{"name": "exact_match"}, {"name": "edit_distance"},
                                       {"name": "exact_match", "weight": 2}]}, "rewards", "twice: exact_match"),
    "missing-model": ({"model": None}, "model", "Field required"),
    "missing-data": ({"data": None}, "data", "Field required"),
    "missing-model-path": ({"model": {}}, "model.path", "Field required"),
    "missing-reward-name": ({"rewards": [{"weight": 2}]}, "rewards.0.name", "Field required"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_config_names_file_and_field(tmp_path, case):
    change, field, text = BAD[case]
    data = minimal()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path = write_yaml(tmp_path / "run.yaml", data)
    message = config_error(path)
    assert message.startswith(f"{path}: "), message
    # the path, then ':' (or '.' and the member of a union that failed, as in rewards.0.on_abstain.float:)
    assert re.search(rf"(: |; ){re.escape(field)}[:.]", message), f"no field path {field!r} in: {message}"
    assert text in message


def test_rewards_may_be_left_out_of_the_config_but_train_needs_one(tmp_path):
    from ppo_core.commands.train import train

    data = minimal()
    del data["rewards"]
    data["train"] = {"output_dir": str(tmp_path / "run")}
    config = validate_config(data)  # `sft` and `eval` run without rewards
    assert config.rewards == []
    with pytest.raises(ConfigError) as raised:
        train(config, source="run.yaml")
    assert str(raised.value).startswith("run.yaml: rewards: ")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_all_problems_are_reported_together(tmp_path):
    data = {**minimal(), "ppo": {"epochs": 0, "lam": 2}, "optim": {"lr": "fast"}}
    message = config_error(write_yaml(tmp_path / "run.yaml", data))
    for field in ("ppo.epochs", "ppo.lam", "optim.lr"):
        assert f"{field}: " in message


# ---- reading files ---------------------------------------------------------------------------------------------
def test_yaml_and_json_read_the_same(tmp_path):
    data = {**minimal(), "ppo": {"rollout_batch_size": 8, "minibatch_size": 4, "kl": {"coef": 0.1}},
            "rewards": [{"name": "exact_match", "weight": 2.0}, {"name": "edit_distance", "on_abstain": 0.5}]}
    from_yaml = load_config(write_yaml(tmp_path / "run.yaml", data))
    from_yml = load_config(write_yaml(tmp_path / "run.yml", data))
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps(data), encoding="utf-8")
    from_json = load_config(json_path)
    assert from_yaml == from_yml == from_json
    assert from_json.ppo.kl.coef == 0.1 and from_json.rewards[1].on_abstain == 0.5


@pytest.mark.parametrize("name, text, expected", [
    ("run.json", '{"model": {"path": "m"},}', "not valid JSON"),
    ("run.yaml", "model: {path: m\ndata: [", "not valid YAML"),
    ("run.yaml", "- model\n- data\n", "must be a mapping"),
    ("run.yaml", "", "model: Field required"),  # an empty file is an empty mapping
])
def test_unreadable_configs_name_the_file(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    message = config_error(path)
    assert message.startswith(f"{path}: ") and expected in message


def test_missing_config_file_names_it(tmp_path):
    message = config_error(tmp_path / "nowhere.yaml")
    assert str(tmp_path / "nowhere.yaml") in message and "cannot read" in message


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/object:ppo_core.config.ModelConfig {{path: m}}",
    "!!python/name:os.system",
])
def test_yaml_is_read_with_the_safe_loader(tmp_path, tag):
    marker = tmp_path / "executed"
    text = yaml.safe_dump(minimal()) + f"extra: {tag.format(marker=marker)}\n"
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    message = config_error(path)
    assert "not valid YAML" in message and str(path) in message
    assert not marker.exists()


# ---- --set overrides -------------------------------------------------------------------------------------------
def test_set_overrides(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {**minimal(), "rewards": [{"name": "exact_match"},
                                                                        {"name": "edit_distance"}]})
    config = load_config(path, [
        "ppo.kl.coef=0.1",              # nested, section absent from the file
        "rewards.0.weight=2",           # list index
        "rewards.1.options.max_len=7",  # into a reward's options
        "optim.lr=3e-4",
        "ppo.epochs=2", "ppo.epochs=3",  # applied in order
        "plugins.allow=[rule_rewards, datasets]",
        "train.output_dir=runs/a=b",     # only the first '=' splits
        "model.trust_remote_code=true",
    ])
    assert config.ppo.kl.coef == 0.1
    assert config.rewards[0].weight == 2.0 and config.rewards[1].weight == 1.0
    assert config.rewards[1].options == {"max_len": 7}
    assert config.optim.lr == 3e-4
    assert config.ppo.epochs == 3
    assert config.plugins.allow == ["rule_rewards", "datasets"]
    assert config.train.output_dir == "runs/a=b"
    assert config.model.trust_remote_code is True
    assert load_config(path).ppo.kl.coef == 0.05  # the file itself is untouched


def test_set_replaces_a_whole_list_item():
    data = minimal()
    apply_override(data, "rewards.0={name: edit_distance, weight: -1}")
    assert data["rewards"] == [{"name": "edit_distance", "weight": -1}]


def test_set_fills_an_optional_section_left_null():
    data = {**minimal(), "model": {**minimal()["model"], "lora": None}}  # as a dumped config holds it
    apply_override(data, "model.lora.r=4")
    assert data["model"]["lora"] == {"r": 4}


def test_set_without_a_file_starts_from_a_base():
    config = load_config(None, ["ppo.kl.coef=0.3"], base=minimal())
    assert config.ppo.kl.coef == 0.3 and config.model.path == "some/model"


@pytest.mark.parametrize("assignment, expected", [
    ("ppo.epochs", "expected section.key=value"),
    ("=3", "expected section.key=value"),
    ("rewards.5.weight=2", "no item 5"),
    ("rewards.first.weight=2", "no item first"),
    ("rewards.3=x", "no item 3"),
    ("model.path.value=1", "model.path is not a section"),
    ("ppo.bogus=1", "ppo.bogus: Extra inputs"),
    ("ppo.epochs=abc", "ppo.epochs: Input should be a valid integer"),
    ("ppo.minibatch_size=5", "ppo.minibatch_size: "),
    ("rewards.0.weight=[1, 2]", "rewards.0.weight: "),
])
def test_bad_set_is_a_config_error(tmp_path, assignment, expected):
    path = write_yaml(tmp_path / "run.yaml", minimal())
    message = config_error(path, [assignment])
    assert expected in message
    assert assignment.partition("=")[0] in message or "expected section.key=value" in message


def test_validation_error_after_set_names_the_override(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", minimal())
    message = config_error(path, ["ppo.clip_range=-1"])
    assert message.startswith(f"{path} (with --set ppo.clip_range=-1): ppo.clip_range: ")


# ---- the CLI ---------------------------------------------------------------------------------------------------
def test_config_schema_prints_json_with_every_section(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == SECTIONS
    assert {"model", "data"} <= set(schema["required"])
    definitions = schema["$defs"]
    for model in ("ModelConfig", "DataConfig", "RewardConfig", "PPOConfig", "KLConfig", "GenerationConfig",
                  "OptimConfig", "TrainConfig", "PluginsConfig"):
        assert model in definitions
    assert "minibatch_size" in definitions["PPOConfig"]["properties"]
    assert definitions["RewardConfig"]["properties"]["weight"]["default"] == 1.0
    assert set(definitions["RewardConfig"]["properties"]) == set(RewardConfig.model_fields)


def test_config_check_prints_the_resolved_config(tmp_path, capsys):
    path = write_yaml(tmp_path / "run.yaml", minimal())
    assert main(["config", "check", str(path), "--set", "ppo.kl.coef=0.1"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["ppo"]["kl"]["coef"] == 0.1
    assert resolved["ppo"]["minibatch_size"] == 16  # defaults filled in
    assert set(resolved) == SECTIONS


def test_config_check_fits_the_prompt_to_the_models_context(tmp_path, tiny_model_dir, capsys):
    """The tiny model's context is 128 tokens: an unset max_prompt_tokens (256) shrinks to 128 - max_new_tokens;
    a value the user set is kept when it fits, and a missing model (a hub id here) leaves the default."""
    from ppo_core.modeling.loading import model_context_length

    assert model_context_length(str(tiny_model_dir)) == (128, f"n_positions in {tiny_model_dir / 'config.json'}")
    config = {**minimal(), "model": {"path": str(tiny_model_dir)}, "generation": {"max_new_tokens": 28}}
    for change, expected in (({}, 100), ({"max_prompt_tokens": 64}, 64), ({"max_prompt_tokens": 100}, 100)):
        path = write_yaml(tmp_path / "run.yaml", {**config, "data": {"dataset": "reverse", **change}})
        assert main(["config", "check", str(path)]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["data"]["max_prompt_tokens"] == expected
    path = write_yaml(tmp_path / "run.yaml", minimal())
    assert main(["config", "check", str(path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["max_prompt_tokens"] == 256


def test_duplicate_keys_and_non_utf8_configs_are_named(tmp_path):
    (tmp_path / "dup.yaml").write_text("model: {path: x}\ndata:\n  dataset: reverse\n  dataset: copy\n",
                                       encoding="utf-8")
    assert config_error(tmp_path / "dup.yaml") == (f"{tmp_path / 'dup.yaml'}, line 4: key 'dataset' appears twice "
                                                   f"(first on line 3)")
    merged = "base: &b {dataset: reverse}\nmodel: {path: x}\ndata:\n  <<: *b\n  dataset: copy\n"
    (tmp_path / "merge.yaml").write_text(merged, encoding="utf-8")  # a merge key's keys may be overridden
    assert yaml.safe_load(merged)["data"]["dataset"] == "copy"
    assert "Extra inputs" in config_error(tmp_path / "merge.yaml")  # `base` is not a section; no duplicate
    (tmp_path / "utf16.yaml").write_bytes("model: {path: x}\n".encode("utf-16"))
    assert "not UTF-8" in config_error(tmp_path / "utf16.yaml")
    (tmp_path / "bom.yaml").write_bytes("model: {path: x}\ndata: {dataset: reverse}\n".encode("utf-8-sig"))
    assert load_config(tmp_path / "bom.yaml").data.dataset == "reverse"


@pytest.mark.parametrize("section, key, value", [
    ("optim", "lr", float("nan")), ("optim", "eps", float("inf")), ("generation", "top_p", float("nan")),
    ("ppo", "gamma", float("nan")), ("ppo", "reward_clip", float("inf")), ("sft", "epochs", float("inf")),
    ("train", "updates", True), ("generation", "max_new_tokens", False), ("ppo", "clip_range", True),
])
def test_non_finite_numbers_and_booleans_for_numbers_are_refused(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*(finite number|not a boolean)"):
        validate_config({**minimal(), section: {key: value}})


def test_config_check_of_a_bad_config_exits_2(tmp_path, capsys):
    path = write_yaml(tmp_path / "run.yaml", {**minimal(), "ppo": {"epochs": -1}})
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppo-core: error: ") and "ppo.epochs" in err and str(path) in err


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PPO_CORE_")}
    return subprocess.Popen([sys.executable, "-m", "ppo_core.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@dataclass
class CliRun:
    result: subprocess.CompletedProcess
    config: Path
    run_dir: Optional[Path] = None


@pytest.fixture(scope="module")
def train_failures(tmp_path_factory, request) -> dict[str, CliRun]:
    """`python -m ppo_core.cli train` on each broken setup, as a user runs it; the processes run side by side."""
    root = tmp_path_factory.mktemp("cli")
    bad = write_yaml(root / "bad.yaml", {**minimal(), "ppo": {"rollout_batch_size": 10, "minibatch_size": 4}})
    broken = root / "broken.yaml"
    broken.write_text("model: {path: m\nrewards: [\n", encoding="utf-8")
    missing = root / "missing.yaml"
    runs = {"invalid": bad, "missing": missing, "broken-yaml": broken}
    started = {name: start_cli("train", str(path), cwd=root) for name, path in runs.items()}

    # a valid config whose run directory already holds a run (the tiny model is built while those run)
    model_dir = request.getfixturevalue("tiny_model_dir")
    run_dir = root / "runs" / "first"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"update": 1}\n', encoding="utf-8")
    config = {"model": {"path": str(model_dir), "device": "cpu"}, "data": {"dataset": "reverse"},
              "rewards": [{"name": "exact_match"}],
              "ppo": {"rollout_batch_size": 2, "minibatch_size": 2, "epochs": 1},
              "generation": {"max_new_tokens": 4}, "train": {"updates": 1, "output_dir": str(run_dir)}}
    runs["existing-run-dir"] = write_yaml(root / "run.yaml", config)
    started["existing-run-dir"] = start_cli("train", str(runs["existing-run-dir"]), cwd=root)
    return {name: CliRun(finish(process), runs[name], run_dir if name == "existing-run-dir" else None)
            for name, process in started.items()}


def assert_user_error(result: subprocess.CompletedProcess, *texts: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("ppo-core: error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in texts:
        assert text in result.stderr, f"{text!r} missing from: {result.stderr}"


def test_train_with_an_invalid_config_exits_2_naming_the_field(train_failures):
    run = train_failures["invalid"]
    assert_user_error(run.result, str(run.config), "ppo.minibatch_size", "must divide rollout_batch_size (10)")


def test_train_with_a_missing_config_exits_2(train_failures):
    run = train_failures["missing"]
    assert_user_error(run.result, str(run.config), "cannot read")


def test_train_with_invalid_yaml_exits_2(train_failures):
    run = train_failures["broken-yaml"]
    assert_user_error(run.result, str(run.config), "not valid YAML")


def test_train_into_an_existing_run_dir_exits_2(train_failures):
    run = train_failures["existing-run-dir"]
    assert_user_error(run.result, "train.output_dir", str(run.run_dir), "--resume", "--overwrite")
    assert [p.name for p in run.run_dir.iterdir()] == ["metrics.jsonl"]  # untouched
    assert (run.run_dir / "metrics.jsonl").read_text(encoding="utf-8") == '{"update": 1}\n'
