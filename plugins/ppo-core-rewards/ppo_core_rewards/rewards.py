"""The three rule rewards. Each scores a whole batch with one list comprehension over the samples."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from Levenshtein import distance as _levenshtein
from pydantic import BaseModel, ConfigDict, Field

from ppo_core import Reward, RunContext, Sample

from .text import Solutions, TextMatch, TextMatchOptions


class EditDistanceOptions(TextMatchOptions):
    """:class:`TextMatchOptions` plus the score ``mode``."""

    mode: Literal["similarity", "negative_distance"] = Field(
        "similarity",
        description="similarity: 1 - lev/max(len) in [0, 1]; negative_distance: -lev (raw, in (-inf, 0])",
    )


class EditDistance(TextMatch, Reward):
    """Levenshtein closeness of the answer to the record's solution(s).

    ``mode: similarity`` (default): ``1 - lev(answer, solution) / max(len(answer), len(solution))`` in
    [0, 1], 1.0 when both are empty; with several accepted solutions, the best (highest) one.
    ``mode: negative_distance``: ``-min_i lev(answer, solution_i)``, in (-inf, 0].

    Lengths and distances count Unicode code points after normalisation. The answer is the response, or
    what ``extract`` picks out of it; when ``extract`` does not match, ``on_no_match: empty`` (default)
    scores an empty answer (similarity 0.0 against a non-empty solution, -len(solution) as a distance) and
    ``on_no_match: abstain`` returns ``None``. A sample without a solution raises
    :class:`ppo_core.errors.RewardError` naming the sample, or abstains with ``missing_solution: abstain``.
    """

    name = "edit_distance"
    Options = EditDistanceOptions

    def __init__(self, options: EditDistanceOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._prepare()
        self._score = _similarity if options.mode == "similarity" else _negative_distance

    def __call__(self, samples: Sequence[Sample]) -> list[Optional[float]]:
        score = self._score
        return [
            None if answer is None or solution is None else score(answer, solution)
            for answer, solution in zip(self.answers(samples), self.solutions(samples))
        ]


def _similarity(answer: str, solution: Solutions) -> float:
    if type(solution) is str:
        longest = max(len(answer), len(solution))
        return 1.0 - _levenshtein(answer, solution) / longest if longest else 1.0
    return max(_similarity(answer, one) for one in solution)


def _negative_distance(answer: str, solution: Solutions) -> float:
    if type(solution) is str:
        return float(-_levenshtein(answer, solution))
    return float(-min(_levenshtein(answer, one) for one in solution))


class ExactMatch(TextMatch, Reward):
    """1.0 when the answer equals any accepted solution (after the same normalisation), else 0.0.

    Options are those of ``edit_distance`` without ``mode`` (one shared :class:`TextMatchOptions`). When
    ``extract`` does not match, ``on_no_match: empty`` (default) compares an empty answer (0.0 unless a
    solution normalises to ``""``) and ``abstain`` returns ``None``. A sample without a solution raises
    :class:`ppo_core.errors.RewardError` naming the sample, or abstains with ``missing_solution: abstain``.
    """

    name = "exact_match"
    Options = TextMatchOptions

    def __init__(self, options: TextMatchOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._prepare()

    def __call__(self, samples: Sequence[Sample]) -> list[Optional[float]]:
        return [
            None if answer is None or solution is None
            else 1.0 if (answer == solution if type(solution) is str else answer in solution) else 0.0
            for answer, solution in zip(self.answers(samples), self.solutions(samples))
        ]


class RepetitionPenaltyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(3, ge=1, description="n-gram length")
    level: Literal["char", "word"] = Field("char", description="n-grams of characters or of whitespace-split words")
    include_prompt: bool = Field(
        False, description="also count response n-grams that occur in the prompt as duplicates"
    )
    scale: float = Field(1.0, ge=0, allow_inf_nan=False, description="multiplier: the value lies in [-scale, 0]")


class RepetitionPenalty(Reward):
    """Penalty for repeated n-grams in the response; never positive.

    value = ``-scale * (1 - unique / total)``, in ``[-scale, 0]`` (``[-1, 0]`` at the default ``scale: 1``):
    ``total`` is the number of n-grams of the response (``len - n + 1``, of characters or of
    whitespace-split words), ``unique`` the number of distinct ones; 0.0 when no n-gram repeats and
    for a response shorter than ``n``. With ``include_prompt: true`` a response n-gram that also occurs
    in the prompt counts as a duplicate too (``unique`` counts distinct response n-grams not in the prompt),
    so a response copied verbatim from the prompt scores ``-scale``. No solution is needed; it never abstains.
    """

    name = "repetition_penalty"
    Options = RepetitionPenaltyOptions

    def __init__(self, options: RepetitionPenaltyOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._ngrams = _ngram_function(options.n, options.level)
        self._scale = options.scale

    def __call__(self, samples: Sequence[Sample]) -> list[Optional[float]]:
        ngrams, scale = self._ngrams, self._scale
        if not self.options.include_prompt:
            return [_penalty(ngrams(sample.response), None, scale) for sample in samples]
        prompt_ngrams: dict[str, frozenset] = {}  # several responses per prompt: build each prompt's set once

        def of_prompt(prompt: str) -> frozenset:
            found = prompt_ngrams.get(prompt)
            if found is None:
                found = prompt_ngrams[prompt] = frozenset(ngrams(prompt))
            return found

        return [_penalty(ngrams(sample.response), of_prompt(sample.prompt), scale) for sample in samples]


def _penalty(grams: list, prompt: Optional[frozenset], scale: float) -> float:
    total = len(grams)
    if not total:
        return 0.0
    unique = len(set(grams)) if prompt is None else len(set(grams).difference(prompt))
    return (unique - total) / total * scale


def _ngram_function(n: int, level: str):
    if level == "char":
        if n == 1:
            return list
        return lambda text: [text[i : i + n] for i in range(len(text) - n + 1)]
    if n == 1:
        return str.split

    def word_ngrams(text: str) -> list[tuple[str, ...]]:
        words = text.split()
        return list(zip(*[words[i:] for i in range(n)]))

    return word_ngrams
