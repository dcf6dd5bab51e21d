"""Reward-model training data: preference pairs or scalar labels, read from and written to JSONL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..data.prompts import PromptText
from ..errors import DataError, format_validation_error

DataKind = Literal["pairs", "labels"]


def _templated_field():
    return Field(False, description="The prompt was rendered by the tokenizer's chat template, which writes its "
                 "own special tokens: it is tokenized without adding them, as the PPO engine tokenizes it.")


class PreferencePair(BaseModel):
    """One comparison: ``chosen`` is the better response to ``prompt``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    chosen: str
    rejected: str
    templated: bool = _templated_field()

    @property
    def prompt_text(self) -> PromptText:
        return PromptText(self.prompt, self.templated)


class ScoredResponse(BaseModel):
    """One response with a scalar label (higher is better)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    response: str
    score: float = Field(allow_inf_nan=False)
    templated: bool = _templated_field()

    @property
    def prompt_text(self) -> PromptText:
        return PromptText(self.prompt, self.templated)


@dataclass
class RewardData:
    """Pairs or labels, with where they came from (for messages)."""

    kind: DataKind
    items: list  # list[PreferencePair] or list[ScoredResponse]
    source: str = "data"

    def __len__(self) -> int:
        return len(self.items)

    @property
    def prompts(self) -> list[str]:
        """The distinct prompts, in first-seen order."""
        return list(dict.fromkeys(item.prompt for item in self.items))

    @property
    def prompt_texts(self) -> list[PromptText]:
        """The distinct prompts with how they are tokenized (:attr:`PreferencePair.templated`), in first-seen
        order."""
        return list(dict.fromkeys(item.prompt_text for item in self.items))

    @property
    def responses(self) -> list[tuple[str, str]]:
        """(prompt, response) of the preferred / labelled responses."""
        if self.kind == "pairs":
            return [(item.prompt, item.chosen) for item in self.items]
        return [(item.prompt, item.response) for item in self.items]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], kind: Union[DataKind, Literal["auto"]] = "auto",
                  source: str = "data") -> "RewardData":
        """Validate in-memory rows (dicts or models); errors name ``source`` and the row number (from 1)."""
        items: list = []
        for number, row in enumerate(rows, start=1):
            if isinstance(row, (PreferencePair, ScoredResponse)):
                row = row.model_dump()
            if kind == "auto":
                kind = _detect_kind(row, f"{source}, row {number}")
            items.append(_validate_row(row, kind, f"{source}, row {number}"))
        if not items:
            raise DataError(f"{source}: no records")
        return cls(kind, items, source)  # type: ignore[arg-type]


_MODELS: dict[str, type[BaseModel]] = {"pairs": PreferencePair, "labels": ScoredResponse}


def _detect_kind(row: Any, where: str) -> DataKind:
    if isinstance(row, Mapping):
        if "chosen" in row or "rejected" in row:
            return "pairs"
        if "response" in row or "score" in row:
            return "labels"
    raise DataError(f"{where}: cannot tell preference pairs {{prompt, chosen, rejected}} from scalar labels "
                    f"{{prompt, response, score}} (keys: {', '.join(sorted(row)) if isinstance(row, Mapping) else type(row).__name__})")


def _check_same_kind(row: Mapping[str, Any], kind: DataKind, where: str, first: int) -> None:
    try:
        own = _detect_kind(row, where)
    except DataError:
        return  # neither kind: validation names the missing fields
    if own != kind:
        names = {"pairs": "a preference pair", "labels": "a scalar label"}
        raise DataError(f"{where}: {names[own]} in a file of {kind} (line {first} decided the kind; "
                        f"keep pairs and labels in separate files)")


def _validate_row(row: Any, kind: DataKind, where: str):
    try:
        return _MODELS[kind].model_validate(row)
    except ValidationError as error:
        raise DataError(f"{where}: {format_validation_error(error)}") from None


def read_reward_data(path: Union[str, Path], kind: Union[DataKind, Literal["auto"]] = "auto") -> RewardData:
    """Read pairs or labels from a JSONL file. ``kind="auto"`` decides from the first record's keys.

    Blank lines are skipped (line numbers stay physical); every problem raises :class:`DataError` naming the
    file, the line and the field.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")  # binary: a bad byte is reported with its own line number
    except OSError as error:
        raise DataError(f"{path}: cannot read reward data: {error.strerror or error}") from None
    items: list = []
    detected_at: Optional[int] = None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError as error:
                raise DataError(f"{where}: not valid UTF-8 (byte {error.start + 1} of the line)") from None
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON: {error.msg} (column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            _refuse_lone_surrogates(row, where)
            if kind == "auto":
                kind, detected_at = _detect_kind(row, where), number
            elif detected_at is not None:
                _check_same_kind(row, kind, where, detected_at)
            items.append(_validate_row(row, kind, where))
    if not items:
        raise DataError(f"{path}: no records")
    return RewardData(kind, items, str(path))  # type: ignore[arg-type]


def _refuse_lone_surrogates(row: Mapping[str, Any], where: str) -> None:
    """JSON's ``"\\ud800"`` decodes to a lone surrogate, which no tokenizer can encode: name the field."""
    for key, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")  # fails exactly on surrogates
            except UnicodeEncodeError as error:
                raise DataError(f"{where}: {key}: a lone surrogate (\\u{ord(value[error.start]):04x} at character "
                                f"{error.start + 1}) is not valid Unicode text") from None


def write_jsonl(path: Union[str, Path], rows: Iterable[Union[Mapping[str, Any], BaseModel]]) -> Path:
    """Write rows as JSONL, atomically (``ppo_core.runtime.checkpoints.write_file_atomically``)."""
    from ..runtime.checkpoints import write_file_atomically

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as stream:
            for row in rows:
                # defaults left out: a pair without a chat template is written as it always was
                data = row.model_dump(exclude_defaults=True) if isinstance(row, BaseModel) else dict(row)
                stream.write(json.dumps(data, ensure_ascii=False) + "\n")

    return write_file_atomically(Path(path), write)
