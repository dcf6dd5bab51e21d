"""What a plugin author imports: records, samples, and the Reward, HiddenStateReward and Dataset base classes.

The Environment base class and its batched results live in :mod:`ppo_core.plugin.environment`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

Solution = Union[str, list[str]]
Split = Literal["train", "eval"]
StopReason = Literal["eos", "length"]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str = Field(min_length=1)
    content: str


class Record(BaseModel):
    """One prompt of a dataset: the conversation so far, its accepted solution(s), and any other fields.

    Three input forms are accepted by :meth:`from_dict`:

    - seed form: ``{"role": "user", "content": "...", "solution": "..." or [...]}``
    - chat form: ``{"messages": [{"role": ..., "content": ...}, ...], "solution": ...}``; without a ``solution``,
      a final assistant turn after at least one other turn is the solution (TRL's ``messages`` column)
    - plain form: ``{"prompt": "...", "solution": ...}``, or ``{"prompt": [messages...]}`` (TRL's conversational
      ``prompt`` column, read as the chat form)

    Keys other than these go to :attr:`fields` and reach the rewards unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[Message] = Field(min_length=1)
    solution: Optional[Solution] = None
    fields: dict[str, Any] = Field(default_factory=dict)

    @field_validator("solution")
    @classmethod
    def _solution_list_not_empty(cls, value: Optional[Solution]) -> Optional[Solution]:
        if isinstance(value, list) and not value:
            raise ValueError("a list of solutions must hold at least one string")
        return value

    @classmethod
    def from_dict(cls, obj: Any) -> "Record":
        """Validate a record in any of the three forms; raises pydantic ``ValidationError``."""
        return cls.model_validate(_normalise_record(obj))

    @property
    def solutions(self) -> list[str]:
        return _as_list(self.solution)

    @property
    def prompt_text(self) -> str:
        """The conversation as raw text, for tokenizers without a chat template (or with it turned off)."""
        return "\n".join(message.content for message in self.messages)


def _normalise_record(obj: Any) -> Any:
    if not isinstance(obj, Mapping):
        return obj  # pydantic reports "Input should be a valid dictionary"
    data = dict(obj)
    if "messages" in data:
        messages = data.pop("messages")
        if "solution" not in data and _ends_with_an_answer(messages):
            *messages, answer = messages
            data["solution"] = answer["content"]
    elif "prompt" in data:
        prompt = data.pop("prompt")
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    elif "content" in data or "role" in data:
        messages = [{"role": data.pop("role", "user"), "content": data.pop("content", _MISSING)}]
        if messages[0]["content"] is _MISSING:
            del messages[0]["content"]
    else:
        messages = _MISSING
    out: dict[str, Any] = {}
    if messages is not _MISSING:
        out["messages"] = messages
    if "solution" in data:
        out["solution"] = data.pop("solution")
    out["fields"] = data
    return out


_MISSING = object()


def _ends_with_an_answer(messages: Any) -> bool:
    """A conversation whose last turn is the assistant's text answer to at least one turn before it."""
    if not isinstance(messages, list) or len(messages) < 2:
        return False
    last = messages[-1]
    return isinstance(last, Mapping) and last.get("role") == "assistant" and isinstance(last.get("content"), str)


def _as_list(solution: Optional[Solution]) -> list[str]:
    if solution is None:
        return []
    if isinstance(solution, str):
        return [solution]
    return list(solution)


@dataclass(frozen=True)
class Sample:
    """One sampled response, as a reward sees it. For an environment's episode, ``response`` (and
    ``response_ids``, ``stop_reason``) is the model's last turn, ``prompt`` the first prompt, and ``transcript``
    and ``turns`` hold the whole episode."""

    prompt: str
    response: str
    response_ids: tuple[int, ...]
    solution: Optional[Solution]
    stop_reason: StopReason
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: The prompt's token ids exactly as the engine ran them (chat template, special tokens, truncation
    #: applied); ``None`` when the sample was not made by the engine.
    prompt_ids: Optional[tuple[int, ...]] = None
    #: The conversation the prompt was rendered from (after any truncation), for a reward that renders it with
    #: its own chat template; ``None`` when the sample was not made from a record.
    messages: Optional[tuple[Message, ...]] = None
    #: An environment episode's conversation: the first prompt's messages, then each turn's answer (role
    #: ``assistant``) and the observations after it. Empty for a one-prompt, one-response sample.
    transcript: tuple[Message, ...] = ()
    #: An environment episode's answers, one per turn (``response`` is the last). Empty for a one-response sample.
    turns: tuple[str, ...] = ()

    @property
    def solutions(self) -> list[str]:
        """The accepted solutions as a list (empty when the record has none)."""
        return _as_list(self.solution)


class NoOptions(BaseModel):
    """Options model for a plugin that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class RunContext:
    """What a plugin may need to know about the run it serves."""

    device: str = "cpu"
    seed: int = 0
    tokenizer: Any = None
    policy_path: Optional[str] = None
    #: the run config's ``model.trust_remote_code``: the only switch that lets a plugin load code-shipping models
    trust_remote_code: bool = False


class Reward:
    """Base class of a reward.

    Subclasses set ``name`` and, if they take options, ``Options`` (a pydantic model). ppo-core validates
    the config's ``options:`` against ``Options`` and passes the result to ``__init__``.
    ``__call__`` scores a batch: it returns exactly one float per sample, or ``None`` to abstain.
    """

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel, context: RunContext = RunContext()):
        self.options = options
        self.context = context

    def __call__(self, samples: Sequence[Sample]) -> Sequence[Optional[float]]:
        raise NotImplementedError(f"reward {type(self).__name__} does not implement __call__")


class HiddenStateReward(Reward):
    """Base class of a reward that can also score from the frozen reference model's final hidden states.

    For a learned reward whose head reads the final hidden state of the checkpoint the policy starts from: the PPO
    engine already runs that checkpoint, frozen, as its reference model over every sample, so it hands the
    reference's hidden state at each sample's last real token to :meth:`score_hidden` and the reward runs no
    forward pass of its own (docs/design.md, D10).

    Whether an instance can is its own decision, made in ``__init__``: set :attr:`reads_reference_hidden` to
    True only when this instance's input is exactly that hidden state (same backbone, same weights, same
    vocabulary). ``__call__`` must still score from the samples alone: evaluation has no reference model.
    """

    #: True when this instance scores from the reference's hidden states; subclasses decide in ``__init__``.
    reads_reference_hidden: bool = False

    def score_hidden(self, samples: Sequence[Sample], hidden: Any) -> Sequence[Optional[float]]:
        """One float (or ``None``) per sample from ``hidden`` [len(samples), H], the reference model's final
        hidden states at each sample's last real token. Called only while :attr:`reads_reference_hidden`."""
        raise NotImplementedError(f"reward {type(self).__name__} does not implement score_hidden")


def reads_reference_hidden(reward: Reward) -> bool:
    """Whether ``reward`` declared that it scores from the reference model's hidden states."""
    return isinstance(reward, HiddenStateReward) and reward.reads_reference_hidden


class Dataset:
    """Base class of a dataset.

    Subclasses set ``name`` and ``Options`` and implement :meth:`records`, which yields validated
    :class:`Record` objects for a split, streaming (a large file is never read whole).
    """

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel, context: RunContext = RunContext()):
        self.options = options
        self.context = context

    def records(self, split: Split) -> Iterator[Record]:
        raise NotImplementedError(f"dataset {type(self).__name__} does not implement records()")


__all__ = [
    "Dataset",
    "HiddenStateReward",
    "Message",
    "NoOptions",
    "Record",
    "Reward",
    "RunContext",
    "Sample",
    "Solution",
    "Split",
    "StopReason",
    "reads_reference_hidden",
]
