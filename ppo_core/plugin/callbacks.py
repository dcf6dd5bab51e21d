"""Callbacks: objects whose ``@hookimpl`` methods the run loop calls (the run hooks of :mod:`.hookspecs`).

A callback is any object with one or more of ``on_run_start``, ``on_update_end``, ``on_checkpoint``,
``on_eval`` and ``on_run_end`` marked ``@ppo_core.hookimpl``; it is registered on the run's plugin manager, so
an entry-point plugin can implement the same hooks. Each hook gets the :class:`RunInfo` of the run, through
which a callback may ask for a clean stop (:meth:`RunInfo.request_stop`): the run ends after the current update
and saves its final model.

A :class:`Logger` is a callback chosen by the config (``train.loggers``) and registered by a plugin
(``register_loggers``), like a reward: ``name``, ``Options``, and :meth:`Logger.start`, :meth:`Logger.log`,
:meth:`Logger.finish` (the base class turns the hooks into those three calls).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Sequence

import pluggy
from pydantic import BaseModel

from ..errors import PluginError

from .contract import NoOptions, RunContext
from .hookspecs import hookimpl

EVAL_PREFIX = "eval/"
STEP_KEYS = ("update", "step")  # the step a metrics line belongs to: a logger's step, not a metric


@dataclass
class RunInfo:
    """What a callback knows of the run it watches."""

    command: str  # "train" (PPO updates) or "sft" (optimizer steps)
    run_dir: Path  # where the run writes (its config.yaml, metrics.jsonl, checkpoints)
    config: Any  # the resolved RunConfig
    total: int  # planned updates (or steps)
    stop_reason: Optional[str] = None

    def request_stop(self, reason: str) -> None:
        """End the run cleanly after the current update: the final model is saved as after the last one."""
        if self.stop_reason is None:
            self.stop_reason = reason


@dataclass
class RunHooks:
    """Calls the run hooks of a plugin manager's callbacks (none without a manager)."""

    run: RunInfo
    relay: Any = None  # pluggy's HookRelay (manager.hook)

    def _call(self, hook: str, **arguments) -> None:
        if self.relay is not None:
            getattr(self.relay, hook)(run=self.run, **arguments)

    def run_start(self) -> None:
        self._call("on_run_start")

    def update_end(self, step: int, metrics: dict) -> None:
        self._call("on_update_end", step=step, metrics=dict(metrics))

    def checkpoint(self, step: int, path: Path) -> None:
        self._call("on_checkpoint", step=step, path=path)

    def eval_done(self, step: int, metrics: dict) -> None:
        self._call("on_eval", step=step, metrics=dict(metrics))

    def run_end(self, final_model: Optional[Path]) -> None:
        self._call("on_run_end", final_model=final_model)

    @property
    def stop_reason(self) -> Optional[str]:
        return self.run.stop_reason


def numeric(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics line (what a logger records), without the step key."""
    return {key: float(value) for key, value in metrics.items() if key not in STEP_KEYS
            and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class Logger:
    """Base class of a logger plugin: ``log`` receives every metrics line (``eval/*`` through ``on_eval``).

    Subclasses set ``name`` and ``Options`` and override :meth:`start`, :meth:`log` and :meth:`finish`.
    """

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel, context: RunContext = RunContext()):
        self.options = options
        self.context = context

    def start(self, run: RunInfo) -> None:
        """The run begins (open files, connections)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` (finite numbers only) at ``step``."""

    def finish(self, final_model: Optional[Path]) -> None:
        """The run ended (``final_model`` is None when it failed or was interrupted): flush and close."""

    @hookimpl
    def on_run_start(self, run: RunInfo) -> None:
        self.start(run)

    @hookimpl
    def on_update_end(self, step: int, metrics: dict) -> None:
        self.log({k: v for k, v in numeric(metrics).items() if not k.startswith(EVAL_PREFIX)}, step)

    @hookimpl
    def on_eval(self, step: int, metrics: dict) -> None:
        self.log(numeric(metrics), step)

    @hookimpl
    def on_run_end(self, final_model: Optional[Path]) -> None:
        self.finish(final_model)


@dataclass
class EarlyStopping:
    """Stops the run when ``metric`` has not improved by more than ``min_delta`` for ``patience`` logged lines,
    or (with ``threshold``) as soon as it reaches it. ``mode``: ``max`` (higher is better) or ``min``."""

    metric: str = "reward/mean"
    mode: Literal["max", "min"] = "max"
    patience: Optional[int] = 3
    min_delta: float = 0.0
    threshold: Optional[float] = None
    best: Optional[float] = None
    waited: int = 0
    reasons: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping: mode must be 'max' or 'min', got {self.mode!r}")
        if self.patience is None and self.threshold is None:
            raise ValueError("EarlyStopping: give a patience, a threshold or both")

    def _better(self, value: float, than: float, margin: float) -> bool:
        return value > than + margin if self.mode == "max" else value < than - margin

    def reason(self, value: float) -> Optional[str]:
        """Why the run should stop after a line with ``value`` (None: go on); updates the best value."""
        if self.threshold is not None and (value == self.threshold or self._better(value, self.threshold, 0.0)):
            return f"{self.metric} = {value:.6g} reached the threshold {self.threshold:g}"
        if self.best is None or self._better(value, self.best, self.min_delta):
            self.best, self.waited = value, 0
            return None
        self.waited += 1
        if self.patience is not None and self.waited >= self.patience:
            return (f"{self.metric} did not improve on {self.best:.6g} for {self.waited} logged "
                    f"{'lines' if self.waited > 1 else 'line'}")
        return None

    def _watch(self, run: RunInfo, metrics: dict) -> None:
        value = metrics.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            why = self.reason(float(value))
            if why:
                self.reasons.append(why)
                run.request_stop(f"early stopping: {why}")

    @hookimpl
    def on_update_end(self, run: RunInfo, metrics: dict) -> None:
        if not self.metric.startswith(EVAL_PREFIX):
            self._watch(run, metrics)

    @hookimpl
    def on_eval(self, run: RunInfo, metrics: dict) -> None:
        if self.metric.startswith(EVAL_PREFIX):
            self._watch(run, metrics)


def attach_callbacks(manager, registry, loggers: Sequence[Any], callbacks: Sequence[Any], context: RunContext,
                     source: str = "config") -> list[Any]:
    """Register the ``callbacks`` and the configured loggers (built from the registry) on ``manager``."""
    attached = []
    for index, logger in enumerate(loggers):
        attached.append(registry.build("logger", logger.name, logger.options, context,
                                       where=f"{source}: train.loggers.{index}.options",
                                       name_where=f"{source}: train.loggers.{index}.name"))
    attached += list(callbacks)
    for index, callback in enumerate(attached):
        name = f"callback-{index}-{type(callback).__name__}"
        try:
            manager.register(callback, name=name)
            manager.check_pending()  # a misspelt hook name
        except pluggy.PluginValidationError as error:
            raise PluginError(f"callback {type(callback).__name__}: {' '.join(str(error).split())}") from None
    return attached


def announce_stop(reason: str) -> None:
    print(f"ppo-core: {reason}; stopping after this update", file=sys.stderr)
