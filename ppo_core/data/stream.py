"""Records from a dataset plugin: an endless, reproducible, buffer-shuffled stream (train) or the first N (eval)."""

from __future__ import annotations

import itertools
import random
from typing import Callable, Iterator, Optional

from ..config import DataConfig
from ..errors import DataError, PluginError, UserError
from ..plugin.contract import Dataset, Record, Split
from ..plugin.environment import Environment
from .prompts import EncodedPrompt, LongPrompts, encode_record

SHUFFLE_BUFFER = 10_000


class PromptStream:
    """An endless, reproducible stream of records: pass after pass over a split, each pass shuffled through a
    buffer (so a large file is never held whole). ``position`` (pass, records taken in it) is all a checkpoint
    needs to resume the stream exactly. ``long_prompts`` counts the prompts :meth:`take_prompts` truncated or
    skipped, over the whole run."""

    def __init__(self, dataset: Dataset, split: Split, seed: int, shuffle: bool, name: str = "dataset"):
        self.dataset = dataset
        self.split = split
        self.seed = seed
        self.shuffle = shuffle
        self.name = name
        self.epoch = 0
        self.taken = 0
        self._iterator: Optional[Iterator[Record]] = None
        self.long_prompts = LongPrompts()
        self._pass_length: Optional[int] = None  # records in a whole pass, once one has ended

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "taken": self.taken}

    def seek(self, position: dict[str, int]) -> None:
        self.epoch, self.taken = int(position["epoch"]), 0
        self._iterator = self._pass(self.epoch)
        for _ in range(int(position["taken"])):
            self._next_in_pass()

    def take(self, count: int) -> list[Record]:
        return [self._next() for _ in range(count)]

    def take_prompts(self, count: int, tokenizer, config: DataConfig,
                     prompt_of: Optional[Callable[[Record], Record]] = None) -> list[EncodedPrompt]:
        """The next ``count`` records encoded (:func:`~ppo_core.data.prompts.encode_record`); with
        ``long_prompts: skip`` a skipped record is replaced by the next one. ``prompt_of``: encode that part of
        each record (e.g. a transcript's first prompt); the encoded prompt keeps the whole record."""
        prompts: list[EncodedPrompt] = []
        skipped_in_a_row = 0
        while len(prompts) < count:
            record = self._next()
            prompt = encode_record(prompt_of(record) if prompt_of else record, tokenizer, config, self.long_prompts)
            if prompt is not None and prompt_of is not None:
                prompt.record = record
            if prompt is not None:
                prompt.skipped_before, skipped_in_a_row = skipped_in_a_row, 0
                prompts.append(prompt)
                continue
            skipped_in_a_row += 1
            if self._pass_length is not None and skipped_in_a_row > self._pass_length:
                raise DataError(f"{self.name}: every prompt of the {self.split} split is longer than "
                                f"data.max_prompt_tokens ({config.max_prompt_tokens}) and data.long_prompts is skip")
        return prompts

    def _next(self) -> Record:
        if self._iterator is None:
            self._iterator = self._pass(self.epoch)
        record = self._next_in_pass()
        if record is None:
            if self.taken == 0:
                raise DataError(f"{self.name}: the {self.split} split has no records")
            self._pass_length = self.taken
            self.epoch, self.taken = self.epoch + 1, 0
            self._iterator = self._pass(self.epoch)
            record = self._next_in_pass()
        return record

    def _next_in_pass(self) -> Optional[Record]:
        record = next(self._iterator, None)
        if record is not None:
            self.taken += 1
        return record

    def _pass(self, epoch: int) -> Iterator[Record]:
        records = plugin_records(self.dataset, self.split)
        if not self.shuffle:
            return records
        return _buffer_shuffle(records, random.Random(self.seed * 1_000_003 + epoch))


def _buffer_shuffle(records: Iterator[Record], rng: random.Random) -> Iterator[Record]:
    buffer = list(itertools.islice(records, SHUFFLE_BUFFER))
    for record in records:
        index = rng.randrange(len(buffer))
        yield buffer[index]
        buffer[index] = record
    rng.shuffle(buffer)
    yield from buffer


def take_records(dataset: Dataset, split: str, limit: Optional[int] = None) -> list[Record]:
    """The first ``limit`` records of a split, in the dataset's order (no shuffling: always the same ones)."""
    records: list[Record] = []
    for record in plugin_records(dataset, split):
        if limit is not None and len(records) >= limit:
            break
        records.append(record)
    return records


def plugin_records(dataset: Dataset, split: str) -> Iterator[Record]:
    """``dataset.records(split)``, where the plugin's own failure -- an exception that is not a UserError, a
    sys.exit, or an item that is not a Record -- is a PluginError naming the dataset (or the environment that
    makes its own episodes) and its class, not a traceback or a silent exit."""
    kind = "environment" if isinstance(dataset, Environment) else "dataset"
    where = f"{kind} '{getattr(dataset, 'name', '?')}' ({type(dataset).__module__}.{type(dataset).__qualname__})"
    try:
        for record in dataset.records(split):
            if not isinstance(record, Record):
                raise PluginError(f"{where}: its {split} split yielded a {type(record).__name__}, not a Record")
            yield record
    except UserError:
        raise
    except SystemExit as exit:
        raise PluginError(f"{where} called sys.exit({exit.code!r}) reading its {split} split") from None
    except Exception as error:
        raise PluginError(f"{where} failed reading its {split} split: {type(error).__name__}: {error}") from None
