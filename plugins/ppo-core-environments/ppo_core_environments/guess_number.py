"""``guess_number``: find a secret number in a range by guessing; each wrong guess is told ``higher`` (the
secret is higher) or ``lower``; or (``feedback: range``) the range still open, ``33-48``, which spares the
player the bookkeeping but not the choice of the next guess. Finding it at guess g scores ``decay ** (g - 1)``;
running out of guesses scores 0.0.

Episodes: its own (``"guess 17-48"``, the secret as the solution; seeded, train and eval disjoint), or any
dataset whose records carry a ``solution`` (the secret) and the fields ``low`` and ``high``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Iterator, Literal, Sequence

from pydantic import Field, model_validator

from ppo_core import EnvReset, Environment, EnvStep, Record, RunContext, Split
from ppo_core.errors import DataError

from .episodes import EpisodeOptions, TurnResult, check_split, draw_splits, solutions_of, step_each

__all__ = ["GuessNumber", "GuessNumberOptions"]

NUMBER = re.compile(r"-?[0-9]{1,18}")


class GuessNumberOptions(EpisodeOptions):
    low: int = Field(1, ge=-10**9, le=10**9, description="smallest number of any episode's range")
    high: int = Field(99, ge=-10**9, le=10**9, description="largest number of any episode's range")
    span: int = Field(32, ge=1, le=10**9, description="numbers in one episode's range (drawn inside low..high)")
    max_guesses: int = Field(6, ge=1, le=1000, description="guesses per episode (binary search needs "
                             "floor(log2(span)) + 1)")
    decay: float = Field(0.9, gt=0, le=1, description="reward for finding the number at guess g: decay ** (g - 1)")
    feedback: Literal["direction", "range"] = Field("direction", description="what a wrong guess hears: "
                                                    "'higher' or 'lower' (direction), or the range still open, "
                                                    "e.g. '33-48' (range)")

    @model_validator(mode="after")
    def _span_fits(self) -> "GuessNumberOptions":
        if self.span > self.high - self.low + 1:
            raise ValueError(f"span ({self.span}) must fit in low..high ({self.low}..{self.high})")
        return self


class GuessNumber(Environment):
    """Higher or lower, with a guess budget."""

    name: ClassVar[str] = "guess_number"
    Options = GuessNumberOptions

    def __init__(self, options: GuessNumberOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._episodes = draw_splits(self.name, options, self._draw)

    def _draw(self, rng) -> tuple[int, int]:
        o: GuessNumberOptions = self.options
        start = rng.randint(o.low, o.high - o.span + 1)
        return start, rng.randint(start, start + o.span - 1)

    def records(self, split: Split) -> Iterator[Record]:
        check_split(split)
        for start, secret in self._episodes[split]:
            end = start + self.options.span - 1
            yield Record.from_dict({"prompt": f"guess {start}-{end}", "solution": str(secret), "low": start,
                                    "high": end})

    def reset(self, records: Sequence[Record]) -> EnvReset:
        return EnvReset(states=[self._start(i, r) for i, r in enumerate(records)],
                        prompts=[list(r.messages) for r in records])

    def _start(self, index: int, record: Record) -> dict:
        secret = solutions_of(self.name, index, record)[0]
        low, high = record.fields.get("low"), record.fields.get("high")
        if not NUMBER.fullmatch(secret) or not all(type(bound) is int for bound in (low, high)):
            raise DataError(f"environment '{self.name}': record {index} needs a whole-number solution and whole "
                            f"numbers 'low' and 'high' (got {secret!r}, {low!r}, {high!r})")
        return {"secret": int(secret), "low": low, "high": high, "guesses": 0}

    def step(self, states: Sequence[Any], responses: Sequence[str]) -> EnvStep:
        return step_each(states, responses, self._turn)

    def _turn(self, state: dict, response: str) -> TurnResult:
        guesses, text, secret = state["guesses"] + 1, response.strip(), state["secret"]
        guess = int(text) if NUMBER.fullmatch(text) else None
        if guess == secret:
            return TurnResult({**state, "guesses": guesses}, None, self.options.decay ** (guesses - 1), True, True)
        if guesses >= self.options.max_guesses:
            return TurnResult({**state, "guesses": guesses}, None, 0.0, True, False)
        if guess is None:
            return TurnResult({**state, "guesses": guesses}, "say a number", None, False)
        # the range still consistent with every answer so far (what a good player keeps track of)
        low, high = (max(state["low"], guess + 1), state["high"]) if secret > guess else \
            (state["low"], min(state["high"], guess - 1))
        state = {**state, "guesses": guesses, "low": low, "high": high}
        if self.options.feedback == "range":
            return TurnResult(state, f"{low}-{high}", None, False)
        return TurnResult(state, "higher" if secret > guess else "lower", None, False)

    @staticmethod
    def good_response(record: Record, state: dict) -> str:
        """A good policy's next guess: the middle of the range still open (binary search)."""
        return str((state["low"] + state["high"]) // 2)

    @staticmethod
    def linear_response(record: Record, state: dict) -> str:
        """A weak policy's next guess: the smallest number still open (counting up from the range's start)."""
        return str(state["low"])
