"""What every training loop shares: stop requests (SIGINT/SIGTERM at a safe point) and the run directory."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from ..config import RunConfig, save_config
from . import checkpoints as ckpt
from .metrics import METRICS_FILE, MetricsLog
from .rundir import RunDirectory

CONFIG_FILE = "config.yaml"


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was written at the last safe point."""

    def __init__(self, signal_name: str, checkpoint: Path, update: int):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.update = update


@contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag that the loop checks between updates (a safe point)."""
    received: list[str] = []

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
    intact checkpoint is used, and a damaged newer one is named in one warning line.
    """
    ckpt.remove_stale_partials(run_dir.work)
    latest = ckpt.latest_checkpoint(run_dir.work, warn=lambda line: print(line, file=sys.stderr)) if resume else None
    metrics_lines = load(latest) if latest is not None else 0
    save_config(config, run_dir.work / CONFIG_FILE)
    return MetricsLog(run_dir.work / METRICS_FILE, keep_lines=metrics_lines)
