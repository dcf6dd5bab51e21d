"""Reward-hacking diagnostics on PPO's metrics lines: length drift, and a learned reward that parts from the rules.

A policy that games a learned reward shows it in a few numbers before its held-out score falls: the responses
grow or shrink against the start (``response/length_drift`` = this update's mean response length over the first
update's), they stop ending at eos (``response/eos_rate``, from the engine), the learned reward stops agreeing
with the rule rewards on the same samples (``reward/corr/<a>/<b>``, from the composer), and the learned reward
rises while a rule reward falls (watched when the learned reward carries at least a tenth of the weight; a change
counts only past the noise of the per-update means, :func:`direction`).
:class:`HackingWatch` adds the first number to each line and prints one warning
line on stderr when the last happens for several updates in a row (once per episode: again only after it
stopped).
"""

from __future__ import annotations

import math
import statistics
import sys
from typing import Callable, Mapping, Optional, Sequence

#: the rewards that are learned (the bundled ``ppo-core-reward-model``'s); every other reward is a rule
LEARNED_REWARDS = ("reward_model",)
#: the least share of the total |weight| a learned reward needs to be watched
STEERING = 0.1
#: updates whose mean is compared with the mean of the same number of updates before them
WINDOW = 8
#: updates in a row the trends must point apart before the warning (one noisy update does not make an episode)
PATIENCE = 3
#: standard errors a window's change must exceed to count as a rise or a fall: a rule reward that stays put (a
#: repetition penalty at 0.000 +- 0.005) wobbles, and with no margin its wobbles raised 9-22 warnings on each of
#: three sound 220-update demo runs (replayed: 0 at 8 updates and 2 standard errors; a run that gamed its learned
#: reward still warns, at update 19)
SIGNIFICANCE = 2.0


def trend(values: Sequence[float], window: int = WINDOW) -> Optional[float]:
    """The mean of the last ``window`` values minus the mean of the ``window`` before them; None while there are
    fewer than ``2·window`` values or a NaN among them."""
    if len(values) < 2 * window:
        return None
    recent, before = values[-window:], values[-2 * window:-window]
    if any(math.isnan(v) for v in (*recent, *before)):
        return None
    return sum(recent) / window - sum(before) / window


def direction(values: Sequence[float], window: int = WINDOW, significance: float = SIGNIFICANCE) -> int:
    """+1 when :func:`trend` rose by more than ``significance`` standard errors of the difference of the two
    windows' means, -1 when it fell by as much, 0 otherwise (a change within the noise, or no trend yet)."""
    change = trend(values, window)
    if change is None:
        return 0
    recent, before = values[-window:], values[-2 * window:-window]
    spread = math.sqrt((statistics.variance(recent) + statistics.variance(before)) / window) if window > 1 else 0.0
    if abs(change) <= significance * spread:  # no change at all is never past it
        return 0
    return 1 if change > 0 else -1


class HackingWatch:
    """Fed every PPO metrics line in order (:meth:`__call__`); adds ``response/length_drift`` and warns when a
    learned reward's :func:`trend` has been up while a rule reward's was down for ``patience`` updates in a row.

    ``learned`` and ``rules`` name the rewards (``reward/<name>`` in the lines); ``warn`` prints a line."""

    def __init__(self, learned: Sequence[str], rules: Sequence[str], window: int = WINDOW, patience: int = PATIENCE,
                 significance: float = SIGNIFICANCE,
                 warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        self.learned, self.rules, self.window, self.patience = list(learned), list(rules), window, patience
        self.significance = significance
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
            if direction(self.history[learned], self.window, self.significance) != 1:
                continue
            for rule in self.rules:
                if direction(self.history[rule], self.window, self.significance) == -1:
                    found.append((learned, rule))
        return found

    def _message(self, pair: tuple[str, str], update: Optional[int]) -> str:
        learned, rule = pair
        at = f"update {update}: " if update is not None else ""
        return (f"warning: {at}reward hacking? for {self.patience} updates the learned reward {learned}'s mean over "
                f"the last {self.window} rose while the rule reward {rule}'s fell (compare reward/{learned} with "
                f"reward/{rule} and reward/corr/* in metrics.jsonl)")
