"""Crash-safe checkpoints: written to a temporary directory, fsynced, then renamed into place.

The same two steps write every output that must never be seen half-written (:func:`write_atomically` for a
directory, :func:`write_file_atomically` for a file): final models, reward models, init-model, JSONL data.

A checkpoint directory that exists under its final name is complete. It holds everything an exact resume
needs: policy and critic weights, optimizer and scheduler, KL controller, reward normalisers, the sampling
generator's state, the data position, the update counter and how many metrics lines were written.
No pickle: weights and RNG state in safetensors, the rest in JSON; the optimizer state goes through
``torch.save`` and is read back with ``weights_only=True``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"


class OutputError(UserError):
    """An output cannot be written (a full disk, a read-only or missing folder)."""


# checkpoints are named by what the run counts: PPO's updates (update-000010), SFT's steps (step-000010)
_NAME = re.compile(r"^(?:update|step)-(\d{6,})$")


def fsync_tree(directory: Path) -> None:
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)``, fsync it, and rename it to ``target`` (replacing whatever is there).

    A crash or an error in ``write`` leaves ``target`` as it was: complete, or absent. A write that fails for
    want of room or permission (a full disk, a read-only folder) is an :class:`OutputError` naming ``target``."""
    target = Path(target)
    with _output_errors(target):
        tmp = _fresh_sibling(target, ".partial-")
        try:
            tmp.mkdir()
            write(tmp)
            fsync_tree(tmp)
            _move_into_place(tmp, target)
        finally:
            _remove(tmp)
    return target


def write_file_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """:func:`write_atomically` for one file: ``write(tmp_file)``, fsync it, rename it to ``target``."""
    target = Path(target)
    with _output_errors(target):
        tmp = _fresh_sibling(target, ".partial-")
        try:
            write(tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            _move_into_place(tmp, target)
        finally:
            _remove(tmp)
    return target


def check_output_location(target: Path, what: str, directory: bool = False) -> None:
    """Refuse, before any work, an output that could not be written: a directory where a file goes (or a file
    where a directory goes), a file where a parent folder should be, a folder this process may not write to.
    Creates nothing; ``what`` starts the message (``eval: --out``)."""
    target = Path(target).absolute()
    with _output_errors(target):
        if target.exists() and target.is_dir() != directory:
            raise OutputError(f"{what}: {target} is a {'file' if directory else 'directory'}, not a "
                              f"{'directory' if directory else 'file'}")
        ancestor = target.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputError(f"{what}: cannot write {target}: {ancestor} is a file, not a folder")
        if not os.access(ancestor, os.W_OK):
            raise OutputError(f"{what}: cannot write {target}: {ancestor} is not writable")


@contextmanager
def _output_errors(target: Path):
    try:
        yield
    except (OSError, SafetensorError) as error:  # safetensors reports its I/O errors as its own type
        raise OutputError(f"cannot write {target}: {_why(error)}") from None


def _fresh_sibling(target: Path, prefix: str) -> Path:
    """``<prefix><name>-<pid>`` next to ``target`` (a leftover of an earlier crash of this pid is removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f"{prefix}{target.name}-{os.getpid()}"
    _remove(path)
    return path


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an older ``target`` is moved aside first, and put back if that fails."""
    if os.path.lexists(target):
        old = _fresh_sibling(target, ".old-")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        _remove(old)
    else:
        os.replace(tmp, target)
    fsync_dir(target.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _why(error: Exception) -> str:
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
        return "the disk is full"
    return getattr(error, "strerror", None) or " ".join(str(error).split())


def save_checkpoint(run_dir: Path, step: int, keep: int, write: Callable[[Path], None], unit: str = "update") -> Path:
    """Write checkpoint ``step`` of a run (named ``<unit>-<step>``) atomically, with its manifest last, then drop
    all but the newest ``keep``."""

    def write_with_manifest(tmp: Path) -> None:
        write(tmp)
        write_json(tmp / MANIFEST_FILE, manifest_of(tmp))

    path = write_atomically(checkpoint_dir(run_dir, step, unit), write_with_manifest)
    prune_checkpoints(run_dir, keep)
    return path


def checkpoint_dir(run_dir: Path, update: int, unit: str = "update") -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"{unit}-{update:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path, warn: Callable[[str], None] = lambda line: None) -> Optional[Path]:
    """The newest checkpoint whose files match its manifest; each damaged newer one is named through ``warn``."""
    damaged = []
    for _update, path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            if damaged:
                warn(f"warning: {'; '.join(damaged)}; resuming from {path.name}")
            return path
        damaged.append(f"checkpoint {path.name} is damaged ({problem})")
    if damaged:
        raise UserError(f"--resume: no intact checkpoint in {Path(run_dir) / CHECKPOINTS_DIR}: {'; '.join(damaged)}")
    return None


def manifest_of(directory: Path) -> dict[str, dict[str, Any]]:
    """Each file's size and sha256, by path relative to ``directory``."""
    files = {}
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        files[str(path.relative_to(directory))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return {"files": files}


def verify_checkpoint(path: Path) -> Optional[str]:
    """None when every file of the checkpoint matches its manifest, else what is wrong (naming the file).
    Checkpoints written before manifests existed are accepted when their state file parses."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        try:
            read_json(path / STATE_FILE)
        except (OSError, ValueError):
            return f"{STATE_FILE} unreadable"
        return None
    try:
        files = read_json(manifest_path)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} unreadable"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['size']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_partials(run_dir: Path) -> None:
    root = Path(run_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".partial-", ".old-")):
                shutil.rmtree(child, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _update, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_torch_state(path: Path, state: Any) -> None:
    torch.save(state, path)


def load_torch_state(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_resume_progress(run_dir: Path, resume: bool, planned: int, counter: str, field_name: str) -> None:
    """--resume asks for at least what the newest checkpoint has done: fewer ``planned`` updates (or steps)
    would end at once and rewrite the run's config.yaml to a count the run has already passed."""
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is None:
        return
    done = read_json(latest / STATE_FILE).get(counter)
    if done is not None and planned < done:
        raise UserError(f"--resume: {field_name} is {planned}, but {latest} has already done {done} {counter}s; "
                        f"ask for at least {done}")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def check_resumable(saved: dict, current: dict, path: Path, may_change: Sequence[str]) -> None:
    """A resumed run must compute what the interrupted one did: only keys starting with ``may_change`` differ."""
    before, after = flatten(saved), flatten(current)
    changed = sorted(k for k in before.keys() | after.keys()
                     if before.get(k) != after.get(k) and not k.startswith(tuple(may_change)))
    if changed:
        raise UserError(f"--resume: the config differs from the one {path} was trained with in: "
                        f"{', '.join(changed)}")
