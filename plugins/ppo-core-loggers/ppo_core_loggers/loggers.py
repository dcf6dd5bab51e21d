"""TensorBoard, Weights & Biases and MLflow as ppo-core loggers.

Each is a :class:`ppo_core.Logger`: ``start`` opens the run (the library is imported then, so a run that does
not choose a logger never imports its library), ``log`` records the finite numbers of a metrics line at its
update (``eval/*`` lines come from the evaluation hook), ``finish`` closes it. A missing library is a one-line
config error naming the extra that installs it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ppo_core import ConfigError, Logger, RunInfo

DISTRIBUTION = "ppo-core-loggers"


def require(module: str, logger: str, extra: str) -> Any:
    """Import ``module`` for ``logger``, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"train.loggers: logger '{logger}' needs {module.split('.')[0]}, which is not installed "
                          f"({error}); pip install '{DISTRIBUTION}[{extra}]'") from None


def flat_config(run: RunInfo) -> dict[str, Any]:
    """The resolved run config as ``section.key`` -> value, list items by index (``rewards.0.name``): what W&B
    and MLflow show as the run's parameters."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        items = list(items)
        if not items:
            flat[key] = value
        for name, item in items:
            walk(item, f"{key}.{name}" if key else str(name))

    walk(run.config.model_dump(mode="json") if hasattr(run.config, "model_dump") else dict(run.config), "")
    return flat


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorBoardOptions(Options):
    log_dir: Optional[str] = Field(None, description="Where the event files go; default <run dir>/tensorboard.")


class TensorBoardLogger(Logger):
    """Scalars into TensorBoard event files (``torch.utils.tensorboard``)."""

    name = "tensorboard"
    Options = TensorBoardOptions

    def start(self, run: RunInfo) -> None:
        require("tensorboard", self.name, "tensorboard")
        writer = require("torch.utils.tensorboard", self.name, "tensorboard").SummaryWriter
        self.writer = writer(log_dir=str(self.options.log_dir or Path(run.run_dir) / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, final_model: Optional[Path]) -> None:
        self.writer.close()


class WandbOptions(Options):
    project: str = Field("ppo-core", description="W&B project.")
    entity: Optional[str] = Field(None, description="W&B team or user; default: the account's default.")
    name: Optional[str] = Field(None, description="Run name; default: W&B's generated one.")
    group: Optional[str] = None
    tags: list[str] = Field(default_factory=list)
    mode: Optional[Literal["online", "offline", "disabled"]] = Field(None, description="Default: WANDB_MODE, "
                                                                     "else online.")
    dir: Optional[str] = Field(None, description="Where W&B keeps its local files; default: the run directory.")


class WandbLogger(Logger):
    """A Weights & Biases run: the config as its config, every metrics line as a history step."""

    name = "wandb"
    Options = WandbOptions

    def start(self, run: RunInfo) -> None:
        wandb = require("wandb", self.name, "wandb")
        o = self.options
        self.run = wandb.init(project=o.project, entity=o.entity, name=o.name, group=o.group, tags=o.tags or None,
                              mode=o.mode, dir=str(o.dir or run.run_dir), config=flat_config(run))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, final_model: Optional[Path]) -> None:
        self.run.finish(exit_code=0 if final_model is not None else 1)


class MLflowOptions(Options):
    tracking_uri: Optional[str] = Field(None, description="Default: MLFLOW_TRACKING_URI, else MLflow's default.")
    experiment: str = Field("ppo-core", description="Experiment name (created when missing).")
    run_name: Optional[str] = None
    tags: dict[str, str] = Field(default_factory=dict)


def group_safe_keys(keys) -> dict[str, str]:
    """MLflow's file store keeps each metric in a file at its key's path, so ``reward/x`` cannot sit beside
    ``reward/x/errors``: a key that also names a group is logged as ``<key>/mean`` (ppo-core's bare family key is
    the family's mean)."""
    keys = list(keys)
    groups = {key.rsplit("/", 1)[0] for key in keys if "/" in key}
    prefixes = {"/".join(group.split("/")[:depth]) for group in groups for depth in range(1, group.count("/") + 2)}
    return {key: f"{key}/mean" if key in prefixes else key for key in keys}


class MLflowLogger(Logger):
    """An MLflow run through ``MlflowClient``: the config as parameters, the metrics with their update as step
    (see :func:`group_safe_keys`)."""

    name = "mlflow"
    Options = MLflowOptions
    BATCH = 100  # MLflow's limit of parameters per log_batch call

    def start(self, run: RunInfo) -> None:
        tracking = require("mlflow.tracking", self.name, "mlflow")
        self.entities = require("mlflow.entities", self.name, "mlflow")
        self.client = tracking.MlflowClient(self.options.tracking_uri)
        experiment = self.client.get_experiment_by_name(self.options.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.options.experiment))
        self.run_id = self.client.create_run(experiment_id, run_name=self.options.run_name,
                                             tags=self.options.tags).info.run_id
        params = [self.entities.Param(key, str(value)) for key, value in flat_config(run).items()]
        for start in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + self.BATCH])

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        names = group_safe_keys(metrics)
        self.client.log_batch(self.run_id, metrics=[self.entities.Metric(names[key], value, now, step)
                                                    for key, value in metrics.items()])

    def finish(self, final_model: Optional[Path]) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if final_model is not None else "FAILED")
