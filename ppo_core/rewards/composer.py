"""The weighted composer: the one place reward weights are applied.

total(sample) = sum over rewards i that scored the sample of w_i * r_i, where r_i is the reward's value
(standardised with running statistics when ``normalize: true``).

Abstention: a reward returns ``None`` for a sample it cannot judge. With ``on_abstain: skip`` (the default)
that reward's term is left out of the sample's total (it adds 0) and the sample does not count towards the
reward's logged mean; with ``on_abstain: <number>`` that number is used as the reward's value. The share of
abstentions is logged as ``reward/<name>/abstain_rate``.

Faults: an exception, a wrong-length answer, a value that is not a number, a non-finite value, a time-out,
or abstaining on every sample of a batch (with ``on_abstain: skip``) stops the run with an error naming the plugin, the reward and the sample, unless the reward's ``on_error``
says to go on (``skip``: the batch counts as abstained; a number: used for every sample); such events are
counted in ``reward/<name>/errors``.
"""

from __future__ import annotations

import concurrent.futures
import math
import numbers
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..config import RewardConfig
from ..errors import RewardError
from ..plugin.contract import Reward, RunContext, Sample, reads_reference_hidden
from ..plugin.registry import Registry


@dataclass
class RunningMoments:
    """Running mean and variance over every value seen so far (Chan et al. parallel update)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: Sequence[float]) -> None:
        if not values:
            return
        n = float(len(values))
        batch_mean = sum(values) / n
        batch_m2 = sum((v - batch_mean) ** 2 for v in values)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def standardise(self, value: float) -> float:
        return (value - self.mean) / max(self.std, 1e-8)


@dataclass
class RewardTerm:
    config: RewardConfig
    reward: Reward
    plugin: str
    moments: Optional[RunningMoments] = None

    @property
    def name(self) -> str:
        return self.config.name

    def describe(self) -> str:
        return f"reward '{self.name}' (plugin '{self.plugin}')"


@dataclass
class Composition:
    totals: list[float]
    values: dict[str, list[Optional[float]]]  # raw values per reward, None where it abstained
    stats: dict[str, float] = field(default_factory=dict)


class Composer:
    def __init__(self, terms: list[RewardTerm]):
        self.terms = terms
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppo-core-reward")

    @property
    def reads_reference_hidden(self) -> bool:
        """Whether any reward declared that it scores from the reference's hidden states (HiddenStateReward)."""
        return any(reads_reference_hidden(term.reward) for term in self.terms)

    def __call__(self, samples: Sequence[Sample], reference_hidden=None) -> Composition:
        totals = [0.0] * len(samples)
        scored_by_any = [False] * len(samples)
        values: dict[str, list[Optional[float]]] = {}
        stats: dict[str, float] = {}
        for term in self.terms:
            raw, errors = self._score(term, samples, reference_hidden)
            resolved = [term.config.on_abstain if v is None and term.config.on_abstain != "skip" else v for v in raw]
            values[term.name] = raw
            scored = [v for v in resolved if v is not None]
            if term.moments is not None:
                term.moments.update(scored)
            for i, value in enumerate(resolved):
                if value is None:
                    continue
                if term.moments is not None:
                    value = term.moments.standardise(value)
                totals[i] += term.config.weight * value
                scored_by_any[i] = True
            kept = [v for v in raw if v is not None]
            stats[f"reward/{term.name}"] = sum(kept) / len(kept) if kept else float("nan")
            stats[f"reward/{term.name}/abstain_rate"] = 1.0 - len(kept) / len(samples) if samples else 0.0
            stats[f"reward/{term.name}/errors"] = float(errors)
        n = len(samples)
        mean = sum(totals) / n if n else 0.0
        stats["reward/mean"] = mean
        stats["reward/std"] = math.sqrt(sum((t - mean) ** 2 for t in totals) / n) if n else 0.0
        stats["reward/all_abstained"] = float(scored_by_any.count(False))
        return Composition(totals=totals, values=values, stats=stats)

    def _score(self, term: RewardTerm, samples: Sequence[Sample], reference_hidden=None
               ) -> tuple[list[Optional[float]], int]:
        try:
            return self._checked_call(term, samples, reference_hidden), 0
        except RewardError:
            if term.config.on_error == "raise":
                raise
            fallback = None if term.config.on_error == "skip" else float(term.config.on_error)
            return [fallback] * len(samples), 1

    def _checked_call(self, term: RewardTerm, samples: Sequence[Sample], reference_hidden=None
                      ) -> list[Optional[float]]:
        try:
            if reference_hidden is not None and reads_reference_hidden(term.reward):
                answer = term.reward.score_hidden(samples, reference_hidden)
            else:
                answer = self._call_with_timeout(term, samples)
        except RewardError:
            raise
        except Exception as error:
            raise RewardError(f"{term.describe()} raised {type(error).__name__}: {error} "
                              f"{self._locate_failure(term, samples)}") from error
        try:
            answer = list(answer)
        except TypeError:
            raise RewardError(f"{term.describe()} returned {type(answer).__name__}, not a sequence of "
                              f"{len(samples)} floats, {self._batch_label(samples)}") from None
        if len(answer) != len(samples):
            raise RewardError(f"{term.describe()} returned {len(answer)} values for {len(samples)} samples, "
                              f"{self._batch_label(samples)}")
        if samples and all(value is None for value in answer) and term.config.on_abstain == "skip":
            raise RewardError(f"{term.describe()} abstained on all {len(samples)} samples of the batch (first: "
                              f"{_sample_label(0, samples[0])}); set its on_abstain to a value or on_error: skip "
                              f"if that is expected")
        checked: list[Optional[float]] = []
        for index, value in enumerate(answer):
            if value is None:
                checked.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                value_number = getattr(value, "item", None)
                if callable(value_number) and getattr(value, "numel", lambda: 0)() == 1:
                    value = value_number()
                else:
                    raise RewardError(f"{term.describe()} returned {type(value).__name__} {value!r} for "
                                      f"{_sample_label(index, samples[index])}; expected a float or None")
            value = float(value)
            if not math.isfinite(value):
                raise RewardError(f"{term.describe()} returned {value} for {_sample_label(index, samples[index])}")
            checked.append(value)
        return checked

    def _call_with_timeout(self, term: RewardTerm, samples: Sequence[Sample]):
        timeout = term.config.timeout_s
        if timeout is None:
            return term.reward(samples)
        future = self._pool.submit(term.reward, samples)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            # the hung call keeps its thread; later calls go to a fresh pool
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppo-core-reward")
            raise RewardError(f"{term.describe()} did not answer within timeout_s={timeout} on a batch of "
                              f"{len(samples)} samples (first: {_sample_label(0, samples[0])})") from None

    def _locate_failure(self, term: RewardTerm, samples: Sequence[Sample]) -> str:
        """Re-score one sample at a time to name the one that makes the reward raise."""
        if term.config.timeout_s is None:
            for index, sample in enumerate(samples):
                try:
                    term.reward([sample])
                except Exception:
                    return f"on {_sample_label(index, sample)}"
        return self._batch_label(samples)

    @staticmethod
    def _batch_label(samples: Sequence[Sample]) -> str:
        return f"on a batch of {len(samples)} samples (first: {_sample_label(0, samples[0])})" if samples else ""

    def state_dict(self) -> dict:
        return {term.name: vars(term.moments).copy() for term in self.terms if term.moments is not None}

    def load_state_dict(self, state: dict) -> None:
        for term in self.terms:
            if term.moments is not None and term.name in state:
                term.moments = RunningMoments(**state[term.name])


def _sample_label(index: int, sample: Sample) -> str:
    prompt = sample.prompt if len(sample.prompt) <= 60 else sample.prompt[:57] + "..."
    return f"sample {index} (prompt {prompt!r})"


def build_composer(rewards: Sequence[RewardConfig], registry: Registry, context: RunContext,
                   source: str = "config") -> Composer:
    terms = []
    for index, config in enumerate(rewards):
        reward = registry.build("reward", config.name, config.options, context,
                                where=f"{source}: rewards.{index}.options",
                                name_where=f"{source}: rewards.{index}.name")
        entry = registry.get("reward", config.name)
        terms.append(RewardTerm(config, reward, entry.plugin, RunningMoments() if config.normalize else None))
    return Composer(terms)
