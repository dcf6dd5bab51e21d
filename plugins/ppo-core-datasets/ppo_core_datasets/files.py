"""The ``jsonl`` and ``json`` datasets: records from local files.

``jsonl`` streams: it reads one line at a time and never holds the file (a ``.gz`` file is decompressed as a
stream too). ``json`` reads a top-level array, which has to be parsed whole: use ``jsonl`` for large data.
"""

from __future__ import annotations

import abc
import gzip
import hashlib
import json
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ppo_core import Dataset, Record, RunContext, Split
from ppo_core.errors import DataError

from ._records import json_type, stream_records, to_record

__all__ = ["FileOptions", "JsonDataset", "JsonlDataset", "in_eval"]


class FileOptions(BaseModel):
    """Options of ``jsonl`` and ``json``."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="the records (train split, and eval split too when eval_fraction > 0)")
    eval_path: Optional[Path] = Field(None, description="a separate file for the eval split")
    eval_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="without eval_path: the share of records that go to eval, chosen by a hash of the line "
                    "number (jsonl) or array index (json) and split_seed",
    )
    split_seed: int = Field(0, description="seed of the eval_fraction hash; independent of the run's seed")
    skip_invalid: bool = Field(
        False, description="skip malformed records (counted, and logged as a warning) instead of raising DataError"
    )

    @model_validator(mode="after")
    def _one_eval_source(self) -> "FileOptions":
        if self.eval_path is not None and self.eval_fraction > 0:
            raise ValueError("set eval_path or eval_fraction, not both")
        return self


def in_eval(number: int, split_seed: int, eval_fraction: float) -> bool:
    """Whether the record at ``number`` (line number or array index) belongs to the eval split.

    A keyed hash, so the same file, ``split_seed`` and ``eval_fraction`` always give the same split, a record
    is in exactly one split, and raising ``eval_fraction`` only moves records from train to eval.
    """
    if eval_fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{split_seed}:{number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < eval_fraction * 2.0**64


class _FileDataset(Dataset, abc.ABC):
    Options: ClassVar[type[BaseModel]] = FileOptions
    unit: ClassVar[str]  # what one record is called in messages: "line" or "index"

    def __init__(self, options: FileOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        #: invalid records skipped in the latest pass over each split (``skip_invalid: true``)
        self.skipped: dict[str, int] = {"train": 0, "eval": 0}
        _check_file(options.path, "path", self.name)
        if options.eval_path is not None:
            _check_file(options.eval_path, "eval_path", self.name)

    @property
    def has_eval(self) -> bool:
        """Whether the options define an eval split at all (``eval_path`` or ``eval_fraction > 0``)."""
        return self.options.eval_path is not None or self.options.eval_fraction > 0

    def records(self, split: Split) -> Iterator[Record]:
        """Records of ``split``; the eval split is empty when neither eval_path nor eval_fraction is set."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        options: FileOptions = self.options
        if split == "eval" and not self.has_eval:
            return iter(())
        path = options.eval_path if split == "eval" and options.eval_path is not None else options.path
        in_split: Optional[Callable[[int], bool]] = None
        hint = ""
        if options.eval_fraction > 0:
            want_eval = split == "eval"
            seed, fraction = options.split_seed, options.eval_fraction

            def in_split(number: int) -> bool:
                return in_eval(number, seed, fraction) == want_eval

            hint = f" (eval_fraction={fraction}, split_seed={seed})"
        return stream_records(
            self._items(path), split=split, source=str(path), unit=self.unit,
            skip_invalid=options.skip_invalid, skipped=self.skipped, in_split=in_split,
            dataset=self.name, split_hint=hint,
        )

    @abc.abstractmethod
    def _items(self, path: Path) -> Iterator[tuple[int, Callable[[], Record]]]:
        """(line or index, a function that parses and validates that record) for each record of the file."""


class JsonlDataset(_FileDataset):
    """One JSON object per line, in any of the three record forms; streamed line by line.

    Blank lines (empty or only whitespace), anywhere in the file, are skipped silently: many writers end the
    file with a newline, and hand-edited files gain empty lines. They still count in the line numbers, which
    are those an editor shows. A UTF-8 byte-order mark at the start is ignored. ``.gz`` files are read through
    gzip, still streaming.
    """

    name = "jsonl"
    Options = FileOptions
    unit = "line"

    def _items(self, path: Path) -> Iterator[tuple[int, Callable[[], Record]]]:
        with _open(path) as stream, _read_errors(path):
            for number, raw in enumerate(stream, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                yield number, (lambda raw=raw, number=number: _parse_line(path, number, raw))


class JsonDataset(_FileDataset):
    """A file holding one top-level JSON array of records.

    The array is loaded whole (JSON has no standard way to stream an array's items), so memory grows with
    the file: for large data write JSON Lines and use ``jsonl``. Errors name the array index (from 0).
    """

    name = "json"
    Options = FileOptions
    unit = "index"

    def _items(self, path: Path) -> Iterator[tuple[int, Callable[[], Record]]]:
        with _open(path) as stream, _read_errors(path):
            text = stream.read()
        try:
            decoded = text.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not valid UTF-8 (byte {error.start})") from None
        if not decoded.strip():
            raise DataError(f"{path}: no records (the file is empty)")
        try:
            data = json.loads(decoded)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None
        del text, decoded
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a top-level JSON array of records, got {json_type(data)}")
        for index, obj in enumerate(data):
            yield index, (lambda obj=obj, index=index: to_record(obj, f"{path}, index {index}"))


def _parse_line(path: Path, number: int, raw: bytes) -> Record:
    where = f"{path}, line {number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not valid UTF-8 (byte {error.start + 1} of the line)") from None
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON: {error.msg} (column {error.colno})") from None
    return to_record(obj, where)


def _open(path: Path) -> IO[bytes]:
    """Binary, so lines split on ``\\n`` only and a bad byte is reported with its own line number."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """A damaged ``.gz`` file (or a failing disk) is a DataError naming the file, not a traceback."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot be read: {error}") from None


def _check_file(path: Path, option: str, dataset: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file (option '{option}' of dataset '{dataset}')")
    if not path.is_file():
        raise DataError(f"{path}: not a file (option '{option}' of dataset '{dataset}')")
