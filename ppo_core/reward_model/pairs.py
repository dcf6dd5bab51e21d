"""Preference pairs from a task dataset: each record's solution against a corrupted copy of it."""

from __future__ import annotations

import random
import string
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from pydantic import ValidationError

from ..config.train_reward import CORRUPTIONS, MORE_CORRUPTIONS
from ..data.prompts import PromptText, as_prompt_text
from ..errors import DataError, format_validation_error
from ..plugin.contract import Record
from .data import PreferencePair


def corrupt(text: str, rng: random.Random, kinds: Sequence[str] = CORRUPTIONS,
            alphabet: str = string.ascii_lowercase, avoid: Iterable[str] = ()) -> Optional[str]:
    """A near miss of ``text``: one character substituted, deleted or inserted, two neighbours swapped, the
    characters shuffled, only its first characters (``truncate``), or two of those five in a row (``double``).

    The kind is drawn from ``kinds`` (a kind named twice is drawn twice as often); a kind that cannot change this
    text (a one-letter word cannot be shuffled, an empty one cannot lose a letter) is dropped and another drawn. The result is never ``text``,
    never empty, and never one of ``avoid``; ``None`` when no kind can make one.
    """
    known = CORRUPTIONS + MORE_CORRUPTIONS
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(unknown)}; known: {', '.join(known)}")
    banned = {text, ""} | set(avoid)
    left = list(kinds)
    while left:
        kind = rng.choice(left)
        for _attempt in range(20):
            candidate = _corrupt_once(text, kind, rng, alphabet)
            if candidate is not None and candidate not in banned:
                return candidate
        left = [other for other in left if other != kind]
    return None


def _corrupt_once(text: str, kind: str, rng: random.Random, alphabet: str) -> Optional[str]:
    if not text:
        return None
    if kind == "substitute":
        index = rng.randrange(len(text))
        choices = [c for c in alphabet if c != text[index]]
        if not choices:
            return None
        return text[:index] + rng.choice(choices) + text[index + 1:]
    if kind == "delete":
        if len(text) < 2:
            return None
        index = rng.randrange(len(text))
        return text[:index] + text[index + 1:]
    if kind == "insert":
        index = rng.randrange(len(text) + 1)
        return text[:index] + rng.choice(alphabet) + text[index:]
    if kind == "shuffle":
        if len(set(text)) < 2:
            return None
        letters = list(text)
        rng.shuffle(letters)
        return "".join(letters)
    if kind == "swap":
        if len(text) < 2:
            return None
        index = rng.randrange(len(text) - 1)
        return text[:index] + text[index + 1] + text[index] + text[index + 2:]
    if kind == "truncate":
        return text[:rng.randrange(1, len(text))] if len(text) > 1 else None
    if kind == "double":
        once = _corrupt_once(text, rng.choice(CORRUPTIONS), rng, alphabet)
        return None if once is None else _corrupt_once(once, rng.choice(CORRUPTIONS), rng, alphabet)
    raise ValueError(f"unknown corruption {kind!r}")


def pair_kind(chosen: str, rejected: str) -> str:
    """What ``rejected`` differs from ``chosen`` by (one of :data:`~ppo_core.config.train_reward.PAIR_KINDS`):
    ``length`` (characters inserted or deleted), ``order`` (the same characters in another order: a swap or a
    shuffle), ``substitution`` (the same length, one character different), ``other`` (anything else)."""
    if len(chosen) != len(rejected):
        return "length"
    if sorted(chosen) == sorted(rejected):
        return "order"
    if sum(a != b for a, b in zip(chosen, rejected)) == 1:
        return "substitution"
    return "other"


def make_preference_pairs(records: Iterable[Union[Record, Mapping[str, Any]]], rng: Union[random.Random, int],
                          corruptions: Sequence[str] = CORRUPTIONS, pairs_per_record: int = 1,
                          render: Optional[Callable[[Record], Union[str, PromptText]]] = None,
                          alphabet: str = string.ascii_lowercase) -> list[PreferencePair]:
    """Pairs ``chosen`` = the record's (first) solution, ``rejected`` = a corrupted copy of it.

    ``rng`` is a ``random.Random`` or a seed (the same seed gives the same pairs). ``render`` turns a record
    into prompt text (default: :attr:`Record.prompt_text`, what the engine uses without a chat template); a
    :class:`~ppo_core.data.prompts.PromptText` it returns (:func:`~ppo_core.data.prompts.render_prompt`) also
    says whether the text is chat-templated, which the pairs keep (:attr:`PreferencePair.templated`) so that
    training tokenizes their prompts as the engine does.
    A record without a solution, or with one no corruption can change, raises :class:`DataError`.
    """
    if pairs_per_record < 1:
        raise ValueError(f"pairs_per_record must be at least 1, got {pairs_per_record}")
    if not corruptions:
        raise ValueError("corruptions must name at least one of " + ", ".join(CORRUPTIONS))
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    render = render or (lambda record: record.prompt_text)
    pairs: list[PreferencePair] = []
    for index, record in enumerate(records):
        if not isinstance(record, Record):
            try:
                record = Record.from_dict(record)
            except ValidationError as error:
                raise DataError(f"record {index}: {format_validation_error(error)}") from None
        prompt_text = as_prompt_text(render(record))
        prompt = prompt_text.text
        if not record.solutions:
            raise DataError(f"record {index} (prompt {prompt[:60]!r}) has no solution to make a preference pair from")
        chosen = record.solutions[0]
        for _ in range(pairs_per_record):
            rejected = corrupt(chosen, rng, corruptions, alphabet, avoid=record.solutions)
            if rejected is None:
                raise DataError(f"record {index} (prompt {prompt[:60]!r}): no corruption in "
                                f"{', '.join(corruptions)} can change its solution {chosen!r}")
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected,
                                        templated=prompt_text.templated))
    if not pairs:
        raise DataError("no records to make preference pairs from")
    return pairs
