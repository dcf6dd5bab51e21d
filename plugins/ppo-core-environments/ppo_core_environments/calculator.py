"""``calculator``: multi-digit arithmetic with a tool. The model may call ``<calc>EXPR</calc>`` (the engine's
stop string is ``</calc>``); the environment answers with the value as a tool turn; the first answer without a
tool call is final: ``<answer>N</answer>``, or the bare ``N``, scored by exact match against the solution.

Episodes: its own (``"483*27="`` -> ``"13041"``, seeded, train and eval disjoint), or any dataset whose records
carry a ``solution``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Iterator, Literal, Sequence

from pydantic import Field, model_validator

from ppo_core import EnvReset, Environment, EnvStep, Record, RunContext, Split

from .arithmetic import CalcError, evaluate
from .episodes import EpisodeOptions, TurnResult, check_split, draw_splits, solutions_of, step_each

__all__ = ["Calculator", "CalculatorOptions"]

Operator = Literal["+", "-", "*", "/", "//", "%"]
CALL_OPEN, CALL_CLOSE = "<calc>", "</calc>"
CALL = re.compile(r"<calc>(.*?)</calc>", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class CalculatorOptions(EpisodeOptions):
    min_digits: int = Field(3, ge=1, le=9, description="fewest digits of an operand")
    max_digits: int = Field(3, ge=1, le=9, description="most digits of an operand")
    operators: list[Operator] = Field(["*"], min_length=1, description="operators the episodes draw from; `/` "
                                      "episodes divide exactly")
    max_tool_calls: int = Field(2, ge=0, le=100, description="tool calls answered per episode; one more ends it "
                                "unsolved")
    max_expression_chars: int = Field(64, ge=1, le=1000, description="longest expression the tool evaluates")
    max_value_digits: int = Field(32, ge=1, le=1000, description="largest value (in digits) of any intermediate "
                                  "result")
    observation_role: Literal["tool", "user"] = Field("tool", description="role of the tool's answer turn")

    @model_validator(mode="after")
    def _digits_in_order(self) -> "CalculatorOptions":
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits ({self.min_digits}) must not exceed max_digits ({self.max_digits})")
        return self


class Calculator(Environment):
    """Solve ``A op B`` with a calculator tool: reward 1.0 for the exact answer, 0.0 otherwise."""

    name: ClassVar[str] = "calculator"
    Options = CalculatorOptions

    def __init__(self, options: CalculatorOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self._episodes = draw_splits(self.name, options, self._draw)

    def _draw(self, rng) -> tuple[int, str, int]:
        o: CalculatorOptions = self.options
        smallest = 10 ** (o.min_digits - 1) if o.min_digits > 1 else 0
        operator = rng.choice(o.operators)
        left, right = rng.randint(smallest, 10 ** o.max_digits - 1), rng.randint(smallest, 10 ** o.max_digits - 1)
        if operator in ("/", "//", "%"):
            right = right or 1
            if operator == "/":  # exact: the quotient is the drawn operand
                left = left * right
        return left, operator, right

    def records(self, split: Split) -> Iterator[Record]:
        check_split(split)
        for left, operator, right in self._episodes[split]:
            expression = f"{left}{operator}{right}"
            yield Record.from_dict({"prompt": f"{expression}=", "solution": str(evaluate(expression, 1000, 1000)),
                                    "expression": expression})

    def reset(self, records: Sequence[Record]) -> EnvReset:
        states = [{"solutions": solutions_of(self.name, i, r), "calls": 0, "result": None}
                  for i, r in enumerate(records)]
        return EnvReset(states=states, prompts=[list(r.messages) for r in records])

    def step(self, states: Sequence[Any], responses: Sequence[str]) -> EnvStep:
        return step_each(states, responses, self._turn)

    def _turn(self, state: dict, response: str) -> TurnResult:
        text = response.strip()
        if CALL_OPEN in text:
            if state["calls"] >= self.options.max_tool_calls:
                return TurnResult(state, None, 0.0, True, False)  # out of tool calls: unsolved
            result = self.tool(text)
            turn = [{"role": self.options.observation_role, "content": result}]
            return TurnResult({**state, "calls": state["calls"] + 1, "result": result}, turn, None, False, None, 1)
        answer = ANSWER.search(text)
        right = (answer.group(1).strip() if answer else text) in state["solutions"]
        return TurnResult(state, None, 1.0 if right else 0.0, True, right)

    def tool(self, text: str) -> str:
        """The tool's answer to the first call in ``text``: the value, or ``error: <why>``."""
        call = CALL.search(text)
        if call is None:
            return f"error: no {CALL_CLOSE}"
        try:
            return str(evaluate(call.group(1), self.options.max_expression_chars, self.options.max_value_digits))
        except CalcError as error:
            return f"error: {error}"

    @staticmethod
    def good_response(record: Record, state: dict) -> str:
        """A good policy's next turn on one of this environment's own records: call the tool, then answer what
        it said."""
        if state["result"] is None:
            return f"{CALL_OPEN}{record.fields['expression']}{CALL_CLOSE}"
        return f"<answer>{state['result']}</answer>"
