"""The weighted composer: the one place reward weights are applied.

total(sample) = sum over rewards i that scored the sample of w_i * r_i, where r_i is the reward's value
(standardised with running statistics when ``normalize: true``).

Abstention: a reward returns ``None`` for a sample it cannot judge. With ``on_abstain: skip`` (the default)
that reward's term is left out of the sample's total (it adds 0) and the sample does not count towards the
reward's logged mean; with ``on_abstain: <number>`` that number is used as the reward's value. The share of
abstentions is logged as ``reward/<name>/abstain_rate``.

Faults: an exception, an answer that is not a sequence (a dict, a number...), a wrong-length answer, a value
that is not a number, a non-finite value, a time-out (``timeout_s``), an exit (``sys.exit``, ``os._exit``) or a
crash of the reward's worker process, or abstaining on every sample of a batch (with ``on_abstain: skip``) stops
the run with an error naming the plugin, the reward and the sample, unless the reward's ``on_error`` says to go
on (``skip``: the batch counts as abstained; a number: used for every sample); such events are counted in
``reward/<name>/errors``.

Isolation: a reward runs in its own worker process (``isolation: process``, see :mod:`.isolation`) unless its
config says ``isolation: none``; either way it gets its own copy of the samples list.

Overlap: :meth:`Composer.start` hands one chunk of a batch to the rewards in worker processes and returns at
once, so a PPO rollout samples the next chunk (and runs its log-prob forwards) while they score;
:meth:`Composer.finish` collects the chunks and composes the batch exactly as one call on the whole batch would,
except that a background reward is called once per chunk (its faults, abstentions and ``on_error`` apply per
chunk). Rewards in process and rewards that read the reference's hidden states are scored in ``finish``.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..config import RewardConfig
from ..errors import ConfigError, RewardError, UserError
from ..plugin.contract import Reward, RunContext, Sample, reads_reference_hidden
from ..plugin.registry import Registry, validate_options
from .isolation import IsolatedReward, WorkerFault, run_with_timeout


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


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's correlation of two equally long lists; NaN when either has fewer than 2 values or no spread."""
    n = len(xs)
    if n < 2:
        return math.nan
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    return cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else math.nan


def reward_correlations(values: Mapping[str, Sequence[Optional[float]]]) -> dict[str, float]:
    """``reward/corr/<a>/<b>``: Pearson's correlation of the raw values of every pair of rewards (a listed before
    b) over the samples both scored: a learned reward that stops agreeing with a rule reward is being gamed."""
    names = list(values)
    stats = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = [(x, y) for x, y in zip(values[a], values[b]) if x is not None and y is not None]
            stats[f"reward/corr/{a}/{b}"] = pearson([x for x, _ in both], [y for _, y in both])
    return stats


@dataclass
class RewardTerm:
    config: RewardConfig
    reward: Reward | IsolatedReward
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


class BackgroundCall:
    """``function(*args)`` in a daemon thread; :meth:`result` waits for it and returns or raises its outcome.

    The thread mostly waits on a worker process's pipe (which releases the GIL), so the caller's torch work goes
    on meanwhile; the worker's own time limit (``timeout_s``) bounds the wait."""

    def __init__(self, function, *args):
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(function, args), daemon=True,
                                        name="ppo-core-scoring")
        self._thread.start()

    def _run(self, function, args) -> None:
        try:
            self._outcome["answer"] = function(*args)
        except BaseException as error:
            self._outcome["error"] = error

    def result(self) -> Any:
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["answer"]


@dataclass
class Scoring:
    """One chunk of a batch whose background rewards are being scored (:meth:`Composer.start`)."""

    samples: list[Sample]
    background: dict[str, BackgroundCall]  # reward name -> its call on these samples


def _scores_in_background(term: RewardTerm) -> bool:
    return isinstance(term.reward, IsolatedReward) and not reads_reference_hidden(term.reward)


class Composer:
    def __init__(self, terms: list[RewardTerm]):
        self.terms = terms

    def close(self) -> None:
        """Stop the rewards' worker processes (they are also stopped at exit)."""
        for term in self.terms:
            if isinstance(term.reward, IsolatedReward):
                term.reward.close()

    def __enter__(self) -> "Composer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def reads_reference_hidden(self) -> bool:
        """Whether any reward declared that it scores from the reference's hidden states (HiddenStateReward)."""
        return any(reads_reference_hidden(term.reward) for term in self.terms)

    def __call__(self, samples: Sequence[Sample], reference_hidden=None) -> Composition:
        """Score ``samples`` with every reward, now, and compose the totals."""
        return self._compose(list(samples), {term.name: self._score(term, samples, reference_hidden)
                                             for term in self.terms})

    def start(self, samples: Sequence[Sample]) -> "Scoring":
        """Start scoring one chunk of a batch in the background: every reward that runs in a worker process and
        does not read the reference's hidden states gets the chunk now, while the caller goes on (sampling the
        next chunk). :meth:`finish` collects the chunks and scores the rest."""
        samples = list(samples)
        return Scoring(samples, {term.name: BackgroundCall(self._score, term, samples)
                                 for term in self.terms if _scores_in_background(term)})

    def finish(self, scorings: Sequence["Scoring"], reference_hidden=None, gather=None) -> Composition:
        """The composition of the chunks started with :meth:`start`, in their order, as one batch: the rewards
        scored in the background are collected, the others are called once on the whole batch now. ``gather``
        (data parallel) turns this rank's values into every rank's, so the running moments see the whole batch."""
        samples = [sample for scoring in scorings for sample in scoring.samples]
        scored: dict[str, tuple[list[Optional[float]], int]] = {}
        for term in self.terms:
            if all(term.name in scoring.background for scoring in scorings):
                parts = [scoring.background[term.name].result() for scoring in scorings]
                scored[term.name] = [v for values, _ in parts for v in values], sum(errors for _, errors in parts)
            else:
                scored[term.name] = self._score(term, samples, reference_hidden)
        return self._compose(samples, scored, gather)

    def _compose(self, samples: list[Sample], scored: dict[str, tuple[list[Optional[float]], int]],
                 gather=None) -> Composition:
        """The weighted totals and statistics from each reward's raw values and error count."""
        totals = [0.0] * len(samples)
        scored_by_any = [False] * len(samples)
        values: dict[str, list[Optional[float]]] = {}
        stats: dict[str, float] = {}
        for term in self.terms:
            raw, errors = scored[term.name]
            resolved = [term.config.on_abstain if v is None and term.config.on_abstain != "skip" else v for v in raw]
            values[term.name] = raw
            scored_values = [v for v in resolved if v is not None]
            if term.moments is not None:
                term.moments.update(gather(scored_values) if gather else scored_values)
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
        stats.update(reward_correlations(values))
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
            answer = self._call(term, samples, reference_hidden)
        except RewardError:
            raise
        except WorkerFault as fault:
            raise RewardError(f"{term.describe()} {fault} {self._batch_label(samples)}") from None
        except Exception as error:
            raise RewardError(f"{term.describe()} raised {type(error).__name__}: {error} "
                              f"{self._locate_failure(term, samples)}") from error
        if not _is_sequence(answer):
            raise RewardError(f"{term.describe()} returned {type(answer).__name__}, not a sequence of "
                              f"{len(samples)} floats, {self._batch_label(samples)}")
        answer = list(answer)
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

    @staticmethod
    def _call(term: RewardTerm, samples: Sequence[Sample], reference_hidden=None) -> Any:
        """One call of the reward on its own copy of the samples list, bounded by its ``timeout_s``."""
        function, args = term.reward, (list(samples),)
        if reference_hidden is not None and reads_reference_hidden(term.reward):
            function, args = term.reward.score_hidden, (list(samples), reference_hidden)
        if isinstance(term.reward, IsolatedReward):
            return function(*args)  # the worker's pipe enforces timeout_s
        return run_with_timeout(function, args, term.config.timeout_s)

    def _locate_failure(self, term: RewardTerm, samples: Sequence[Sample]) -> str:
        """Re-score one sample at a time to name the one that makes the reward raise."""
        for index, sample in enumerate(samples):
            try:
                self._call(term, [sample])
            except WorkerFault:
                break  # a time-out or an exit: stop looking
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


def _is_sequence(answer: Any) -> bool:
    """A list, a tuple, an array or a tensor; not a mapping (scored by its keys), a set, a string or a scalar."""
    if isinstance(answer, (Mapping, Set, str, bytes)):
        return False
    return hasattr(answer, "__len__") and hasattr(answer, "__getitem__")


def _sample_label(index: int, sample: Sample) -> str:
    prompt = sample.prompt if len(sample.prompt) <= 60 else sample.prompt[:57] + "..."
    return f"sample {index} (prompt {prompt!r})"


def build_composer(rewards: Sequence[RewardConfig], registry: Registry, context: RunContext,
                   source: str = "config") -> Composer:
    """The rewards as configured: isolated ones get a worker process each (started in parallel)."""
    terms: list[RewardTerm] = []
    try:
        for index, config in enumerate(rewards):
            terms.append(_build_term(index, config, registry, context, source))
        for term in terms:
            if isinstance(term.reward, IsolatedReward):
                term.reward.wait_until_ready()
    except BaseException:
        Composer(terms).close()
        raise
    return Composer(terms)


def _build_term(index: int, config: RewardConfig, registry: Registry, context: RunContext, source: str
                ) -> RewardTerm:
    where, name_where = f"{source}: rewards.{index}.options", f"{source}: rewards.{index}.name"
    moments = RunningMoments() if config.normalize else None
    if config.isolation == "none":
        reward = registry.build("reward", config.name, config.options, context, where=where, name_where=name_where)
        return RewardTerm(config, reward, registry.get("reward", config.name).plugin, moments)
    try:
        entry = registry.get("reward", config.name)
    except UserError as error:
        raise ConfigError(f"{name_where}: {error}") from None
    options = validate_options(entry, config.options, where)
    label = f"reward '{config.name}' (plugin '{entry.plugin}')"
    return RewardTerm(config, IsolatedReward(entry.cls, options, context, label, config.timeout_s), entry.plugin,
                      moments)
