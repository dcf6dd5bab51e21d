"""Where a run's numbers go: metrics.jsonl, and a progress bar (tqdm) or plain lines (loggers are plugins)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, TextIO

from ..errors import UserError

METRICS_FILE = "metrics.jsonl"
SUMMARY_KEYS = ("reward/mean", "kl", "entropy", "response/length_mean")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "no value this update"
    return value


class MetricsLog:
    """Appends one JSON object per update; every line is flushed and fsynced before the next update."""

    def __init__(self, path: Path, keep_lines: Optional[int] = None):
        self.path = Path(path)
        if keep_lines is not None:
            truncate_lines(self.path, keep_lines)
        self.lines = count_lines(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.lines += 1

    def close(self) -> None:
        self._file.close()


def count_lines(path: Path) -> int:
    if not Path(path).exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.endswith(b"\n"))


def truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` complete lines (drops updates logged after the checkpoint, and a torn line)."""
    path = Path(path)
    if not path.exists():
        if keep:
            raise UserError(f"{path}: missing, but the checkpoint expects {keep} lines in it")
        return
    offset = 0
    with open(path, "rb") as handle:
        for _ in range(keep):
            line = handle.readline()
            if not line.endswith(b"\n"):
                raise UserError(f"{path}: has fewer than the {keep} lines the checkpoint expects")
            offset += len(line)
    with open(path, "r+b") as handle:
        handle.truncate(offset)
        os.fsync(handle.fileno())


def read_metrics(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class Progress:
    """A tqdm bar on a terminal, a plain line per update otherwise (``mode``: auto, bar, lines, none)."""

    def __init__(self, total: int, mode: str = "auto", stream: Optional[TextIO] = None, label: str = "update",
                 keys: Sequence[str] = SUMMARY_KEYS):
        self.total = total
        self.keys = tuple(keys)
        stream = stream or sys.stderr  # looked up now: a default bound at import would outlive a redirect
        self.stream = stream
        self.label = label
        if mode == "auto":
            mode = "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.started = time.perf_counter()
        self.first: Optional[int] = None
        self.bar = None

    def summary(self, stats: dict) -> str:
        return " ".join(f"{k}={stats[k]:.4g}" for k in self.keys
                        if isinstance(stats.get(k), (int, float)) and stats.get(k) is not None)

    def update(self, done: int, stats: dict) -> None:
        if self.mode == "none":
            return
        if self.first is None:
            self.first = done - 1
        if self.mode == "bar":
            self._bar(done).set_postfix_str(self.summary(stats), refresh=False)
            self.bar.update(done - self.bar.n)
            return
        rate = (time.perf_counter() - self.started) / max(done - self.first, 1)
        self.stream.write(f"{self.label} {done}/{self.total} ({rate:.2f}s/it) {self.summary(stats)}\n")
        self.stream.flush()

    def _bar(self, done: int):
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.first, desc=self.label, unit=self.label,
                            file=self.stream, dynamic_ncols=True)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def timed(times: dict[str, float], key: str) -> Iterator[None]:
    """Adds the block's wall time in seconds to ``times[key]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        times[key] = times.get(key, 0.0) + (time.perf_counter() - started)


def accumulate(totals: dict[str, float], stats: dict[str, float], weight: float = 1.0) -> None:
    """totals[key] += weight * stats[key] for every key of ``stats``."""
    for key, value in stats.items():
        totals[key] = totals.get(key, 0.0) + value * weight
