"""Reading a run config: YAML or JSON, ``--set`` overrides, validation into :class:`RunConfig`, saving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, format_validation_error
from .sections import RunConfig


def read_config_file(path: Union[str, Path]) -> dict[str, Any]:
    """Read a YAML or JSON mapping (YAML through the safe loader)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror or error}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
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
        child = node.setdefault(part, {})
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
