"""What the bundled environments share: their own episodes (seeded, train and eval disjoint by construction),
one turn's outcome, and the batched step built from it."""

from __future__ import annotations

import random
from typing import Any, Callable, Hashable, NamedTuple, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field

from ppo_core import EnvStep, Record
from ppo_core.errors import ConfigError, DataError

__all__ = ["EpisodeOptions", "TurnResult", "draw_splits", "solutions_of", "step_each"]

MAX_RECORDS = 1_000_000  # the episodes are drawn up front: a typo must not hang the run or fill the memory


class EpisodeOptions(BaseModel):
    """The episode generator's options, shared by ``calculator`` and ``guess_number`` (whole numbers only)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    size: int = Field(512, ge=1, le=MAX_RECORDS, description="episodes in the train split")
    eval_size: int = Field(256, ge=0, le=MAX_RECORDS, description="episodes in the eval split (none is in train)")
    seed: int = Field(0, description="seed of random.Random; independent of the run's seed")


def draw_splits(name: str, options: EpisodeOptions, draw: Callable[[random.Random], Hashable]) -> dict[str, list]:
    """``size`` train episodes, then ``eval_size`` eval episodes new to both splits, from ``draw(rng)``.

    The eval split continues the train split's random stream and keeps only unseen episodes, so eval never
    overlaps train and ``eval_size`` never changes the train split (as the ``reverse`` dataset does it)."""
    rng = random.Random(options.seed)
    train = [draw(rng) for _ in range(options.size)]
    seen = set(train)
    evaluation: list = []
    budget = 1000 * options.eval_size + 100_000  # rejection sampling; plenty unless the space is nearly used up
    while len(evaluation) < options.eval_size:
        if budget == 0:
            raise ConfigError(f"environment '{name}': could not draw {options.eval_size} eval episodes unseen in "
                              f"the train split (only {len(evaluation)} found); lower eval_size or size, or widen "
                              f"the episode space")
        budget -= 1
        episode = draw(rng)
        if episode not in seen:
            seen.add(episode)
            evaluation.append(episode)
    return {"train": train, "eval": evaluation}


def check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def solutions_of(name: str, index: int, record: Record) -> list[str]:
    """A record's accepted answers; an environment scoring answers needs them."""
    if not record.solutions:
        raise DataError(f"environment '{name}': record {index} has no solution (it scores answers against one)")
    return record.solutions


class TurnResult(NamedTuple):
    """One episode's turn: what :class:`ppo_core.EnvStep` holds for it."""

    state: Any
    observation: Union[str, list[dict], None]
    reward: Optional[float]
    done: bool
    success: Optional[bool] = None
    tool_calls: int = 0


def step_each(states: Sequence[Any], responses: Sequence[str], turn: Callable[[Any, str], TurnResult]) -> EnvStep:
    """The batched step: ``turn(state, response)`` for each running episode, in order."""
    results = [turn(state, response) for state, response in zip(states, responses, strict=True)]
    return EnvStep(states=[r.state for r in results], observations=[r.observation for r in results],
                   rewards=[r.reward for r in results], done=[r.done for r in results],
                   success=[r.success for r in results], tool_calls=[r.tool_calls for r in results])
