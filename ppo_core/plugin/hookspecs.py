"""The plugin contract: the hooks a ppo-core plugin may implement.

A plugin is a module (or object) registered under the entry-point group ``ppo_core``::

    [project.entry-points.ppo_core]
    my_rewards = "my_package.rewards"

and implements one or more of the hooks below, decorated with :data:`ppo_core.hookimpl`.

The ``register_*`` hooks fill the registry once, when the plugins load. The run hooks (``on_*``) are called by
the run loop of ``train`` and ``sft`` on every registered plugin and callback (``ppo_core.train(...,
callbacks=[...])``) and on the configured loggers (``train.loggers``); an implementation may take any subset of
a hook's arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import pluggy

if TYPE_CHECKING:
    from .callbacks import RunInfo

PROJECT_NAME = "ppo_core"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_rewards(register: Callable[[type], None]) -> None:
    """Register reward classes.

    :param register: call ``register(RewardClass)`` once for each reward the plugin provides.
        A reward class subclasses :class:`ppo_core.Reward`: it has a unique ``name``, a pydantic
        ``Options`` model validated from the run config's ``options:``, and ``__call__(samples)``
        returning one float (or ``None`` to abstain) per sample. ppo-core stamps each reward with the
        plugin that registered it and rejects a name that another plugin already registered.
    """


@hookspec
def register_datasets(register: Callable[[type], None]) -> None:
    """Register dataset classes.

    :param register: call ``register(DatasetClass)`` once for each dataset the plugin provides.
        A dataset class subclasses :class:`ppo_core.Dataset`: it has a unique ``name``, a pydantic
        ``Options`` model, and ``records(split)`` yielding validated :class:`ppo_core.Record` objects
        for the ``"train"`` or ``"eval"`` split.
    """


@hookspec
def register_environments(register: Callable[[type], None]) -> None:
    """Register environment classes (multi-turn episodes; docs/design.md, "Environments").

    :param register: call ``register(EnvironmentClass)`` once for each environment the plugin provides.
        An environment class subclasses :class:`ppo_core.Environment`: it has a unique ``name``, a pydantic
        ``Options`` model validated from the config's ``environment.options``, and batched
        ``reset(records) -> EnvReset`` and ``step(states, responses) -> EnvStep``; optionally its own
        ``records(split)`` like a dataset's. States are plain (JSON-serialisable) data.
    """


@hookspec
def register_loggers(register: Callable[[type], None]) -> None:
    """Register logger classes (chosen by the run config's ``train.loggers``).

    :param register: call ``register(LoggerClass)`` once for each logger the plugin provides.
        A logger class subclasses :class:`ppo_core.Logger`: it has a unique ``name``, a pydantic
        ``Options`` model validated from the config's ``options:``, and ``start(run)``, ``log(metrics,
        step)`` and ``finish(final_model)``, which the base class calls from the run hooks below.
    """


@hookspec
def on_run_start(run: "RunInfo") -> None:
    """A run begins: its directory is claimed, its config saved, its checkpoint (if resuming) loaded.

    :param run: the :class:`ppo_core.RunInfo` of the run: command, run directory, resolved config, planned
        total; ``run.request_stop(reason)`` asks for a clean stop after the current update.
    """


@hookspec
def on_update_end(run: "RunInfo", step: int, metrics: dict) -> None:
    """A metrics line was written to metrics.jsonl (after every PPO update; every ``sft.log_every`` SFT steps).

    :param run: the :class:`ppo_core.RunInfo` of the run; ``run.request_stop(reason)`` ends it cleanly.
    :param step: the number of updates (PPO) or optimizer steps (SFT) done so far.
    :param metrics: the metrics line as written, ``eval/*`` numbers included on an evaluation step.
    """


@hookspec
def on_checkpoint(run: "RunInfo", step: int, path: Path) -> None:
    """A checkpoint was written atomically (``train.save_every``, ``sft.save_every``, or a stop request).

    :param run: the :class:`ppo_core.RunInfo` of the run that wrote the checkpoint.
    :param step: the number of updates or steps the checkpoint holds.
    :param path: the checkpoint's directory (``<run dir>/checkpoints/update-<step>``).
    """


@hookspec
def on_eval(run: "RunInfo", step: int, metrics: dict) -> None:
    """The held-out split was evaluated (``train.eval_every``, ``sft.eval_every``), before the line is written.

    :param run: the :class:`ppo_core.RunInfo` of the run; ``run.request_stop(reason)`` ends it cleanly.
    :param step: the number of updates or steps done when the evaluation ran.
    :param metrics: the evaluation's numbers, every key starting with ``eval/``.
    """


@hookspec
def on_run_end(run: "RunInfo", final_model: Optional[Path]) -> None:
    """The run ended: after its final save, or on a failure or interrupt (then without a final model).

    :param run: the :class:`ppo_core.RunInfo` of the run; ``run.stop_reason`` says whether a callback ended it.
    :param final_model: the directory of the final model, or None when the run failed or was interrupted.
    """
