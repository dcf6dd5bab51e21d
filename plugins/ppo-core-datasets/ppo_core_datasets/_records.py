"""Shared by every dataset here: one raw item -> a validated Record, or a DataError naming where and which field.

Error messages read ``<where>: <field>: <problem>``, where ``<where>`` is e.g. ``data.jsonl, line 7`` or
``data.json, index 3``, and the field is named as the user wrote it: ``content`` for the seed form,
``prompt`` for the plain form, ``messages.0.content`` for the chat form, ``prompt.0.content`` for a
conversational ``prompt`` (a list of turns).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Mapping, MutableMapping, Optional

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from ppo_core import Record, Split
from ppo_core.errors import DataError, format_validation_error

logger = logging.getLogger("ppo_core.datasets")

#: The keys that say which of the three forms of :meth:`Record.from_dict` a record is in.
PROMPT_KEYS = ("messages", "prompt", "content", "role")

_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
                    bool: "boolean", type(None): "null"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``object``, ``array``, ``string`` ...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def record_form(obj: Mapping[str, Any]) -> Optional[str]:
    """``"chat"``, ``"conversational"`` (TRL's ``prompt`` column holding a list of turns), ``"plain"`` or
    ``"seed"``, decided exactly as :meth:`Record.from_dict` decides; else None."""
    if "messages" in obj:
        return "chat"
    if "prompt" in obj:
        return "conversational" if isinstance(obj["prompt"], list) else "plain"
    if "content" in obj or "role" in obj:
        return "seed"
    return None


def to_record(obj: Any, where: str) -> Record:
    """Validate one record in any of the three forms; raise :class:`DataError` prefixed with ``where``."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: expected a JSON object (one record), got {json_type(obj)}")
    form = record_form(obj)
    if form is None:
        present = ", ".join(sorted(map(str, obj))) or "none"
        raise DataError(
            f"{where}: prompt: missing; a record needs 'prompt' (plain form), 'messages' (chat form) "
            f"or 'content' (seed form) (fields present: {present})"
        )
    surrogate = find_lone_surrogate(obj)
    if surrogate is not None:
        field, position, char = surrogate
        raise DataError(f"{where}: {field}: a lone surrogate (\\u{ord(char):04x} at character {position + 1}) is "
                        f"not valid Unicode text; JSON escapes must pair them")
    try:
        return Record.from_dict(obj)
    except ValidationError as error:
        raise DataError(f"{where}: {describe_validation_error(error, form, obj)}") from None


def find_lone_surrogate(value: Any, path: str = "") -> Optional[tuple[str, int, str]]:
    """(field path, character index, character) of the first lone surrogate in a string of ``value`` -- JSON's
    ``"\\ud800"`` decodes to one, and no tokenizer can encode it -- or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # fails exactly on surrogates, at C speed
        except UnicodeEncodeError as error:
            return path, error.start, value[error.start]
        return None
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = find_lone_surrogate(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def describe_validation_error(error: ValidationError, form: str, obj: Mapping[str, Any]) -> str:
    """:func:`format_validation_error`, with field paths renamed to the record's own form.

    ``messages.0.content`` becomes ``content`` (seed form) or ``prompt`` (plain form), and the two branches
    of the ``str | list[str]`` solution union collapse into one message.
    """
    try:
        return format_validation_error(_rewrite(error, form, obj))
    except Exception:  # a pydantic version whose errors do not round-trip: keep the original paths
        return format_validation_error(error)


def _rewrite(error: ValidationError, form: str, obj: Mapping[str, Any]) -> ValidationError:
    line_errors: list[Any] = []
    solution_union_done = False
    for item in error.errors():
        loc = tuple(item["loc"])
        if loc[:1] == ("messages",) and form == "conversational":
            loc = ("prompt",) + loc[1:]
        elif loc[:2] == ("messages", 0) and len(loc) > 2 and form != "chat":
            loc = (("prompt",) + loc[3:]) if form == "plain" and loc[2] == "content" else loc[2:]
        if loc[:1] == ("solution",) and len(loc) > 1 and loc[1] in ("str", "list[str]"):
            solution = obj.get("solution")
            if isinstance(solution, list):
                if loc[1] == "str":
                    continue  # the list branch says which element is wrong
                loc = ("solution",) + loc[2:]
            else:
                if solution_union_done:
                    continue
                solution_union_done = True
                line_errors.append({
                    "type": PydanticCustomError("solution_type", "should be a string or a list of strings"),
                    "loc": ("solution",),
                    "input": solution,
                })
                continue
        line_error = {"type": item["type"], "loc": loc, "input": item.get("input")}
        if "ctx" in item:
            line_error["ctx"] = item["ctx"]
        line_errors.append(line_error)
    return ValidationError.from_exception_data(error.title, line_errors)


def stream_records(
    items: Iterable[tuple[int, Callable[[], Record]]],
    *,
    split: Split,
    source: str,
    unit: str,
    skip_invalid: bool,
    skipped: MutableMapping[str, int],
    in_split: Optional[Callable[[int], bool]] = None,
    dataset: str = "",
    split_hint: str = "",
) -> Iterator[Record]:
    """The loop every file-backed dataset runs: validate each item, skip or raise, keep the split's items.

    ``items`` yields ``(number, parse)`` pairs; ``parse()`` returns a Record or raises DataError. Every item
    is validated on every pass, whichever split it belongs to, so a file is accepted or rejected the same way
    whichever split is read first. ``skipped[split]`` counts the invalid items skipped in the current pass.
    """
    skipped[split] = 0
    valid = kept = 0
    first_error = ""
    for number, parse in items:
        try:
            record = parse()
        except DataError as error:
            if not skip_invalid:
                raise
            skipped[split] += 1
            first_error = first_error or str(error)
            continue
        valid += 1
        if in_split is None or in_split(number):
            kept += 1
            yield record
    count = skipped[split]
    if count:
        logger.warning(
            "%sskipped %d invalid %s%s of %s (skip_invalid is on); the first: %s",
            f"dataset '{dataset}': " if dataset else "", count, unit, "" if count == 1 else "s", source, first_error,
        )
    if valid == 0:
        detail = f" (all {count} {unit}s were invalid and skipped)" if count else ""
        raise DataError(f"{source}: no records{detail}")
    if kept == 0:
        raise DataError(f"{source}: none of its {valid} records fell in the {split} split{split_hint}")
