"""Reading a run config: YAML or JSON, ``--set`` overrides, validation into :class:`RunConfig`, saving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, format_validation_error
from .sections import RunConfig


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice (YAML and JSON would silently keep the last one)."""

    def __init__(self, key: Any, line: Optional[int] = None, first_line: Optional[int] = None):
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line

    def describe(self, path: Path) -> str:
        if self.line is None:
            return f"{path}: key {self.key!r} appears twice in one mapping"
        return f"{path}, line {self.line}: key {self.key!r} appears twice (first on line {self.first_line})"


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping with a repeated key."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[Any, int] = {}
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = first_lines.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise DuplicateKeyError(key, key_node.start_mark.line + 1, first)
        return super().construct_mapping(node, deep)


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise DuplicateKeyError(key)
        data[key] = value
    return data


def read_config_file(path: Union[str, Path]) -> dict[str, Any]:
    """Read a YAML or JSON mapping (YAML through the safe loader); a key given twice is an error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start} cannot be decoded); save the config as "
                          f"UTF-8") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_json_object)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except DuplicateKeyError as error:
        raise ConfigError(error.describe(path)) from None
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{' '.join(str(error).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML (``1e-5``, ``true``, ``[a, b]``)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    parts = key.strip().split(".")
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} has no item {part}")
            node = node[int(part)]
            continue
        child = node.get(part)
        if child is None:  # absent, or an optional section left null (`lora: null`): it starts empty
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: no item {last}")
        node[int(last)] = value
    else:
        node[last] = value


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {format_validation_error(error)}") from None


def load_config(path: Union[str, Path, None], overrides: list[str] = (), base: Optional[dict] = None) -> RunConfig:
    """Read ``path`` (or start from ``base``), apply ``--set`` overrides, validate."""
    data = read_config_file(path) if path is not None else json.loads(json.dumps(base or {}))
    for assignment in overrides:
        apply_override(data, assignment)
    source = str(path) if path is not None else "config"
    if overrides:
        source += " (with --set " + ", ".join(overrides) + ")"
    return validate_config(data, source)


def save_config(config: RunConfig, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def config_schema() -> dict[str, Any]:
    return RunConfig.model_json_schema()
