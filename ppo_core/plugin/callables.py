"""Plain functions as rewards: each becomes a generated :class:`Reward` subclass, registered like a plugin's.

Two call forms are recognised from the function's parameters:

- ``f(samples) -> list[float | None]``: the :class:`Sample` objects, as a reward class's ``__call__`` gets them;
- TRL's ``f(prompts, completions, **fields)`` (a parameter named ``prompts`` or ``completions``): lists of
  texts, plus ``completion_ids``, ``solution`` and each record field as one list per name (a function without
  ``**kwargs`` gets only the names it declares).

With ``options=Model`` (the decorator's), the validated options come as the keyword argument ``options``.

A generated class pickles as (function, name, options model), the function by reference: a worker process
(``isolation: process``) imports the function's module to rebuild it. A lambda, a nested function or one defined
in a notebook cannot be imported there; :func:`check_importable` says so in one line.
"""

from __future__ import annotations

import copyreg
import importlib
import inspect
import sys
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel

from ..errors import PluginError
from .contract import NoOptions, Reward, Sample

SPEC_ATTRIBUTE = "__ppo_core_reward__"
TRL_NAMES = ("prompts", "completions")


class _FunctionRewardType(type):
    """The generated classes' metaclass: lets :mod:`copyreg` pickle them by their function (see below)."""


class FunctionReward(Reward, metaclass=_FunctionRewardType):
    """A reward that calls a plain function; :func:`reward_class` makes one subclass per function."""

    function: Callable[..., Any]
    trl_form: bool = False
    takes_options: bool = False
    keywords: Optional[frozenset] = None  # the keyword names a TRL-form function accepts; None: all (**kwargs)

    def __call__(self, samples: Sequence[Sample]) -> Sequence[Optional[float]]:
        extra = {"options": self.options} if self.takes_options else {}
        if not self.trl_form:
            return type(self).function(list(samples), **extra)
        arguments = {name: value for name, value in trl_arguments(samples).items()
                     if self.keywords is None or name in self.keywords}
        return type(self).function(**arguments, **extra)


def trl_arguments(samples: Sequence[Sample]) -> dict[str, list]:
    """TRL's reward-function arguments: prompts, completions, completion_ids, solution and the record fields."""
    arguments: dict[str, list] = {
        "prompts": [sample.prompt for sample in samples],
        "completions": [sample.response for sample in samples],
        "completion_ids": [list(sample.response_ids) for sample in samples],
        "solution": [sample.solution for sample in samples],
    }
    for name in sorted({key for sample in samples for key in sample.fields}):
        arguments.setdefault(name, [sample.fields.get(name) for sample in samples])
    return arguments


def reward(function: Optional[Callable] = None, *, name: Optional[str] = None,
           options: Optional[type[BaseModel]] = None):
    """Mark a function as a reward: ``@ppo_core.reward`` or ``@ppo_core.reward(name=..., options=Model)``.

    The function is returned unchanged (still callable as before); passing it in ``rewards=[...]`` registers it
    under ``name`` (default: the function's name) with ``options`` validated from the config's ``options:``.
    """

    def mark(target: Callable) -> Callable:
        if not callable(target):
            raise TypeError(f"ppo_core.reward decorates a function, not {type(target).__name__}")
        setattr(target, SPEC_ATTRIBUTE, (name, options))
        return target

    return mark(function) if function is not None else mark


def reward_class(function: Callable, name: Optional[str] = None,
                 options: Optional[type[BaseModel]] = None) -> type[FunctionReward]:
    """The :class:`Reward` subclass that scores with ``function`` (its decorator's name and options first)."""
    marked_name, marked_options = getattr(function, SPEC_ATTRIBUTE, (None, None))
    name = name or marked_name or getattr(function, "__name__", None)
    options = options or marked_options
    if not isinstance(name, str) or not name.isidentifier():
        raise PluginError(f"reward function {function!r} needs a name that is an identifier, got {name!r}; "
                          f"pass rewards={{'my_name': function}} or decorate it with @ppo_core.reward(name=...)")
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError) as error:
        raise PluginError(f"reward function '{name}': cannot read its signature ({error})") from None
    trl_form = any(parameter in parameters for parameter in TRL_NAMES)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    attributes = {
        "name": name,
        "Options": options or NoOptions,
        "function": staticmethod(function),
        "trl_form": trl_form,
        "takes_options": options is not None,
        "keywords": None if accepts_any else frozenset(parameters),
        "__module__": __name__,
        "__qualname__": f"FunctionReward[{name}]",
        "__doc__": inspect.getdoc(function),
    }
    return _FunctionRewardType(f"FunctionReward_{name}", (FunctionReward,), attributes)


def _rebuild(function: Callable, name: str, options: Optional[type[BaseModel]]) -> type[FunctionReward]:
    return reward_class(function, name, options)


def _reduce(cls: type) -> Any:
    if cls is FunctionReward:
        return "FunctionReward"  # the base class itself: by reference
    check_importable(cls.function, cls.name)
    options = cls.Options if cls.takes_options else None
    return _rebuild, (cls.__dict__["function"].__func__, cls.name, options)


copyreg.pickle(_FunctionRewardType, _reduce)


def check_importable(function: Callable, name: str) -> None:
    """Raise a one-line PluginError unless a worker process can import ``function`` by module and name."""
    module_name = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    module = sys.modules.get(module_name or "")
    why = None
    if "<lambda>" in qualname:
        why = "it is a lambda"
    elif "<locals>" in qualname:
        why = "it is defined inside another function"
    elif module_name == "__main__" and not getattr(module, "__file__", None):
        why = "it is defined in a notebook or an interactive session"
    else:
        try:
            found = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
            if found is not function and getattr(found, "__wrapped__", None) is not function:
                why = f"{module_name}.{qualname} names another object"
        except (ImportError, AttributeError, TypeError):
            why = f"{module_name}.{qualname} cannot be imported"
    if why:
        raise PluginError(f"reward function '{name}' cannot run in a worker process: {why} (define it at the top "
                          f"level of an importable module, or set `isolation: none` for reward '{name}')")
