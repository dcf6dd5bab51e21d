"""The loggers for real: one tiny PPO run logs to TensorBoard (chosen by the old `train.tensorboard: true`), to
Weights & Biases offline and to MLflow with a local file store; each test reads back what its library wrote with
that library's own reader. A test whose library is not installed is skipped."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import ppo_core
from ppo_core.config import RunConfig
from ppo_core.errors import ConfigError
from ppo_core.plugin.callbacks import RunInfo
from ppo_core_loggers import MLflowLogger, WandbLogger
from ppo_core_loggers.loggers import group_safe_keys

UPDATES = 2


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def letters(samples):
    return [sample.response.count("a") / max(len(sample.response), 1) for sample in samples]


@pytest.fixture(scope="module")
def logged_run(tiny_model_dir, tmp_path_factory):
    """A 2-update PPO run (evaluated after update 2) with every logger whose library is installed."""
    root = tmp_path_factory.mktemp("loggers")
    loggers = []
    if installed("wandb"):
        loggers.append({"name": "wandb", "options": {"project": "ppo-core-test", "name": "tiny", "mode": "offline"}})
    if installed("mlflow"):
        loggers.append({"name": "mlflow", "options": {"tracking_uri": (root / "mlruns").as_uri(),
                                                      "experiment": "ppo-core-test", "run_name": "tiny"}})
    config = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"dataset": "reverse", "options": {"size": 64, "eval_size": 4}},
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 8, "epochs": 1},
        "generation": {"max_new_tokens": 6},
        "train": {"updates": UPDATES, "eval_every": UPDATES, "output_dir": str(root / "run"), "progress": "none",
                  "threads": 1, "tensorboard": installed("tensorboard"), "loggers": loggers},
    }
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_SILENT", "true")
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
        result = ppo_core.train(config, rewards=[letters])
    torch.set_num_threads(threads)
    return root, result


def test_tensorboard_event_files_hold_every_update_and_evaluation(logged_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _root, result = logged_run
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    scalars = {event.step: event.value for event in events.Scalars("reward/mean")}
    assert scalars == pytest.approx({line["update"]: line["reward/mean"] for line in result.metrics})
    evaluated = events.Scalars("eval/greedy/reward/letters")
    assert [event.step for event in evaluated] == [UPDATES]
    assert evaluated[0].value == pytest.approx(result.metrics[-1]["eval/greedy/reward/letters"])


def wandb_records(path: Path):
    """The records of a W&B run file: a 7-byte header, then the LevelDB log format (32 KiB blocks of
    checksum/length/type-framed chunks) holding protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, block = 7, b"", 32 * 1024
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_the_config_and_every_update(logged_run):
    pytest.importorskip("wandb")
    _root, result = logged_run
    run_files = sorted((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    history, config = [], {}
    for record in wandb_records(run_files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":  # a key with a slash is kept split, in nested_key
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.append((record.history.step.num, row))
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    steps = {}
    for step, row in history:
        steps.setdefault(step, {}).update(row)
    assert sorted(steps) == [line["update"] for line in result.metrics]
    assert "update" not in steps[1]  # the step is the step, not a metric
    for line in result.metrics:
        assert steps[line["update"]]["reward/mean"] == pytest.approx(line["reward/mean"])
    assert steps[UPDATES]["eval/sampled/exact_match"] == pytest.approx(result.metrics[-1]["eval/sampled/exact_match"])
    assert config["train.updates"] == UPDATES and config["rewards.0.name"] == "letters"


def test_mlflow_run_reads_back_through_its_client(logged_run):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    root, result = logged_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient((root / "mlruns").as_uri())
        experiment = client.get_experiment_by_name("ppo-core-test")
        [run] = client.search_runs([experiment.experiment_id])
        history = client.get_metric_history(run.info.run_id, "reward/mean")
        evaluated = client.get_metric_history(run.info.run_id, "eval/greedy/length_mean")
        letters_mean = client.get_metric_history(run.info.run_id, "reward/letters/mean")  # beside .../errors
    assert {m.step: m.value for m in history} == pytest.approx({l["update"]: l["reward/mean"] for l in result.metrics})
    assert [(m.step, m.value) for m in evaluated] == [(UPDATES, result.metrics[-1]["eval/greedy/length_mean"])]
    assert [m.value for m in letters_mean] == pytest.approx([line["reward/letters"] for line in result.metrics])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["train.updates"] == str(UPDATES) and run.data.params["rewards.0.name"] == "letters"


def test_mlflow_keys_that_name_a_group_get_a_leaf_of_their_own():
    assert group_safe_keys(["reward/x", "reward/x/errors", "reward/mean", "kl", "eval/greedy/reward/x"]) == {
        "reward/x": "reward/x/mean", "reward/x/errors": "reward/x/errors", "reward/mean": "reward/mean",
        "kl": "kl", "eval/greedy/reward/x": "eval/greedy/reward/x"}


@pytest.mark.parametrize("logger, module, extra", [(WandbLogger, "wandb", "wandb"),
                                                    (MLflowLogger, "mlflow.tracking", "mlflow")])
def test_a_missing_library_is_a_one_line_error_naming_the_extra(logger, module, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled module looks like to import
    run = RunInfo("train", tmp_path, RunConfig.model_validate({"model": {"path": "m"}, "data": {"dataset": "d"}}), 1)
    with pytest.raises(ConfigError, match=rf"^train\.loggers: logger '{logger.name}' needs {module.split('.')[0]}, "
                                          rf"which is not installed .*; pip install 'ppo-core-loggers\[{extra}\]'$"):
        logger(logger.Options()).start(run)


def test_the_old_tensorboard_switch_is_the_tensorboard_logger():
    def loggers(train):
        config = RunConfig.model_validate({"model": {"path": "m"}, "data": {"dataset": "d"}, "train": train})
        return [(logger.name, logger.options) for logger in config.train.logger_configs()]

    assert loggers({"tensorboard": True}) == [("tensorboard", {})]
    assert loggers({"tensorboard": True, "loggers": [{"name": "tensorboard", "options": {"log_dir": "x"}}]}) == [
        ("tensorboard", {"log_dir": "x"})]
    assert loggers({"loggers": ["wandb", {"name": "mlflow"}]}) == [("wandb", {}), ("mlflow", {})]
    with pytest.raises(Exception, match="logger\\(s\\) listed twice: wandb"):
        loggers({"loggers": ["wandb", "wandb"]})


def test_importing_mlflow_leaves_the_entry_point_plugins_working():
    """MLflow imports the importlib_metadata backport, whose finder then serves entry points of its own class:
    the plugins must still be loaded (not registered as entry-point objects with no hooks)."""
    pytest.importorskip("mlflow")
    import mlflow.tracking  # noqa: F401
    from ppo_core.plugin.loading import load_plugins

    plugins = load_plugins()
    assert plugins.registry.by_plugin("loggers", "logger") == ["mlflow", "tensorboard", "wandb"]
    assert "reverse" in plugins.registry.by_plugin("datasets", "dataset")
