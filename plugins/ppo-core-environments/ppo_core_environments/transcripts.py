"""SFT transcript sources: the bundled environments played by a good policy, as chat records for
``ppo-core sft`` warm starts.

Each environment has a dataset ``<environment>_transcripts`` that takes the environment's own options (the
same episodes, train and eval, as the environment makes) and yields ``{"messages": [user, assistant,
tool/user, assistant, ...], "success": ...}``: the prompt, then every turn the policy played and every
observation the environment answered, exactly as :func:`play` got them from ``reset`` and ``step``.
"""

from __future__ import annotations

import random
from typing import Any, Callable, ClassVar, Iterator, Optional, Union

from pydantic import Field, model_validator

from ppo_core import Dataset, Environment, Message, Record, RunContext, Split
from ppo_core.errors import ConfigError
from ppo_core.plugin.loading import load_plugins

from .calculator import Calculator, CalculatorOptions
from .episodes import check_split
from .guess_number import GuessNumber, GuessNumberOptions
from .retry import RetryOptions, RetryWithFeedback

__all__ = ["CalculatorTranscriptOptions", "CalculatorTranscripts", "GuessNumberTranscriptOptions",
           "GuessNumberTranscripts", "RetryTranscripts", "RetryTranscriptOptions", "play"]

MAX_TURNS = 1000  # a good policy ends long before; this only stops an environment that never says done


def as_messages(turn: Union[str, tuple[Message, ...]]) -> list[dict[str, str]]:
    """A prompt or observation as chat messages: text is a user turn."""
    if isinstance(turn, str):
        return [{"role": "user", "content": turn}]
    return [message.model_dump() for message in turn]


def play(environment: Environment, record: Record, respond: Callable[[Any], str]) -> tuple[list[dict], Optional[bool]]:
    """One episode of ``record``, the policy answering ``respond(state)``: its messages and its success."""
    reset = environment.reset([record])
    state, messages = reset.states[0], as_messages(reset.prompts[0])
    for _ in range(MAX_TURNS):
        response = respond(state)
        step = environment.step([state], [response])
        messages.append({"role": "assistant", "content": response})
        if step.done[0]:
            return messages, step.success[0]
        if step.observations[0] is not None:
            messages.extend(as_messages(step.observations[0]))
        state = step.states[0]
    raise RuntimeError(f"environment '{environment.name}' did not end an episode in {MAX_TURNS} turns")


class _Transcripts(Dataset):
    """The environment's own episodes played by its ``good_response``; subclasses set ``environment``."""

    environment: ClassVar[type[Environment]]

    def __init__(self, options, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._environment = self.environment(self.environment_options(), context)

    def environment_options(self):
        return self.options

    def episodes(self, split: Split) -> Iterator[Record]:
        return self._environment.records(split)

    def respond(self, record: Record, index: int, split: Split) -> Callable[[Any], str]:
        return lambda state: self._environment.good_response(record, state)

    def episode_rng(self, split: Split, index: int) -> random.Random:
        """The episode's own generator, seeded by the options' seed, the split and the episode's index: which
        episodes take another path (and where) is fixed per episode, whatever else is read or drawn."""
        return random.Random(f"{self.options.seed}/{split}/{index}")

    def records(self, split: Split) -> Iterator[Record]:
        check_split(split)
        for index, record in enumerate(self.episodes(split)):
            messages, success = play(self._environment, record, self.respond(record, index, split))
            # built directly: from_dict would read the last assistant turn as the solution (TRL's single-turn
            # shape); a transcript is the whole conversation, every assistant turn a target of multi-turn SFT
            yield Record(messages=[Message(**message) for message in messages], fields={"success": success})


class CalculatorTranscriptOptions(CalculatorOptions):
    direct_answers: float = Field(0.0, ge=0, le=1, description="share of episodes answered at once, without the "
                                  "tool (the right answer, as ordinary text states a product): a start taught on "
                                  "them has not learned when the tool is needed")


class CalculatorTranscripts(_Transcripts):
    """``calculator`` episodes: call the tool, answer its result; or (``direct_answers``) answer at once."""

    name = "calculator_transcripts"
    Options = CalculatorTranscriptOptions
    environment = Calculator

    def environment_options(self) -> CalculatorOptions:
        return CalculatorOptions.model_validate(self.options.model_dump(include=set(CalculatorOptions.model_fields)))

    def respond(self, record: Record, index: int, split: Split) -> Callable[[Any], str]:
        if self.episode_rng(split, index).random() < self.options.direct_answers:
            return lambda state: f"<answer>{record.solution}</answer>"
        return super().respond(record, index, split)


class GuessNumberTranscriptOptions(GuessNumberOptions):
    linear_search: float = Field(0.0, ge=0, le=1, description="share of episodes played by counting up: each "
                                 "guess the smallest number still open (mostly out of guesses before the secret): "
                                 "a start taught on them can bisect but prefers to count")


class GuessNumberTranscripts(_Transcripts):
    """``guess_number`` episodes played by binary search; or (``linear_search``) by counting up."""

    name = "guess_number_transcripts"
    Options = GuessNumberTranscriptOptions
    environment = GuessNumber

    def environment_options(self) -> GuessNumberOptions:
        return GuessNumberOptions.model_validate(self.options.model_dump(include=set(GuessNumberOptions.model_fields)))

    def respond(self, record: Record, index: int, split: Split) -> Callable[[Any], str]:
        if self.episode_rng(split, index).random() < self.options.linear_search:
            return lambda state: self._environment.linear_response(record, state)
        return super().respond(record, index, split)


class RetryTranscriptOptions(RetryOptions):
    dataset: str = Field("reverse", min_length=1, description="the registered dataset whose records are played")
    dataset_options: dict[str, Any] = Field(default_factory=dict, description="that dataset's options")
    wrong_first: float = Field(0.0, ge=0, le=1, description="share of episodes whose first answer is wrong (one "
                               "character changed), so the transcript shows the feedback and the fix")
    seed: int = Field(0, description="seed of which episodes start wrong, and where")
    eval_answers: bool = Field(False, description="the eval split holds the dataset's own records (prompt and "
                               "solution) instead of transcripts: SFT's eval/loss and eval/exact_match are then "
                               "the first answer's, greedy, so `sft.stop_at` can stop at a success rate")

    @model_validator(mode="after")
    def _room_to_retry(self) -> "RetryTranscriptOptions":
        if self.wrong_first and self.max_attempts < 2:
            raise ValueError("wrong_first needs max_attempts >= 2 (a wrong first answer leaves no attempt)")
        return self


class RetryTranscripts(_Transcripts):
    """``retry_with_feedback`` over any registered dataset: the right answer, or (``wrong_first``) a near miss,
    the feedback, then the right answer."""

    name = "retry_with_feedback_transcripts"
    Options = RetryTranscriptOptions
    environment = RetryWithFeedback

    def __init__(self, options: RetryTranscriptOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        if options.dataset == self.name:
            raise ConfigError(f"dataset '{self.name}': option dataset must name another dataset")
        where = f"dataset '{self.name}'"
        self._dataset = load_plugins().registry.build("dataset", options.dataset, options.dataset_options, context,
                                                      where=f"{where}: dataset_options", name_where=f"{where}: dataset")

    def environment_options(self) -> RetryOptions:
        return RetryOptions.model_validate(self.options.model_dump(include=set(RetryOptions.model_fields)))

    def episodes(self, split: Split) -> Iterator[Record]:
        return self._dataset.records(split)

    def records(self, split: Split) -> Iterator[Record]:
        if split == "eval" and self.options.eval_answers:
            return self.episodes(split)
        return super().records(split)

    def respond(self, record: Record, index: int, split: Split) -> Callable[[Any], str]:
        rng = self.episode_rng(split, index)
        starts_wrong = rng.random() < self.options.wrong_first

        def answer(state: dict) -> str:
            right = self._environment.good_response(record, state)
            return near_miss(right, rng) if starts_wrong and state["attempt"] == 0 else right

        return answer


def near_miss(answer: str, rng: random.Random) -> str:
    """``answer`` with one character changed (``a``, or ``b`` where it was ``a``)."""
    if not answer:
        return "a"
    position = rng.randrange(len(answer))
    return answer[:position] + ("b" if answer[position] == "a" else "a") + answer[position + 1:]
