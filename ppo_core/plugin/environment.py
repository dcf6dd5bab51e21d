"""The environment contract: multi-turn episodes as a plugin (docs/design.md, "Environments").

An environment is the third kind of plugin, beside rewards and datasets. The engine drives a batch of episodes:

1. ``reset(records)`` starts one episode per record and returns an :class:`EnvReset`: a state and a first
   prompt (text, or chat messages) per episode;
2. the policy answers every live episode (one turn: until eos, a stop string or the per-turn token limit);
3. ``step(states, responses)`` returns an :class:`EnvStep`: the new states, an observation to append (text,
   messages, or ``None``), a reward for the turn (a float, or ``None`` for none) and a done flag per episode;
4. episodes not done go back to 2, up to ``environment.max_turns``.

Both methods are batched and see only the episodes still running, in the order given. States are plain data
(JSON-serialisable: they may cross a process boundary and are checked so), never live objects.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ValidationError

from .contract import Message, NoOptions, Record, RunContext, Split

#: What a turn shows the model: plain text, or chat messages (``Message`` or ``{"role", "content"}`` mappings).
Turn = Union[str, Sequence[Union[Message, Mapping[str, Any]]]]


@dataclass(frozen=True)
class EnvReset:
    """What :meth:`Environment.reset` returns: one entry per record, in order.

    - ``states``: each episode's state, plain data (dicts, lists, strings, numbers, booleans, ``None``);
    - ``prompts``: each episode's first prompt: text, or chat messages (normalised to a tuple of ``Message``).
    """

    states: Sequence[Any]
    prompts: Sequence[Turn]

    def __post_init__(self) -> None:
        _same_lengths(self, ("states", "prompts"))
        object.__setattr__(self, "states", _plain_states(self.states))
        object.__setattr__(self, "prompts", tuple(_as_turn(p, f"prompt {i}") for i, p in enumerate(self.prompts)))


@dataclass(frozen=True)
class EnvStep:
    """What :meth:`Environment.step` returns: one entry per episode it was given, in order.

    - ``states``: the new states (plain data);
    - ``observations``: what to append before the model's next turn: text (a user turn), chat messages (their
      own roles, e.g. ``tool``), or ``None`` for nothing; ignored for an episode that is done;
    - ``rewards``: this turn's reward (a finite float) or ``None``; it sits on the turn's last action token;
    - ``done``: ``True`` ends the episode (the engine also ends it at ``max_turns`` or the token limit);
    - ``success`` (optional): the episode's outcome, read at the step that ends it (``None``: unknown, left out
      of ``env/success_rate``; an episode the engine cuts off at ``max_turns`` or the token limit counts as unsolved
      once the environment has reported any episode's success);
    - ``tool_calls`` (optional): how many tool calls this turn made (summed into ``env/tool_calls``).
    """

    states: Sequence[Any]
    observations: Sequence[Optional[Turn]]
    rewards: Sequence[Optional[float]]
    done: Sequence[bool]
    success: Optional[Sequence[Optional[bool]]] = None
    tool_calls: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        _same_lengths(self, ("states", "observations", "rewards", "done", "success", "tool_calls"))
        object.__setattr__(self, "states", _plain_states(self.states))
        object.__setattr__(self, "observations", tuple(
            None if o is None else _as_turn(o, f"observation {i}") for i, o in enumerate(self.observations)))
        object.__setattr__(self, "rewards", tuple(_reward(r, i) for i, r in enumerate(self.rewards)))
        object.__setattr__(self, "done", tuple(_flag(d, f"done {i}") for i, d in enumerate(self.done)))
        n = len(self.states)
        success = self.success if self.success is not None else [None] * n
        object.__setattr__(self, "success", tuple(
            None if s is None else _flag(s, f"success {i}") for i, s in enumerate(success)))
        tool_calls = self.tool_calls if self.tool_calls is not None else [0] * n
        object.__setattr__(self, "tool_calls", tuple(_count(c, i) for i, c in enumerate(tool_calls)))


class Environment:
    """Base class of an environment.

    Subclasses set ``name`` and, if they take options, ``Options`` (a pydantic model validated from the
    config's ``environment.options``), and implement :meth:`reset` and :meth:`step`. Episodes come from the
    configured dataset (``data.dataset``: ``reset`` receives its records), or, when ``data.dataset`` is unset,
    from the environment's own :meth:`records` (implement it like a Dataset's).
    """

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel, context: RunContext = RunContext()):
        self.options = options
        self.context = context

    def records(self, split: Split) -> Iterator[Record]:
        """Optional: this environment's own episodes for a split (used when ``data.dataset`` is unset)."""
        raise NotImplementedError(f"environment {type(self).__name__} makes no records of its own")

    def reset(self, records: Sequence[Record]) -> EnvReset:
        """Start one episode per record: its state and first prompt."""
        raise NotImplementedError(f"environment {type(self).__name__} does not implement reset()")

    def step(self, states: Sequence[Any], responses: Sequence[str]) -> EnvStep:
        """Answer one turn of each running episode: ``responses[i]`` is the model's text for ``states[i]``."""
        raise NotImplementedError(f"environment {type(self).__name__} does not implement step()")


def makes_own_records(environment: Union[Environment, type]) -> bool:
    """Whether an environment (class or instance) implements :meth:`Environment.records`."""
    cls = environment if isinstance(environment, type) else type(environment)
    return cls.records is not Environment.records


def _same_lengths(result: Any, names: Sequence[str]) -> None:
    lengths = {name: len(getattr(result, name)) for name in names if getattr(result, name) is not None}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        raise ValueError(f"{type(result).__name__} fields differ in length ({shown})")


def _plain_states(states: Sequence[Any]) -> tuple[Any, ...]:
    for index, state in enumerate(states):
        try:
            json.dumps(state, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"state {index} is not plain data (JSON-serialisable): {error}") from None
    return tuple(states)


def _as_turn(value: Any, what: str) -> Union[str, tuple[Message, ...]]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value:
        try:
            return tuple(m if isinstance(m, Message) else Message.model_validate(m) for m in value)
        except ValidationError as error:
            raise ValueError(f"{what}: not chat messages: {error.errors()[0]['msg']}") from None
    raise ValueError(f"{what}: expected text or a non-empty list of chat messages, got {type(value).__name__}")


def _reward(value: Any, index: int) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"reward {index}: expected a finite float or None, got {value!r}")
    return float(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected True or False, got {value!r}")
    return value


def _count(value: Any, index: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"tool_calls {index}: expected a count (an int >= 0), got {value!r}")
    return value


__all__ = ["EnvReset", "EnvStep", "Environment", "Turn", "makes_own_records"]
