"""Run directories are owned and locked.

- A marker file says a folder is a ppo-core run (runs written before the marker existed are recognised by their
  config.yaml). ``--overwrite`` replaces only such a folder and only while it holds nothing but a run's own files;
  never the current directory, one of its ancestors, the home directory or the filesystem root.
- An exclusive ``flock`` on a lock file inside the run (held by the kernel, so a SIGKILL releases it) makes a
  second ``train``, ``sft``, ``--resume`` or ``--overwrite`` on a live run fail at once, naming the holder's PID.
- ``--overwrite`` never empties the old run first: the new run writes into a hidden staging sibling and is swapped
  into place only once its first checkpoint (or its final output) is safely on disk. A failure or a kill before
  that leaves the old run as it was; the staging folder is removed then or by the next start.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .checkpoints import fsync_dir

MARKER_FILE = ".ppo-core-run"
LOCK_FILE = ".ppo-core.lock"
STAGING = ".staging-"
#: what a run directory holds; --overwrite refuses a folder with anything else in it (the user's own files)
RUN_ENTRIES = {"config.yaml", "metrics.jsonl", "checkpoints", "final", "tensorboard", "report", "eval.json",
                      "eval_samples.jsonl", "wandb", MARKER_FILE, LOCK_FILE}


class RunDirError(UserError):
    """The run directory cannot be used as asked (held by another run, not a run, not writable)."""


def protected_reason(path: Path) -> Optional[str]:
    """Why ``path`` must never be replaced, or None."""
    path = path.resolve()
    cwd = Path.cwd().resolve()
    if path == Path(path.anchor):
        return "it is the filesystem root"
    if path == Path.home().resolve():
        return "it is the home directory"
    if path == cwd:
        return "it is the current directory"
    if path in cwd.parents:
        return "it holds the current directory"
    return None


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def holds_nothing_written(path: Path) -> bool:
    """Empty, or holding only what claiming it wrote (marker, lock): a run that stopped before writing anything,
    e.g. on a config mistake found while loading. A new run may start there without --overwrite."""
    return path.is_dir() and all(child.name in (MARKER_FILE, LOCK_FILE) for child in path.iterdir())


class DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``directory/.ppo-core.lock`` holding the owner's PID."""

    def __init__(self, directory: Path, field_name: str):
        self.path = directory / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(self.fd)
            os.close(self.fd)
            raise RunDirError(f"{field_name}: {directory} is in use by another ppo-core process"
                              f"{f' (PID {holder})' if holder else ''}; wait for it to end or stop it first") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _read_pid(fd: int) -> Optional[int]:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _try_lock(directory: Path) -> Optional[DirectoryLock]:
    try:
        return DirectoryLock(directory, "")
    except (RunDirError, OSError):
        return None


def remove_stale_staging(final: Path) -> None:
    """Staging folders of earlier ``--overwrite`` starts that ended before their swap (nobody holds their lock)."""
    for sibling in final.parent.glob(f".{final.name}{STAGING}*"):
        lock = _try_lock(sibling) if sibling.is_dir() else None
        if lock is not None:
            shutil.rmtree(sibling, ignore_errors=True)
            lock.release()


class RunDirectory:
    """A run directory this process owns. ``work`` is where the run writes: the run directory itself, or, for
    ``--overwrite`` of an existing run, a staging sibling until :meth:`publish` swaps it into place."""

    def __init__(self, final: Path, resume: bool, overwrite: bool, field_name: str):
        self.final = final
        self.field_name = field_name
        self.locks: list[DirectoryLock] = []
        self.staging: Optional[Path] = None
        replacing = overwrite and not resume and final.is_dir() and not holds_nothing_written(final)
        try:
            final.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(f"{field_name}: cannot create {final}: {error.strerror or error}") from None
        _check_writable(final, field_name)
        self.locks.append(DirectoryLock(final, field_name))
        remove_stale_staging(final)
        if replacing:
            self.staging = final.parent / f".{final.name}{STAGING}{os.getpid()}"
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
            self.locks.append(DirectoryLock(self.staging, field_name))
        marker = self.work / MARKER_FILE
        if not marker.exists():
            marker.write_text(json.dumps({"created": time.time()}) + "\n", encoding="utf-8")

    @property
    def work(self) -> Path:
        return self.staging or self.final

    def publish(self, written: Path) -> Path:
        """``written`` (a checkpoint or the final output) is safely on disk: from now on the run directory is this
        run's. Swaps the staging folder into place if there is one; returns where ``written`` now lives."""
        if self.staging is None:
            return Path(written)
        moved = self.final / Path(written).relative_to(self.staging)
        _exchange(self.staging, self.final)  # the old run now sits at the staging path
        old, self.staging = self.staging, None
        self.locks[0].release()  # the old run's lock file went with it
        self.locks = self.locks[1:]
        shutil.rmtree(old, ignore_errors=True)
        return moved

    def close(self) -> None:
        """Release the locks; a staging folder that was never published is removed (the old run stays)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        for lock in self.locks:
            lock.release()
        self.locks = []

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, field_name: str = "train.output_dir") -> Path:
    """Refuse a directory the command may not use (nothing is written); returns it as an absolute path."""
    run_dir = Path(run_dir).expanduser().absolute()
    _check_usable_path(run_dir, field_name)
    if resume and overwrite:
        raise RunDirError(f"{field_name}: --resume continues {run_dir} and --overwrite replaces it; pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{field_name}: {run_dir} is a file, not a directory")
    if not run_dir.is_dir() or holds_nothing_written(run_dir):
        return run_dir  # a new run (--resume of a run stopped before it wrote anything starts it afresh)
    if not (resume or overwrite):
        raise RunDirError(f"{field_name}: {run_dir} already holds a run; pass --resume to continue it or "
                          f"--overwrite to start over")
    if overwrite:
        check_replaceable(run_dir, RUN_ENTRIES, field_name)
        if not ((run_dir / MARKER_FILE).is_file() or (run_dir / "config.yaml").is_file()):
            raise RunDirError(f"{field_name}: refusing to --overwrite {run_dir}: it is not a ppo-core run")
    return run_dir


def check_replaceable(directory: Path, allowed_entries: Optional[set[str]], field_name: str) -> None:
    """Refuse to replace a protected directory (cwd, its ancestors, home, root) or, when ``allowed_entries`` is
    given, one holding anything else (the user's own files)."""
    directory = Path(directory).absolute()
    reason = protected_reason(directory)
    if reason:
        raise RunDirError(f"{field_name}: refusing to --overwrite {directory}: {reason}")
    if allowed_entries is not None:
        others = sorted(child.name for child in directory.iterdir() if child.name not in allowed_entries)
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise RunDirError(f"{field_name}: refusing to --overwrite {directory}: it holds files that are not "
                              f"ppo-core's ({shown})")


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool, field_name: str = "train.output_dir") -> RunDirectory:
    """:func:`check_run_dir`, then lock the directory and, for ``--overwrite``, open a staging folder."""
    existing = Path(run_dir).expanduser().absolute()
    _check_usable_path(existing, field_name)
    if (existing / LOCK_FILE).is_file():
        DirectoryLock(existing, field_name).release()  # a live run is named first, with its PID
    return RunDirectory(check_run_dir(run_dir, resume, overwrite, field_name), resume, overwrite, field_name)


def _check_usable_path(path: Path, field_name: str) -> None:
    """A path the file system refuses outright (a name too long, a loop of links) is named at once."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return  # a new directory (a file in the way is named when it is created)
    except OSError as error:
        raise RunDirError(f"{field_name}: cannot use {path}: {error.strerror or error}") from None


def _check_writable(directory: Path, field_name: str) -> None:
    probe = directory / f".ppo-core-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunDirError(f"{field_name}: cannot write to {directory}: {error.strerror or error}") from None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere two renames."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            fsync_dir(b.parent)
            return
        if ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
    aside = a.parent / f"{a.name}.old"
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)
    fsync_dir(b.parent)
