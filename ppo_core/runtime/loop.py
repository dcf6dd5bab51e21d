"""The run loop `train` and `sft` share, and the pieces `train-reward` uses too.

:class:`RunLoop` runs a step callable until the planned count, and around it does what every run does: stop
requests (SIGINT/SIGTERM take effect at a safe point, after a checkpoint; a callback's stop request at the same
point ends the run with its final save), the non-finite guard, metrics lines (metrics.jsonl, the progress line,
the run hooks that callbacks and loggers implement), the checkpoint cadence and the final atomic save. The step
itself (a PPO update, an SFT optimizer step) holds no logging or checkpoint code.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from ..config import RunConfig, save_config
from ..errors import TrainingError
from ..plugin.callbacks import RunHooks, announce_stop
from . import checkpoints as ckpt
from .metrics import METRICS_FILE, MetricsLog, Progress
from .rundir import RunDirectory

# a step's statistics carry this key (true) when it had a non-finite loss or gradient and was skipped
NONFINITE = "nonfinite"

CONFIG_FILE = "config.yaml"
FINAL_DIR = "final"


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was written at the last safe point."""

    def __init__(self, signal_name: str, checkpoint: Path, update: int):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.update = update


@contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag that the loop checks between updates (a safe point).

    Signal handlers belong to the main thread: elsewhere nothing is installed and the flag never rises."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, _frame):
        if received:  # a second signal: stop now
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def open_run_dir(run_dir: RunDirectory, config: RunConfig, resume: bool, load) -> MetricsLog:
    """Resume the run directory (or start in it), save the resolved config, open metrics.jsonl.

    ``load(checkpoint_path)`` restores a checkpoint and returns how many metrics lines belong to it; the newest
    intact checkpoint is used, and damaged newer ones are named in one warning line.
    """
    ckpt.remove_stale_partials(run_dir.work)
    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    latest = ckpt.latest_checkpoint(run_dir.work, warn=warn) if resume else None
    metrics_lines = load(latest) if latest is not None else 0
    ckpt.write_file_atomically(run_dir.work / CONFIG_FILE, lambda tmp: save_config(config, tmp))
    return MetricsLog(run_dir.work / METRICS_FILE, keep_lines=metrics_lines)


# ---- the non-finite guard ------------------------------------------------------------------------------
class NonFiniteError(TrainingError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts steps in a row with a non-finite loss or gradient; the ``limit``-th one stops the run.

    ``where`` prefixes the message (``"sft: "``), ``unit`` names what was counted, ``advice`` ends it.
    """

    def __init__(self, limit: int, where: str = "", unit: str = "optimizer steps", advice: str = ""):
        self.limit = limit
        self.where = where
        self.unit = unit
        self.advice = advice
        self.in_a_row = 0

    def check(self, loss: float, grad_norm: float, at: str = "") -> bool:
        """True for a finite step; False for one to skip (see :meth:`count`). ``at`` says which step it was."""
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        return self.count(finite, f"loss {loss}, grad norm {grad_norm}{', ' + at if at else ''}")

    def count(self, finite: bool, detail: str) -> bool:
        """A finite step restarts the count and returns True; a non-finite one returns False, and the
        ``limit``-th in a row raises :class:`NonFiniteError` with ``detail`` (the last step's numbers)."""
        if finite:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteError(f"{self.where}{self.in_a_row} {self.unit} in a row had a non-finite loss or "
                                 f"gradient ({detail}); {self.advice}")
        return False


# ---- the run loop --------------------------------------------------------------------------------------
class MetricsWindow(Protocol):
    """Folds the statistics of the steps since the last metrics line into the next one."""

    def add(self, stats: dict[str, float], elapsed: float) -> None: ...

    def line(self, done: int) -> dict:
        """The metrics line after ``done`` steps; the next window starts empty."""


@dataclass
class RunLoop:
    """Steps from ``start`` to ``total``, logging, checkpointing and stopping as configured.

    With a ``guard``, a step whose statistics say :data:`NONFINITE` counts for it and is otherwise forgotten:
    nothing is counted, logged or saved for it. A checkpoint closes the metrics window, so a resumed run writes exactly
    the lines the uninterrupted one does.
    """

    total: int
    step: Callable[[], dict[str, float]]
    window: MetricsWindow
    log: MetricsLog
    progress: Progress
    save_checkpoint: Callable[[Path, int, int], Path]  # (run dir, steps done, metrics lines) -> checkpoint dir
    directory: RunDirectory  # where the run writes; published (swapped into place) once something is saved
    write_final: Callable[[Path], None]  # writes the final model into the (temporary) directory it is given
    guard: Optional[NonFiniteGuard] = None  # None: the step guards its own optimizer steps (PPO's engine)
    save_every: int = 0
    log_every: int = 1
    eval_every: int = 0
    evaluate: Callable[[], dict[str, float]] = dict  # statistics added to the line of an evaluation step
    stop_when: Callable[[dict], bool] = lambda line: False  # on an evaluation's line: true ends the run there
    hooks: Optional[RunHooks] = None  # the callbacks' and loggers' run hooks
    agree: Callable[[bool], bool] = bool  # data parallel: a stop on any rank is a stop on every rank

    def run(self, start: int) -> Path:
        """Run to ``total`` (or a callback's stop request) and save the final model atomically; returns its
        directory.

        A SIGINT/SIGTERM raises :class:`Interrupted` after the checkpoint of the step it arrived in."""
        done = start
        final = None
        self.progress.first = start  # time per step counts from here (lines need not come every step)
        try:
            self._hook("run_start")
            with stop_requests() as stop:
                while done < self.total:
                    started = time.perf_counter()
                    stats = self.step()
                    elapsed = time.perf_counter() - started
                    finite = not stats.get(NONFINITE)
                    detail = f"loss {stats.get('loss')}, grad norm {stats.get('grad_norm')}"
                    if self.guard and not self.guard.count(finite, detail):
                        continue
                    done += 1
                    self.window.add(stats, elapsed)
                    last = done == self.total
                    evaluate = bool(self.eval_every) and (done % self.eval_every == 0 or last)
                    stopping = self.agree(bool(stop))
                    save = bool(self.save_every and done % self.save_every == 0) or (stopping and not last)
                    if done % self.log_every == 0 or last or evaluate or save:
                        record = self.window.line(done)
                        if evaluate:
                            evaluation = self.evaluate()
                            self._hook("eval_done", done, evaluation)
                            record.update(evaluation)
                        self.log.write(record)
                        self.progress.update(done, record)
                        self._hook("update_end", done, record)
                        if evaluate and self.stop_when(record):
                            break  # this step's model is the final one
                    if save:
                        path = self.directory.publish(self.save_checkpoint(self.directory.work, done, self.log.lines))
                        self._hook("checkpoint", done, path)
                        if stopping:
                            raise Interrupted(stop[0] if stop else "a stop on another rank", path, done)
                    if self.agree(self.hooks is not None and bool(self.hooks.stop_reason)) and not last:
                        self.progress.close()
                        if self.hooks is not None:
                            announce_stop(self.hooks.stop_reason)
                        break
            final = self.directory.publish(ckpt.write_atomically(self.directory.work / FINAL_DIR, self.write_final))
            return final
        finally:
            self.log.close()
            self.progress.close()
            self._hook("run_end", final)

    def _hook(self, name: str, *arguments) -> None:
        if self.hooks is not None:
            getattr(self.hooks, name)(*arguments)
