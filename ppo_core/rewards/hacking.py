"""Reward-hacking diagnostics on PPO's metrics lines: length drift, and a learned reward that parts from the rules.

A policy that games a learned reward shows it in a few numbers before its held-out score falls: the responses
grow or shrink against the start (``response/length_drift`` = this update's mean response length over the first
update's), they stop ending at eos (``response/eos_rate``, from the engine), the learned reward stops agreeing
with the rule rewards on the same samples (``reward/corr/<a>/<b>``, from the composer), and the learned reward
rises while a rule reward falls (watched when the learned reward carries at least a tenth of the weight).
:class:`HackingWatch` adds the first number to each line and prints one warning
line on stderr when the last happens for several updates in a row (once per episode: again only after it
stopped).
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Mapping, Optional, Sequence

#: the rewards that are learned (the bundled ``ppo-core-reward-model``'s); every other reward is a rule
LEARNED_REWARDS = ("reward_model",)
#: the least share of the total |weight| a learned reward needs to be watched
STEERING = 0.1
#: updates whose mean is compared with the mean of the same number of updates before them
WINDOW = 5
#: updates in a row the trends must point apart before the warning (one noisy update does not make an episode)
PATIENCE = 3


def trend(values: Sequence[float], window: int = WINDOW) -> Optional[float]:
    """The mean of the last ``window`` values minus the mean of the ``window`` before them; None while there are
    fewer than ``2·window`` values or a NaN among them."""
    if len(values) < 2 * window:
        return None
    recent, before = values[-window:], values[-2 * window:-window]
    if any(math.isnan(v) for v in (*recent, *before)):
        return None
    return sum(recent) / window - sum(before) / window


class HackingWatch:
    """Fed every PPO metrics line in order (:meth:`__call__`); adds ``response/length_drift`` and warns when a
    learned reward's :func:`trend` has been up while a rule reward's was down for ``patience`` updates in a row.

    ``learned`` and ``rules`` name the rewards (``reward/<name>`` in the lines); ``warn`` prints a line."""

    def __init__(self, learned: Sequence[str], rules: Sequence[str], window: int = WINDOW, patience: int = PATIENCE,
                 warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.learned, self.rules, self.window, self.patience = list(learned), list(rules), window, patience
        self.warn = warn
        self.first_length: Optional[float] = None
        self.history: dict[str, list[float]] = {name: [] for name in self.learned + self.rules}
        #: (learned, rule) -> updates in a row their trends pointed apart (a pair is absent when they did not)
        self.diverging: dict[tuple[str, str], int] = {}

    @classmethod
    def for_rewards(cls, weights: Mapping[str, float], **kwargs) -> "HackingWatch":
        """The learned rewards (:data:`LEARNED_REWARDS`) that steer, ``|weight|`` at least :data:`STEERING` of the
        total, against every rule reward: a learned reward that rides along cannot be gamed, and its ups and
        downs beside the rules are noise."""
        total = sum(abs(weight) for weight in weights.values())
        learned = [name for name, weight in weights.items()
                   if name in LEARNED_REWARDS and total and abs(weight) >= STEERING * total]
        return cls(learned, [name for name in weights if name not in LEARNED_REWARDS], **kwargs)

    def __call__(self, line: dict, quiet: bool = False) -> dict:
        """``line`` with ``response/length_drift`` added; ``quiet`` only updates the state (a resumed run's
        earlier lines)."""
        length = line.get("response/length_mean")
        if length is not None:
            if self.first_length is None:
                self.first_length = length
            line["response/length_drift"] = length / self.first_length if self.first_length else math.nan
        for name, values in self.history.items():
            value = line.get(f"reward/{name}")
            values.append(math.nan if value is None else float(value))
        self.diverging = {pair: self.diverging.get(pair, 0) + 1 for pair in self.divergences()}
        for pair, updates in self.diverging.items():
            if updates == self.patience and not quiet:  # once per episode
                self.warn(self._message(pair, line.get("update")))
        return line

    def divergences(self) -> list[tuple[str, str]]:
        """(learned, rule) pairs whose trends point apart: the learned reward up, the rule reward down."""
        found = []
        for learned in self.learned:
            up = trend(self.history[learned], self.window)
            if up is None or up <= 0:
                continue
            for rule in self.rules:
                down = trend(self.history[rule], self.window)
                if down is not None and down < 0:
                    found.append((learned, rule))
        return found

    def _message(self, pair: tuple[str, str], update: Optional[int]) -> str:
        learned, rule = pair
        at = f"update {update}: " if update is not None else ""
        return (f"warning: {at}reward hacking? for {self.patience} updates the learned reward {learned}'s mean over "
                f"the last {self.window} rose while the rule reward {rule}'s fell (compare reward/{learned} with "
                f"reward/{rule} and reward/corr/* in metrics.jsonl)")
