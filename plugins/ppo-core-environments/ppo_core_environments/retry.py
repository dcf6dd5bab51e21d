"""``retry_with_feedback``: any dataset with solutions, several tries. A wrong answer gets feedback and another
try, up to ``max_attempts``; the exact answer (stripped, any accepted solution) at attempt k scores
``decay ** (k - 1)``; the last wrong attempt scores 0.0.

Feedback (``feedback``), against the nearest solution:

- ``none``: ``wrong``;
- ``count``: ``wrong: 2 differ`` (positions that differ, a length difference counting as differing positions);
- ``positions``: ``wrong: pq_bn_`` (the solution with the characters the answer got wrong as ``_``);
- ``marks``: ``wrong: ++-++-`` (which of the solution's positions the answer got right, ``+``, or wrong, ``-``,
  and a ``-`` per extra character of a longer answer: where to change the answer, not the letters to write).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ppo_core import EnvReset, Environment, EnvStep, Record

from .episodes import TurnResult, solutions_of, step_each

__all__ = ["RetryOptions", "RetryWithFeedback", "differing", "feedback_text"]

Feedback = Literal["none", "count", "positions", "marks"]


class RetryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_attempts: int = Field(3, ge=1, le=100, description="answers per episode")
    decay: float = Field(0.5, gt=0, le=1, description="reward for the exact answer at attempt k: decay ** (k - 1)")
    feedback: Feedback = Field("count", description="what a wrong answer is told: none, count, "
                          "positions or marks")


def differing(answer: str, solution: str) -> int:
    """Positions where ``answer`` and ``solution`` differ, the longer one's extra characters included."""
    return sum(a != s for a, s in zip(answer, solution)) + abs(len(answer) - len(solution))


def feedback_text(kind: Feedback, answer: str, solutions: Sequence[str]) -> str:
    nearest = min(solutions, key=lambda solution: differing(answer, solution))
    if kind == "count":
        return f"wrong: {differing(answer, nearest)} differ"
    right = [i < len(answer) and answer[i] == s for i, s in enumerate(nearest)]
    if kind == "positions":
        return "wrong: " + "".join(s if ok else "_" for s, ok in zip(nearest, right))
    if kind == "marks":
        return "wrong: " + "".join("+" if ok else "-" for ok in right) + "-" * (len(answer) - len(nearest))
    return "wrong"


class RetryWithFeedback(Environment):
    """Answer, hear what was wrong, try again."""

    name: ClassVar[str] = "retry_with_feedback"
    Options = RetryOptions

    def reset(self, records: Sequence[Record]) -> EnvReset:
        states = [{"solutions": solutions_of(self.name, i, r), "attempt": 0} for i, r in enumerate(records)]
        return EnvReset(states=states, prompts=[list(r.messages) for r in records])

    def step(self, states: Sequence[Any], responses: Sequence[str]) -> EnvStep:
        return step_each(states, responses, self._turn)

    def _turn(self, state: dict, response: str) -> TurnResult:
        answer, attempt = response.strip(), state["attempt"] + 1
        state = {**state, "attempt": attempt}
        if answer in state["solutions"]:
            return TurnResult(state, None, self.options.decay ** (attempt - 1), True, True)
        if attempt >= self.options.max_attempts:
            return TurnResult(state, None, 0.0, True, False)
        return TurnResult(state, feedback_text(self.options.feedback, answer, state["solutions"]), None, False)

    @staticmethod
    def good_response(record: Record, state: dict) -> str:
        """A good policy's answer: the first accepted solution."""
        return state["solutions"][0]
