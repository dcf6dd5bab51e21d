"""Names -> reward, dataset, environment and logger classes, each stamped with the plugin that registered it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ValidationError

from ..errors import (
    ConfigError,
    DuplicateNameError,
    PluginError,
    UserError,
    format_validation_error,
)
from .callbacks import Logger
from .contract import Dataset, Reward, RunContext
from .environment import Environment

Kind = Literal["reward", "dataset", "environment", "logger"]
KINDS: tuple[Kind, ...] = ("reward", "dataset", "environment", "logger")
_BASES: dict[str, type] = {"reward": Reward, "dataset": Dataset, "environment": Environment, "logger": Logger}


@dataclass(frozen=True)
class Entry:
    kind: Kind
    name: str
    cls: type
    plugin: str


@dataclass
class Registry:
    """The rewards, datasets, environments and loggers the loaded plugins registered."""

    entries: dict[Kind, dict[str, Entry]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    failed_plugins: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # plugin name -> why it failed to load
    skipped_plugins: list[str] = field(default_factory=list)  # left out by the allow/block lists

    def register(self, kind: Kind, cls: Any, plugin: str) -> None:
        _check_class(kind, cls, plugin)
        existing = self.entries[kind].get(cls.name)
        if existing is not None:
            raise DuplicateNameError(
                f"{kind} '{cls.name}' is registered twice: by plugin '{existing.plugin}' and by plugin '{plugin}'; "
                f"block one of them (plugins.block in the config, or PPO_CORE_BLOCK_PLUGINS)"
            )
        self.entries[kind][cls.name] = Entry(kind, cls.name, cls, plugin)

    def get(self, kind: Kind, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.entries[kind])) or "none"
            message = f"unknown {kind} '{name}'; known {kind}s: {known}"
            if self.failed_plugins:
                failed = "; ".join(f"{name}: {self.failures[name]}" if name in self.failures else name
                                   for name in self.failed_plugins)
                message += f" (plugins that failed to load: {failed}; see `ppo-core plugins`)"
            if self.skipped_plugins:
                message += f" (plugins left out by the allow/block lists: {', '.join(self.skipped_plugins)})"
            raise UserError(message) from None

    def names(self, kind: Kind) -> list[str]:
        return sorted(self.entries[kind])

    def by_plugin(self, plugin: str, kind: Kind) -> list[str]:
        return sorted(name for name, entry in self.entries[kind].items() if entry.plugin == plugin)

    def build(self, kind: Kind, name: str, options: Mapping[str, Any] | None, context: RunContext,
              where: str = "", name_where: str = "") -> Any:
        """Instantiate a reward, dataset or environment with its validated options.

        ``where`` is the config location of ``options`` (e.g. ``config.yaml: rewards.0.options``), ``name_where``
        that of the name (e.g. ``config.yaml: rewards.0.name``), which prefixes an unknown-name error.
        """
        try:
            entry = self.get(kind, name)
        except UserError as error:
            if not name_where:
                raise
            raise ConfigError(f"{name_where}: {error}") from None
        parsed = validate_options(entry, options or {}, where)
        try:
            return entry.cls(parsed, context)
        except UserError:
            raise
        except (Exception, SystemExit) as error:  # sys.exit in a constructor must not end the run silently
            raise PluginError(
                f"{kind} '{name}' (plugin '{entry.plugin}') failed to start: {type(error).__name__}: {error}"
            ) from error


def validate_options(entry: Entry, options: Mapping[str, Any], where: str = "") -> BaseModel:
    """Validate ``options`` against the entry's ``Options`` model; unknown keys are always an error."""
    model: type[BaseModel] = entry.cls.Options
    prefix = where or f"{entry.kind} '{entry.name}' options"
    if not isinstance(options, Mapping):
        raise ConfigError(f"{prefix}: options must be a mapping, got {type(options).__name__}")
    known = set()
    for field_name, info in model.model_fields.items():
        known.add(info.alias or field_name)
        known.add(field_name)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"{prefix}: unknown option(s) {', '.join(unknown)} for {entry.kind} '{entry.name}' "
            f"(plugin '{entry.plugin}'); known options: {', '.join(sorted(model.model_fields)) or 'none'}"
        )
    try:
        return model.model_validate(dict(options))
    except ValidationError as error:
        raise ConfigError(f"{prefix}: {format_validation_error(error)}") from None


def _check_class(kind: Kind, cls: Any, plugin: str) -> None:
    base = _BASES[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        hint = ""
        if kind == "reward" and callable(cls) and not isinstance(cls, type):
            hint = ("; a plain function becomes a reward through the decorator @ppo_core.reward(...) or "
                    "ppo_core.train(..., rewards=[function])")
        raise PluginError(f"plugin '{plugin}' registered {cls!r} as a {kind}, but it is not a subclass of "
                          f"{base.__module__}.{base.__name__}{hint}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise PluginError(f"plugin '{plugin}': {kind} class {cls.__name__} needs a `name` that is an identifier, got {name!r}")
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise PluginError(f"plugin '{plugin}': {kind} '{name}' needs `Options` to be a pydantic BaseModel subclass")
