"""The plugin manager: entry-point loading, the allow and block lists, and the registry they fill."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable, Optional

import pluggy

from ..errors import DuplicateNameError, PluginError
from . import hookspecs
from .registry import KINDS, Registry

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
ALLOW_ENV = "PPO_CORE_PLUGINS"
BLOCK_ENV = "PPO_CORE_BLOCK_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: Optional[str] = None
    version: Optional[str] = None
    entry_point: Optional[str] = None


@dataclass(frozen=True)
class FailedPlugin:
    info: PluginInfo
    error: str
    traceback: str = ""

    def describe(self) -> str:
        where = f"entry point '{self.info.name} = {self.info.entry_point}'" if self.info.entry_point else "registered in process"
        dist = f" of distribution '{self.info.distribution}'" if self.info.distribution else ""
        return f"plugin '{self.info.name}' ({where}{dist}) failed to load: {' '.join(self.error.split())}"


@dataclass
class PluginSet:
    """What loaded, what failed, what was left out, and the registry the loaded plugins filled."""

    manager: pluggy.PluginManager
    registry: Registry
    loaded: list[PluginInfo] = field(default_factory=list)
    failed: list[FailedPlugin] = field(default_factory=list)
    skipped: list[PluginInfo] = field(default_factory=list)


def make_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def names_from_env(variable: str) -> Optional[list[str]]:
    value = os.environ.get(variable)
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def is_allowed(info: PluginInfo, allow: Optional[Iterable[str]], block: Iterable[str]) -> bool:
    """A plugin is matched by its entry-point name or its distribution name."""
    names = {info.name, info.distribution} - {None}
    if names & set(block):
        return False
    return allow is None or bool(names & set(allow))


def load_plugins(
    allow: Optional[Iterable[str]] = None,
    block: Iterable[str] = (),
    extra: Iterable[tuple[str, Any]] = (),
    use_entry_points: bool = True,
) -> PluginSet:
    """Load the ``ppo_core`` entry points the allow/block lists admit, plus ``extra`` (name, plugin) pairs.

    The environment variables ``PPO_CORE_PLUGINS`` (allow) and ``PPO_CORE_BLOCK_PLUGINS`` (block) narrow the
    set further; a plugin outside the allow list is never imported. A plugin that fails to import, registers
    an unknown hook, or raises while registering is reported in ``failed`` and the others still load.
    """
    allow_sets = [set(a) for a in (allow, names_from_env(ALLOW_ENV)) if a is not None]
    allowed = set.intersection(*allow_sets) if allow_sets else None
    blocked = set(block) | set(names_from_env(BLOCK_ENV) or ())

    manager = make_plugin_manager()
    plugins = PluginSet(manager=manager, registry=Registry())

    # (info, a callable giving the plugin): an entry point's ``load``, not an isinstance test of the entry point,
    # which fails once the importlib_metadata backport is imported (MLflow imports it): its finder then serves
    # the distributions, with entry points of its own class
    candidates: list[tuple[PluginInfo, Callable[[], Any]]] = []
    if use_entry_points:
        for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            dist = getattr(entry_point, "dist", None)
            info = PluginInfo(
                name=entry_point.name,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
                entry_point=entry_point.value,
            )
            candidates.append((info, entry_point.load))
    candidates += [(PluginInfo(name=name), lambda plugin=plugin: plugin) for name, plugin in extra]
    refuse_unknown_names([info for info, _source in candidates], {
        "plugins.allow": allow, ALLOW_ENV: names_from_env(ALLOW_ENV), "plugins.block": block,
        BLOCK_ENV: names_from_env(BLOCK_ENV)})

    for info, load in candidates:
        if not is_allowed(info, allowed, blocked):
            plugins.skipped.append(info)
            continue
        try:
            plugin = load()
            manager.register(plugin, name=info.name)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a broken plugin (sys.exit at import included) must not take the rest down
            plugins.failed.append(FailedPlugin(info, _describe_failure(error), traceback.format_exc()))
            continue
        try:
            manager.check_pending()
        except pluggy.PluginValidationError as error:
            manager.unregister(name=info.name)
            plugins.failed.append(FailedPlugin(info, f"invalid hook implementation: {error}"))
            continue
        plugins.loaded.append(info)

    _fill_registry(plugins)
    plugins.registry.failed_plugins = [failed.info.name for failed in plugins.failed]
    plugins.registry.failures = {failed.info.name: " ".join(failed.error.split()) for failed in plugins.failed}
    plugins.registry.skipped_plugins = [info.name for info in plugins.skipped]
    return plugins


def refuse_unknown_names(candidates: list[PluginInfo], lists: dict[str, Optional[Iterable[str]]]) -> None:
    """A name in an allow or block list that matches no plugin is a typo that would silently load, or block,
    nothing: a PluginError naming the list (``plugins.block`` or its environment variable) and the choices."""
    known = {name for info in candidates for name in (info.name, info.distribution) if name}
    for where, names in lists.items():
        unknown = [name for name in names or () if name not in known]
        if unknown:
            raise PluginError(f"{where}: {', '.join(map(repr, unknown))} is not an installed plugin (plugins and "
                              f"distributions: {', '.join(sorted(known)) or 'none'})")


def _describe_failure(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r}) while being imported"
    return f"{type(error).__name__}: {error}"


def _fill_registry(plugins: PluginSet) -> None:
    registry = plugins.registry
    hooks = [(kind, getattr(plugins.manager.hook, f"register_{kind}s")) for kind in KINDS]
    broken: dict[str, FailedPlugin] = {}
    for kind, hook in hooks:
        for impl in hook.get_hookimpls():  # registration order (pluggy lists them so; calls run LIFO)
            name = impl.plugin_name
            if name in broken:
                continue

            def register(cls: Any, _kind: str = kind, _plugin: str = name) -> None:
                registry.register(_kind, cls, _plugin)

            try:
                impl.function(register=register)
            except DuplicateNameError:
                raise
            except Exception as error:  # an invalid class or a crash inside the hook: this plugin only
                info = next(i for i in plugins.loaded if i.name == name)
                broken[name] = FailedPlugin(info, f"{type(error).__name__} in {hook.name}: {error}", traceback.format_exc())
    for name, failure in broken.items():
        plugins.loaded.remove(failure.info)
        plugins.failed.append(failure)
        for kind in KINDS:
            for entry_name in registry.by_plugin(name, kind):
                del registry.entries[kind][entry_name]
