"""What every config section is built from: the strict Section base, the bounds, shared checks."""

from __future__ import annotations

import typing
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

# Bounds that keep a typo from hanging the run or asking for an absurd allocation (the error names the bound).
MAX_BATCH = 65_536  # samples, prompts or records in one batch
MAX_TOKENS = 1_048_576  # tokens of one prompt or response (the model's context is checked before a run too)
MAX_WIDTH = 65_536  # units in a head's hidden layer
MAX_THREADS = 1024
MAX_TURNS = 1024  # turns of one environment episode
MAX_SEED = 2**63 - 1  # torch.manual_seed and torch.Generator take 64-bit seeds


def _takes_a_number_not_a_bool(annotation: Any) -> bool:
    """``int``, ``float``, ``Optional[int]``, ``Union[Literal["skip"], float]``...: a field where YAML's
    ``true`` is a mistake (pydantic would read it as 1)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    return any(_takes_a_number_not_a_bool(arg) for arg in typing.get_args(annotation))


class Section(BaseModel):
    """A config section: unknown keys, non-finite numbers and booleans for numbers are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _takes_a_number_not_a_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def _must_divide(part: Optional[int], name: str, whole_name: str, info: ValidationInfo) -> Optional[int]:
    """Batch sizes nest: ``part`` (the field ``name``) must divide the already-validated field ``whole_name``."""
    whole = info.data.get(whole_name)
    if part is not None and whole is not None and whole % part:
        raise ValueError(f"{name} ({part}) must divide {whole_name} ({whole})")
    return part


def _named_once(items: list, what: str) -> list:
    """``items`` (each with a ``name``) if no name is listed twice; else a ValueError naming the repeated ones."""
    names = [item.name for item in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{what}(s) listed twice: {', '.join(duplicates)}")
    return items
