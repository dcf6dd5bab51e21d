"""The Python API: ``ppo_core.train``, ``sft``, ``evaluate`` and ``train_reward``; the CLI is a thin layer over it.

Each takes its config as a :class:`RunConfig` (a :class:`TrainRewardConfig` for ``train_reward``), a mapping of
sections or a path to a YAML/JSON file, with optional ``overrides`` in the ``--set`` form (``"ppo.epochs=2"``).

``rewards=`` adds rewards from this process: plain functions (``f(samples)`` or TRL's ``f(prompts, completions,
**fields)``, see :mod:`ppo_core.plugin.callables`), functions marked ``@ppo_core.reward(...)`` or
:class:`Reward` subclasses, as a list or a mapping name -> function. ``datasets=`` adds :class:`Dataset`
subclasses. Both are registered as the in-process plugin ``python`` (``plugins.allow``, when set, must name it),
so they are validated, isolated and logged exactly like an installed plugin's. A reward the config does not
list joins ``rewards:`` with the defaults (weight 1, ``isolation: process``). ``callbacks=`` are objects with
``@ppo_core.hookimpl`` run hooks (:mod:`ppo_core.plugin.hookspecs`).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ValidationError

from .config import RewardConfig, RunConfig, apply_override, load_config
from .config.train_reward import TrainRewardConfig, load_train_reward_config
from .errors import ConfigError, PluginError, format_validation_error
from .plugin.callables import FunctionReward, check_importable, reward_class
from .plugin.callbacks import RunInfo
from .plugin.contract import Dataset, Reward
from .plugin.hookspecs import hookimpl
from .runtime.metrics import METRICS_FILE, read_metrics

IN_PROCESS_PLUGIN = "python"
ConfigInput = Union[RunConfig, TrainRewardConfig, Mapping[str, Any], str, Path]


@dataclass
class TrainResult:
    """What ``train`` and ``sft`` return."""

    final_model: Path  # the final model's directory (transformers loads it)
    run_dir: Path  # config.yaml, metrics.jsonl, checkpoints, final/
    metrics: list[dict]  # metrics.jsonl, one dict per logged update (or step)
    stopped_early: Optional[str] = None  # a callback's stop request, when one ended the run


def resolve_config(config: ConfigInput, overrides: Sequence[str] = (), kind: type[BaseModel] = RunConfig,
                   source: Optional[str] = None) -> tuple[Any, str]:
    """``config`` as a validated ``kind``, with the ``--set``-style ``overrides`` applied; and how errors name it."""
    if isinstance(config, (str, Path)):
        load = load_config if kind is RunConfig else load_train_reward_config
        return load(config, list(overrides)), source or str(config)
    if isinstance(config, kind):
        if not overrides:
            return config, source or "config"
        data = config.model_dump(mode="json")
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    else:
        raise ConfigError(f"config: expected a {kind.__name__}, a mapping of sections or a path to a YAML/JSON "
                          f"file, got {type(config).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    source = source or "config" + (f" (with --set {', '.join(overrides)})" if overrides else "")
    try:
        return kind.model_validate(data), source
    except ValidationError as error:
        raise ConfigError(f"{source}: {format_validation_error(error)}") from None


# ---- rewards and datasets from this process ----------------------------------------------------------------
class InProcessPlugin:
    """The rewards and datasets given to the API, as one plugin named ``python``."""

    def __init__(self, rewards: Sequence[type], datasets: Sequence[type]):
        self.rewards, self.datasets = list(rewards), list(datasets)

    @hookimpl
    def register_rewards(self, register: Callable[[type], None]) -> None:
        for cls in self.rewards:
            register(cls)

    @hookimpl
    def register_datasets(self, register: Callable[[type], None]) -> None:
        for cls in self.datasets:
            register(cls)


def _named_items(given: Any) -> list[tuple[Optional[str], Any]]:
    if given is None:
        return []
    if isinstance(given, Mapping):
        return list(given.items())
    if isinstance(given, (list, tuple)):
        return [(None, item) for item in given]
    return [(None, given)]


def _keeps_its_name(key: Optional[str], cls: type, kind: str) -> type:
    if key is not None and key != getattr(cls, "name", None):
        raise PluginError(f"{kind}s: the key {key!r} names {kind} class {cls.__name__}, whose name is "
                          f"{getattr(cls, 'name', None)!r}; a {kind.capitalize()} class keeps its own name")
    return cls


def reward_classes(rewards: Any) -> list[type]:
    """``rewards=`` as Reward classes: functions wrapped (:func:`reward_class`), classes as they are."""
    classes = []
    for name, item in _named_items(rewards):
        if isinstance(item, type) and issubclass(item, Reward):
            classes.append(_keeps_its_name(name, item, "reward"))
        elif callable(item) and not isinstance(item, type):
            classes.append(reward_class(item, name))
        else:
            raise PluginError(f"rewards: {item!r} is neither a function nor a ppo_core.Reward subclass")
    return classes


def dataset_classes(datasets: Any) -> list[type]:
    classes = []
    for name, item in _named_items(datasets):
        if not (isinstance(item, type) and issubclass(item, Dataset)):
            raise PluginError(f"datasets: {item!r} is not a ppo_core.Dataset subclass")
        classes.append(_keeps_its_name(name, item, "dataset"))
    return classes


def with_in_process_plugin(config: RunConfig, rewards: Any, datasets: Any, plugins: Iterable = ()
                           ) -> tuple[RunConfig, list]:
    """The config with every API reward listed, and the extra plugins (``plugins`` + ``python``) to load.

    A function a worker process cannot import (a lambda, a nested or notebook function) runs in this process
    (``isolation: none``, one warning line) unless the config asks for ``isolation: process`` explicitly: then
    the run stops with a one-line error saying why."""
    rewards, datasets = reward_classes(rewards), dataset_classes(datasets)
    extra = list(plugins)
    if not rewards and not datasets:
        return config, extra
    functions = {cls.name: cls for cls in rewards if issubclass(cls, FunctionReward)}
    listed = {reward.name for reward in config.rewards}
    terms = [*config.rewards, *(RewardConfig(name=cls.name) for cls in rewards if cls.name not in listed)]
    terms = [_isolation_for(term, functions[term.name]) if term.name in functions else term for term in terms]
    config = config.model_copy(update={"rewards": terms})
    return config, [*extra, (IN_PROCESS_PLUGIN, InProcessPlugin(rewards, datasets))]


def _isolation_for(term: RewardConfig, cls: type[FunctionReward]) -> RewardConfig:
    if term.isolation != "process":
        return term
    try:
        check_importable(cls.function, cls.name)
    except PluginError as error:
        if "isolation" in term.model_fields_set:  # asked for explicitly: no silent downgrade
            raise
        print(f"ppo-core: warning: {error}; it runs in this process instead (isolation: none)", file=sys.stderr)
        return term.model_copy(update={"isolation": "none"})
    return term


class RunRecorder:
    """A callback that keeps the run's :class:`RunInfo` (how the API learns why a run stopped)."""

    run: Optional[RunInfo] = None

    @hookimpl
    def on_run_start(self, run: RunInfo) -> None:
        self.run = run


# ---- the entry functions -----------------------------------------------------------------------------------
def _run(command: Callable[..., Path], config: ConfigInput, rewards: Any, datasets: Any, callbacks: Sequence,
         overrides: Sequence[str], plugins: Iterable, source: Optional[str], **options) -> TrainResult:
    """A `train` or `sft` run from the API: resolve the config, add this process's plugin, keep the RunInfo."""
    run_config, source = resolve_config(config, overrides, source=source)
    run_config, extra = with_in_process_plugin(run_config, rewards, datasets, plugins)
    recorder = RunRecorder()
    final = command(run_config, extra_plugins=extra, source=source, callbacks=[*callbacks, recorder], **options)
    run_dir = Path(final).parent
    return TrainResult(Path(final), run_dir, read_metrics(run_dir / METRICS_FILE),
                       recorder.run.stop_reason if recorder.run else None)


def train(config: ConfigInput, *, rewards: Any = None, datasets: Any = None, callbacks: Sequence = (),
          overrides: Sequence[str] = (), resume: bool = False, overwrite: bool = False, plugins: Iterable = (),
          source: Optional[str] = None, progress_stream=None) -> TrainResult:
    """Run PPO as ``config`` says (see the module docstring for the arguments); returns a :class:`TrainResult`.

    ``plugins``: more in-process plugins as (name, module or object) pairs. A SIGINT/SIGTERM raises
    :class:`ppo_core.runtime.loop.Interrupted` after a checkpoint (``resume=True`` continues)."""
    from .commands.train import train as run_ppo

    return _run(run_ppo, config, rewards, datasets, callbacks, overrides, plugins, source, resume=resume,
                overwrite=overwrite, progress_stream=progress_stream)


def sft(config: ConfigInput, *, rewards: Any = None, datasets: Any = None, callbacks: Sequence = (),
        overrides: Sequence[str] = (), resume: bool = False, overwrite: bool = False, plugins: Iterable = (),
        source: Optional[str] = None, progress_stream=None) -> TrainResult:
    """Supervised fine-tuning on the dataset's solutions; arguments and result as :func:`train`."""
    from .commands.sft import train_sft

    return _run(train_sft, config, rewards, datasets, callbacks, overrides, plugins, source, resume=resume,
                overwrite=overwrite, progress_stream=progress_stream)


def evaluate(config: ConfigInput, model: Union[str, Path], *, split: str = "eval", samples: Optional[int] = None,
             out: Union[str, Path, None] = None, numbers_out: Union[str, Path, None] = None,
             seed: Optional[int] = None, rewards: Any = None, datasets: Any = None, overrides: Sequence[str] = (),
             plugins: Iterable = (), source: Optional[str] = None) -> dict[str, Any]:
    """Score the model in ``model`` on ``split`` greedy and sampled with the configured rewards; returns the
    numbers (``ppo_core.commands.evaluate.evaluate_model``), and writes the samples to ``out`` if given."""
    from .commands.evaluate import evaluate_model

    run_config, source = resolve_config(config, overrides, source=source)
    run_config, extra = with_in_process_plugin(run_config, rewards, datasets, plugins)
    return evaluate_model(run_config, model, split=split, samples=samples, out=out, numbers_out=numbers_out,
                          seed=seed, extra_plugins=extra, source=source)


def train_reward(config: ConfigInput, *, overrides: Sequence[str] = (), overwrite: bool = False,
                 progress: Optional[Callable[[dict], None]] = None, source: Optional[str] = None):
    """Train, normalise and save a reward model (a train-reward config); returns where it saved and the
    metrics (``ppo_core.commands.train_reward.TrainRewardOutcome``). ``progress`` gets each epoch's numbers."""
    from .commands.train_reward import run_train_reward

    reward_config, source = resolve_config(config, overrides, TrainRewardConfig, source)
    return run_train_reward(reward_config, overwrite=overwrite, source=source, progress=progress)
