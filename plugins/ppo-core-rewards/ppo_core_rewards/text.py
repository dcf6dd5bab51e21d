"""What ``edit_distance`` and ``exact_match`` share: one options model, and the answer/solution preparation.

Both rewards turn a batch of samples into pairs ``(answer, solutions)``:

- the *answer* is the response, or the part of it the ``extract`` regex picks out, then normalised;
- the *solutions* are the record's accepted solution(s), normalised the same way (never extracted).

``None`` on either side means the reward abstains for that sample.
"""

from __future__ import annotations

import re
from typing import Callable, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ppo_core import Sample
from ppo_core.errors import RewardError

PLUGIN = "rule_rewards"
DISTRIBUTION = "ppo-core-rewards"

Normaliser = Optional[Callable[[str], str]]  # None: the identity, skipped in the hot loop
Solutions = Union[str, tuple[str, ...]]  # one string, or several accepted ones

_WHITESPACE = re.compile(r"\s+")


class TextMatchOptions(BaseModel):
    """Normalisation, extraction and missing-solution options of ``edit_distance`` and ``exact_match``."""

    model_config = ConfigDict(extra="forbid")

    strip: bool = Field(True, description="strip leading/trailing whitespace from answer and solutions")
    casefold: bool = Field(False, description="compare case-insensitively (str.casefold: 'ß' == 'ss')")
    collapse_whitespace: bool = Field(False, description="replace every run of whitespace by one space")
    extract: Optional[str] = Field(
        None,
        description="regex applied to the response first (re.search, first match); the answer is its first "
        "capture group if it has one (\"\" if that group did not take part), else the whole match",
    )
    on_no_match: Literal["empty", "abstain"] = Field(
        "empty", description="when `extract` does not match: score an empty answer, or abstain (None)"
    )
    missing_solution: Literal["error", "abstain"] = Field(
        "error", description="a sample without a solution: RewardError naming the sample, or abstain (None)"
    )

    @field_validator("extract")
    @classmethod
    def _compiles(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"invalid regular expression: {error}") from None
        return value


def make_normaliser(options: TextMatchOptions) -> Normaliser:
    """The normalisation the options ask for, in the order collapse → strip → casefold (``None`` if none)."""
    if options.collapse_whitespace and options.strip:
        collapse_strip: Callable[[str], str] = lambda text: " ".join(text.split())  # noqa: E731
        steps = [collapse_strip]
    else:
        steps = []
        if options.collapse_whitespace:
            steps.append(lambda text: _WHITESPACE.sub(" ", text))
        if options.strip:
            steps.append(str.strip)
    if options.casefold:
        steps.append(str.casefold)
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]
    first, second = steps  # at most two: (collapse+strip | collapse | strip) then casefold
    return lambda text: second(first(text))


def make_extractor(options: TextMatchOptions) -> Optional[Callable[[str], Optional[str]]]:
    """``response -> answer`` for the ``extract`` option (``None`` if unset); the answer is ``None`` to abstain."""
    if options.extract is None:
        return None
    search = re.compile(options.extract).search
    no_match = "" if options.on_no_match == "empty" else None
    if search.__self__.groups:

        def extract(response: str) -> Optional[str]:
            found = search(response)
            return no_match if found is None else (found.group(1) or "")

    else:

        def extract(response: str) -> Optional[str]:
            found = search(response)
            return no_match if found is None else found.group(0)

    return extract


class TextMatch:
    """Mixin for a :class:`ppo_core.Reward` whose options are a :class:`TextMatchOptions`."""

    name: str
    options: TextMatchOptions

    def _prepare(self) -> None:
        self._normalise = make_normaliser(self.options)
        self._extract = make_extractor(self.options)
        self._abstain_missing = self.options.missing_solution == "abstain"

    def answers(self, samples: Sequence[Sample]) -> list[Optional[str]]:
        """Each sample's answer: extracted, then normalised; ``None`` to abstain (no match, ``abstain``)."""
        norm, extract = self._normalise, self._extract
        if extract is None:
            if norm is None:
                return [sample.response for sample in samples]
            return [norm(sample.response) for sample in samples]
        extracted = [extract(sample.response) for sample in samples]
        if norm is None:
            return extracted
        return [None if answer is None else norm(answer) for answer in extracted]

    def solutions(self, samples: Sequence[Sample]) -> list[Optional[Solutions]]:
        """Each sample's normalised solution(s); ``None`` to abstain; :class:`RewardError` when missing/invalid."""
        norm = self._normalise
        if norm is None:
            out = [s if type(s) is str else _other_solution(s, None) for s in (sample.solution for sample in samples)]
        else:
            out = [norm(s) if type(s) is str else _other_solution(s, norm) for s in (sample.solution for sample in samples)]
        if _INVALID in out:
            raise self._invalid(samples, out.index(_INVALID))
        if not self._abstain_missing and None in out:
            raise self._missing(out, out.index(None))
        return out

    def _where(self) -> str:
        return f"reward '{self.name}' (plugin '{PLUGIN}' of distribution '{DISTRIBUTION}')"

    def _missing(self, solutions: list[Optional[Solutions]], index: int) -> RewardError:
        others = solutions.count(None) - 1
        more = f" ({others} more samples in this batch lack one)" if others else ""
        return RewardError(
            f"{self._where()}: sample {index} has no solution{more}; give each record a `solution`, "
            f"or set the option `missing_solution: abstain`"
        )

    def _invalid(self, samples: Sequence[Sample], index: int) -> RewardError:
        return RewardError(
            f"{self._where()}: sample {index}: the solution must be a string or a non-empty list of strings, "
            f"got {samples[index].solution!r:.80}"
        )


_INVALID = object()


def _other_solution(solution: object, norm: Normaliser) -> Union[Solutions, None, object]:
    """The slow path of :meth:`TextMatch.solutions`: ``None`` when missing, ``_INVALID`` when not strings."""
    if solution is None or (isinstance(solution, (list, tuple)) and not solution):
        return None
    if isinstance(solution, str):
        return str(solution) if norm is None else norm(str(solution))
    if not isinstance(solution, (list, tuple)) or not all(isinstance(item, str) for item in solution):
        return _INVALID
    return tuple(solution) if norm is None else tuple(norm(item) for item in solution)
