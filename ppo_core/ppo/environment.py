"""An environment behind the same guard as rewards: a worker process (``isolation: process``) or a daemon thread
(``none``), a time limit per call (``timeout_s``), each answer checked, and a fault named by plugin, environment,
call and episode, stopping the run or, as ``on_error`` says, ending that batch's running episodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from ..config import EnvironmentConfig, RunConfig
from ..errors import ConfigError, EnvironmentPluginError, UserError
from ..plugin.contract import Record, RunContext
from ..plugin.environment import EnvReset, EnvStep, Environment, makes_own_records
from ..plugin.registry import Registry, validate_options
from ..rewards.isolation import IsolatedPlugin, WorkerFault, run_with_timeout


class IsolatedEnvironment(IsolatedPlugin):
    """Stands in for an environment: ``reset`` and ``step`` answered by its worker process."""

    kind = "environment"

    def reset(self, records: Sequence[Record]) -> Any:
        return self._request("reset", (list(records),), None)

    def step(self, states: Sequence[Any], responses: Sequence[str]) -> Any:
        return self._request("step", (list(states), list(responses)), None)


@dataclass
class GuardedEnvironment:
    """The configured environment; ``errors`` counts the faults ``on_error`` let pass."""

    environment: Union[Environment, IsolatedEnvironment]
    config: EnvironmentConfig
    plugin: str
    errors: int = 0

    @property
    def label(self) -> str:
        return f"environment '{self.config.name}' (plugin '{self.plugin}')"

    def close(self) -> None:
        if isinstance(self.environment, IsolatedEnvironment):
            self.environment.close()

    def reset(self, records: Sequence[Record]) -> EnvReset:
        """One episode per record; a fault always stops the run (there is no episode to go on with)."""
        answer = self._call("reset", (list(records),), records, "")
        return self._checked(answer, EnvReset, len(records), "reset", records, "")

    def step(self, states: Sequence[Any], responses: Sequence[str], prompts: Sequence[str], turn: int
             ) -> tuple[EnvStep, bool]:
        """One turn of the running episodes (``prompts``: their first prompts, to name an episode in a fault).
        Returns the answer and whether it is ``on_error``'s stand-in for a fault (every episode then ends)."""
        where = f"at turn {turn} "
        try:
            answer = self._call("step", (list(states), list(responses)), prompts, where)
            return self._checked(answer, EnvStep, len(states), "step", prompts, where), False
        except EnvironmentPluginError:
            if self.config.on_error == "raise":
                raise
        self.errors += 1
        reward = None if self.config.on_error == "skip" else float(self.config.on_error)
        n = len(states)
        return EnvStep(states=list(states), observations=[None] * n, rewards=[reward] * n, done=[True] * n), True

    def _invoke(self, method: str, args: tuple) -> Any:
        function = getattr(self.environment, method)
        if isinstance(self.environment, IsolatedEnvironment):
            return function(*args)  # the worker's pipe enforces timeout_s
        return run_with_timeout(function, args, self.config.timeout_s)

    def _call(self, method: str, args: tuple, items: Sequence, where: str) -> Any:
        try:
            return self._invoke(method, args)
        except WorkerFault as fault:
            raise EnvironmentPluginError(f"{self.label} {fault} in {method} {where}{_batch_label(items)}") from None
        except Exception as error:
            raise EnvironmentPluginError(f"{self.label} raised {type(error).__name__} in {method} {where}"
                                         f"{self._locate(method, args, items)}: {error}") from error

    def _locate(self, method: str, args: tuple, items: Sequence) -> str:
        """Call again one episode at a time to name the one that makes the environment raise."""
        if len(items) > 1:
            for index, item in enumerate(items):
                try:
                    self._invoke(method, tuple([column[index]] for column in args))
                except WorkerFault:
                    break  # a time-out or an exit: stop looking
                except Exception:
                    return f"on {_episode_label(index, item)}"
        return _batch_label(items)

    def _checked(self, answer: Any, kind: type, expected: int, method: str, items: Sequence, where: str) -> Any:
        if not isinstance(answer, kind):
            raise EnvironmentPluginError(f"{self.label} returned {type(answer).__name__} from {method} {where}"
                                         f"{_batch_label(items)}; expected an {kind.__name__}")
        if len(answer.states) != expected:
            raise EnvironmentPluginError(f"{self.label} returned {len(answer.states)} states from {method} for "
                                         f"{expected} episodes {where}{_batch_label(items)}")
        return answer


def _episode_label(index: int, item: Any) -> str:
    prompt = item.prompt_text if isinstance(item, Record) else str(item)
    return f"episode {index} (prompt {prompt if len(prompt) <= 60 else prompt[:57] + '...'!r})"


def _batch_label(items: Sequence) -> str:
    return f"on a batch of {len(items)} episodes (first: {_episode_label(0, items[0])})" if items else ""


def build_environment(config: EnvironmentConfig, registry: Registry, context: RunContext,
                      source: str = "config") -> GuardedEnvironment:
    """The configured environment in its own worker process (``isolation: process``) or in this one."""
    where, name_where = f"{source}: environment.options", f"{source}: environment.name"
    try:
        entry = registry.get("environment", config.name)
    except UserError as error:
        raise ConfigError(f"{name_where}: {error}") from None
    if config.isolation == "none":
        return GuardedEnvironment(registry.build("environment", config.name, config.options, context, where),
                                  config, entry.plugin)
    options = validate_options(entry, config.options, where)
    label = f"environment '{config.name}' (plugin '{entry.plugin}')"
    environment = IsolatedEnvironment(entry.cls, options, context, label, config.timeout_s)
    try:
        environment.wait_until_ready()
    except BaseException:
        environment.close()
        raise
    return GuardedEnvironment(environment, config, entry.plugin)


def records_source(config: EnvironmentConfig, registry: Registry, context: RunContext, source: str = "config"
                   ) -> Environment:
    """An in-process instance whose ``records(split)`` feeds the episodes when ``data.dataset`` is unset."""
    try:
        entry = registry.get("environment", config.name)
    except UserError as error:
        raise ConfigError(f"{source}: environment.name: {error}") from None
    if not makes_own_records(entry.cls):
        raise ConfigError(f"{source}: data.dataset: Field required (environment '{config.name}' of plugin "
                          f"'{entry.plugin}' makes no episodes of its own)")
    return registry.build("environment", config.name, config.options, context, where=f"{source}: environment.options",
                          name_where=f"{source}: environment.name")


def build_dataset(config: RunConfig, registry: Registry, context: RunContext, source: str = "config"):
    """The records a run plays: ``data.dataset``'s, or, when it is unset, the environment's own episodes."""
    if config.data.dataset is None:  # the config allows it only with an environment
        return records_source(config.environment, registry, context, source)
    return registry.build("dataset", config.data.dataset, config.data.options, context,
                          where=f"{source}: data.options", name_where=f"{source}: data.dataset")


def dataset_label(config: RunConfig) -> str:
    """How messages name the run's records: the dataset, or the environment that makes them."""
    return f"dataset '{config.data.dataset}'" if config.data.dataset else f"environment '{config.environment.name}'"
