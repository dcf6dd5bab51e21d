"""Synthetic word tasks a tiny character-level model can learn: ``reverse``, ``copy`` and ``sort``.

No files: the records come from ``random.Random(seed)`` (never the global random state), so a seed always
gives the same records. Words are random lowercase strings of ``min_len``..``max_len`` letters, drawn as the
TRL baseline's ``make_tiny_models.py`` draws them (length first, then each letter), so with the defaults
(``size=512, seed=0, min_len=3, max_len=8``) the train split of ``reverse`` *is* the benchmark's
``prompts.jsonl``, record for record, repeats included.

The eval split continues the same random stream after the train words and keeps only words whose key (the
word; for ``sort`` its letters, since anagrams share an answer) is in neither the train split nor earlier in
the eval split. So eval never overlaps train, and changing ``eval_size`` never changes the train split.
"""

from __future__ import annotations

import abc
import math
import random
import string
from typing import ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ppo_core import Dataset, Record, RunContext, Split
from ppo_core.errors import ConfigError

__all__ = ["CopyDataset", "ReverseDataset", "SortDataset", "SyntheticOptions", "draw_word"]

LETTERS = string.ascii_lowercase
MAX_RECORDS = 1_000_000  # the words are drawn up front: a typo must not hang the run or fill the memory
MAX_WORD = 1_000


class SyntheticOptions(BaseModel):
    """Options of ``reverse``, ``copy`` and ``sort`` (whole numbers only: ``size: true`` is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    size: int = Field(512, ge=1, le=MAX_RECORDS, description="records in the train split")
    eval_size: int = Field(64, ge=0, le=MAX_RECORDS, description="records in the eval split (none of its words is "
                           "in train)")
    seed: int = Field(0, description="seed of random.Random; independent of the run's seed")
    min_len: int = Field(3, ge=1, le=MAX_WORD, description="shortest word, in letters")
    max_len: int = Field(8, ge=1, le=MAX_WORD, description="longest word, in letters")

    @model_validator(mode="after")
    def _lengths_in_order(self) -> "SyntheticOptions":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must not exceed max_len ({self.max_len})")
        return self


def draw_word(rng: random.Random, min_len: int, max_len: int) -> str:
    """One word, drawn exactly as the TRL baseline draws it: its length, then each letter."""
    length = rng.randint(min_len, max_len)
    return "".join(rng.choice(LETTERS) for _ in range(length))


class _WordTask(Dataset, abc.ABC):
    """A task ``"<name>: <word> ="`` -> ``solve(word)``; subclasses set ``name`` and ``solve``."""

    Options: ClassVar[type[BaseModel]] = SyntheticOptions

    def __init__(self, options: SyntheticOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._words = self._draw_splits()

    @staticmethod
    @abc.abstractmethod
    def solve(word: str) -> str:
        """The task's answer for ``word``."""

    @staticmethod
    def key(word: str) -> str:
        """Two words with the same key count as the same item for the train/eval split."""
        return word

    @staticmethod
    def count_keys(min_len: int, max_len: int) -> int:
        """How many distinct keys words of these lengths have."""
        return sum(len(LETTERS) ** length for length in range(min_len, max_len + 1))

    def prompt(self, word: str) -> str:
        return f"{self.name}: {word} ="

    def records(self, split: Split) -> Iterator[Record]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        for word in self._words[split]:
            yield Record.from_dict({"prompt": self.prompt(word), "solution": self.solve(word)})

    def words(self, split: Split) -> list[str]:
        """The words of a split, in order (a copy)."""
        return list(self._words[split])

    def _draw_splits(self) -> dict[str, list[str]]:
        o: SyntheticOptions = self.options
        rng = random.Random(o.seed)
        train = [draw_word(rng, o.min_len, o.max_len) for _ in range(o.size)]
        seen = {self.key(word) for word in train}
        left = self.count_keys(o.min_len, o.max_len) - len(seen)
        if o.eval_size > left:
            raise ConfigError(
                f"dataset '{self.name}': eval_size={o.eval_size} is more than the {left} words of "
                f"{o.min_len}..{o.max_len} letters that the train split does not already use; lower eval_size "
                f"or size, or widen min_len..max_len"
            )
        evaluation: list[str] = []
        budget = 1000 * o.eval_size + 100_000  # rejection sampling; plenty unless the space is nearly used up
        while len(evaluation) < o.eval_size:
            if budget == 0:
                raise ConfigError(
                    f"dataset '{self.name}': could not draw {o.eval_size} eval words unseen in the train split "
                    f"(only {len(evaluation)} found); lower eval_size or size, or widen min_len..max_len"
                )
            budget -= 1
            word = draw_word(rng, o.min_len, o.max_len)
            key = self.key(word)
            if key not in seen:
                seen.add(key)
                evaluation.append(word)
        return {"train": train, "eval": evaluation}


class ReverseDataset(_WordTask):
    """``reverse: ynbiqp =`` -> ``pqibny`` (the benchmark's task)."""

    name = "reverse"
    Options = SyntheticOptions

    @staticmethod
    def solve(word: str) -> str:
        return word[::-1]


class CopyDataset(_WordTask):
    """``copy: abc =`` -> ``abc``: the easiest task, a check that learning happens at all."""

    name = "copy"
    Options = SyntheticOptions

    @staticmethod
    def solve(word: str) -> str:
        return word


class SortDataset(_WordTask):
    """``sort: dbca =`` -> ``abcd``: the word's letters in alphabetical order (repeats kept).

    Anagrams share an answer, so the train/eval split keys on the sorted letters: no eval answer is in train.
    """

    name = "sort"
    Options = SyntheticOptions

    @staticmethod
    def solve(word: str) -> str:
        return "".join(sorted(word))

    @staticmethod
    def key(word: str) -> str:
        return "".join(sorted(word))

    @staticmethod
    def count_keys(min_len: int, max_len: int) -> int:
        # multisets of `length` letters out of 26
        return sum(math.comb(len(LETTERS) + length - 1, length) for length in range(min_len, max_len + 1))
