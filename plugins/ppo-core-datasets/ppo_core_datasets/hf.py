"""The ``hf`` dataset: a dataset saved with Hugging Face ``datasets`` or local parquet/json/csv files.

``datasets`` is optional (``pip install 'ppo-core-datasets[hf]'``); it is imported only when an ``hf`` dataset
is built, so the plugin loads without it. Nothing is downloaded: ``path`` is always local.

- ``format: disk``: ``datasets.load_from_disk(path)``. A saved ``DatasetDict`` gives its ``train_split`` to
  train and its ``eval_split`` (if set) to eval; a saved single ``Dataset`` is the train split.
- ``format: parquet | json | csv``: ``datasets.load_dataset(format, data_files=path)``: ``path`` (a file or a
  glob) is the train split and ``eval_path`` (if set) the eval split.

Each row becomes a record: the mapped columns are renamed (``prompt_column`` -> ``prompt``,
``messages_column`` -> ``messages``, ``solution_column`` -> ``solution``), and every other column passes
through to the record's fields. Without a mapping, rows are read in the three forms of ``Record.from_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ppo_core import Dataset, Record, RunContext, Split
from ppo_core.errors import ConfigError, DataError

from ._records import PROMPT_KEYS, stream_records, to_record

__all__ = ["HF_INSTALL", "HFDataset", "HFOptions", "import_datasets"]

HF_INSTALL = "pip install 'ppo-core-datasets[hf]'"
Format = Literal["disk", "parquet", "json", "csv"]
_SUFFIX_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


class HFOptions(BaseModel):
    """Options of ``hf``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a directory saved with save_to_disk, or a data file / glob")
    format: Optional[Format] = Field(
        None, description="disk | parquet | json | csv; unset: disk for a directory, else from the file suffix"
    )
    eval_path: Optional[str] = Field(None, description="parquet/json/csv only: the eval split's file(s)")
    train_split: str = Field("train", description="disk only: the train split of a saved DatasetDict")
    eval_split: Optional[str] = Field(None, description="disk only: the eval split of a saved DatasetDict")
    prompt_column: Optional[str] = Field(None, description="column holding the prompt: text, or a list of "
                                         "{role, content} turns (TRL's conversational prompt)")
    messages_column: Optional[str] = Field(None, description="column holding a list of {role, content} turns")
    solution_column: Optional[str] = Field(None, description="column holding the solution (str or list of str)")
    cache_dir: Optional[str] = Field(None, description="parquet/json/csv only: where datasets keeps its Arrow "
                                                       "cache (default: the datasets library's own)")
    skip_invalid: bool = Field(False, description="skip malformed rows (counted and logged) instead of raising")

    @model_validator(mode="after")
    def _consistent(self) -> "HFOptions":
        if self.prompt_column is not None and self.messages_column is not None:
            raise ValueError("set prompt_column or messages_column, not both")
        return self


def import_datasets() -> Any:
    """Import the optional ``datasets`` library, or say exactly what to install."""
    try:
        import datasets
    except ImportError as error:
        raise ConfigError(
            f"dataset 'hf' needs the Hugging Face `datasets` library, which is not installed: {HF_INSTALL}"
        ) from error
    return datasets


class HFDataset(Dataset):
    """Rows of a local Hugging Face dataset (saved to disk) or of parquet/json/csv files."""

    name = "hf"
    Options = HFOptions

    def __init__(self, options: HFOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._datasets = import_datasets()
        self.format: str = options.format or _infer_format(options.path)
        if self.format == "disk":
            if options.eval_path is not None:
                raise ConfigError("dataset 'hf': eval_path is for format parquet/json/csv; with format disk "
                                  "name a split of the saved DatasetDict in eval_split")
            if not Path(options.path).is_dir():
                raise DataError(f"{options.path}: no such directory (option 'path' of dataset 'hf', format disk)")
        else:
            if options.eval_split is not None or options.train_split != "train":
                raise ConfigError("dataset 'hf': train_split/eval_split name splits of a saved DatasetDict "
                                  f"(format disk); with format {self.format} give the eval file(s) in eval_path")
            for option in ("path", "eval_path"):
                files = getattr(options, option)
                if files is not None and not any(c in files for c in "*?[") and not Path(files).is_file():
                    raise DataError(f"{files}: no such file (option '{option}' of dataset 'hf')")
        #: invalid rows skipped in the latest pass over each split (``skip_invalid: true``)
        self.skipped: dict[str, int] = {"train": 0, "eval": 0}
        self._loaded: dict[str, Any] = {}

    @property
    def has_eval(self) -> bool:
        return self.options.eval_split is not None or self.options.eval_path is not None

    def records(self, split: Split) -> Iterator[Record]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if split == "eval" and not self.has_eval:
            return iter(())
        table, source = self._table(split)
        self._check_columns(table, source)
        return stream_records(
            self._items(table, source), split=split, source=source, unit="row",
            skip_invalid=self.options.skip_invalid, skipped=self.skipped, dataset=self.name,
        )

    # -- loading -------------------------------------------------------------------------------------------

    def _table(self, split: str) -> tuple[Any, str]:
        o: HFOptions = self.options
        if split not in self._loaded:
            self._loaded[split] = self._load_disk(split) if self.format == "disk" else self._load_files(split)
        if self.format == "disk":
            name = o.train_split if split == "train" else o.eval_split
            return self._loaded[split], f"{o.path} [split {name}]"
        return self._loaded[split], str(o.eval_path if split == "eval" else o.path)

    def _load_disk(self, split: str) -> Any:
        o: HFOptions = self.options
        try:
            loaded = self._datasets.load_from_disk(o.path)
        except Exception as error:
            raise DataError(f"{o.path}: cannot load with datasets.load_from_disk: {type(error).__name__}: {error}") from error
        if isinstance(loaded, self._datasets.DatasetDict):
            name = o.train_split if split == "train" else o.eval_split
            if name not in loaded:
                option = "train_split" if split == "train" else "eval_split"
                raise ConfigError(f"dataset 'hf': {o.path} has no split '{name}' (option {option}); "
                                  f"its splits: {', '.join(sorted(loaded))}")
            return loaded[name]
        if split == "eval":
            raise ConfigError(f"dataset 'hf': {o.path} holds a single Dataset without splits, so eval_split "
                              f"'{o.eval_split}' cannot be found; it is all the train split")
        return loaded

    def _load_files(self, split: str) -> Any:
        o: HFOptions = self.options
        files = o.eval_path if split == "eval" else o.path
        try:
            return self._datasets.load_dataset(self.format, data_files=files, split="train", cache_dir=o.cache_dir)
        except Exception as error:
            raise DataError(f"{files}: cannot load as {self.format} with datasets.load_dataset: "
                            f"{type(error).__name__}: {error}") from error

    # -- rows ------------------------------------------------------------------------------------------------

    def _mapping(self) -> dict[str, str]:
        o: HFOptions = self.options
        pairs = ((o.prompt_column, "prompt"), (o.messages_column, "messages"), (o.solution_column, "solution"))
        return {column: key for column, key in pairs if column is not None}

    def _check_columns(self, table: Any, source: str) -> None:
        columns = list(getattr(table, "column_names", None) or [])
        for column, key in self._mapping().items():
            if column not in columns:
                option = f"{key}_column"
                raise DataError(f"{source}: no column '{column}' (option {option}); "
                                f"its columns: {', '.join(columns) or 'none'}")

    def _items(self, table: Any, source: str) -> Iterator[tuple[int, Any]]:
        mapping = self._mapping()
        for index, row in enumerate(table):
            yield index, (lambda row=row, index=index: to_record(_row_to_dict(row, mapping), f"{source}, row {index}"))


def _row_to_dict(row: Any, mapping: dict[str, str]) -> Any:
    if not isinstance(row, dict):
        return row
    data = dict(row)
    renamed = {key: data.pop(column) for column, key in mapping.items()}
    for key in renamed:
        data.pop(key, None)  # a mapped column wins over a column that already has the record key's name
    data.update(renamed)
    # Arrow tables give every row every column: a missing prompt key arrives as None. Drop those, so a row
    # with `prompt` set and `messages` None reads in the plain form.
    for key in PROMPT_KEYS:
        if key in data and data[key] is None and key not in renamed:
            del data[key]
    return data


def _infer_format(path: str) -> str:
    if Path(path).is_dir():
        return "disk"
    name = path[:-3] if path.endswith(".gz") else path
    suffix = Path(name).suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    raise ConfigError(f"dataset 'hf': cannot tell the format of '{path}' from its name; "
                      f"set format: disk, parquet, json or csv")
