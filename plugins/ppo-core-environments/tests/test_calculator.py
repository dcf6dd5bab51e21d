"""``calculator``: the safe arithmetic parser, the tool-call protocol driven by scripted responses, and its own
seeded episodes (train and eval disjoint)."""

from __future__ import annotations

import builtins
import json
import operator
import re

import pytest

from ppo_core import Record, RunContext
from ppo_core.errors import DataError
from ppo_core_environments import CalcError, Calculator, CalculatorOptions, evaluate


def make(**options) -> Calculator:
    return Calculator(CalculatorOptions(size=8, eval_size=8, **options), RunContext())


def record(prompt: str = "12*34=", solution: str = "408") -> Record:
    return Record.from_dict({"prompt": prompt, "solution": solution})


# ---- the parser ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("expression, value", [
    ("123*45", 5535), ("2+3*4", 14), ("(2+3)*4", 20), ("7//2", 3), ("-7//2", -4), ("-7%3", 2), ("84/12", 7),
    ("-(3-10)", 7), ("+5", 5), (" 1 + 2 ", 3), ("((((1))))", 1), ("999999*999999", 999998000001),
    ("(" * 31 + "1" + ")" * 31, 1),
])
def test_arithmetic_values(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression, error", [
    ("1/0", "division by zero"), ("5//0", "division by zero"), ("5%(3-3)", "division by zero"),
    ("7/2", "not whole"), ("2**10", "bad expression"), ("1+", "bad expression"), ("()", "bad expression"),
    ("012", "bad expression"), ("1.5*2", "bad character"), ("__import__('os')", "bad character"),
    ("0x10", "bad character"), ("1_000", "bad character"), ("a+1", "bad character"), ("", "empty"),
    ("9" * 65, "too long"), ("(" * 40 + "1" + ")" * 40, "too long"),
])
def test_arithmetic_errors(expression, error):
    with pytest.raises(CalcError, match=f"^{error}$"):
        evaluate(expression)


def test_every_intermediate_value_is_bounded():
    assert evaluate("99999999*99999999", max_digits=16) == 9999999800000001
    with pytest.raises(CalcError, match="too big"):
        evaluate("99999999*99999999*99999999*99999999*99999999*9999999", max_digits=32)
    with pytest.raises(CalcError, match="too big"):
        evaluate("100", max_digits=2)


def test_the_calculator_never_calls_eval(monkeypatch):
    def no_eval(*args, **kwargs):
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", no_eval)
    assert evaluate("(12+3)*4-5//2") == 58
    assert make().tool("<calc>6*7</calc>") == "42"


# ---- the protocol --------------------------------------------------------------------------------------------
def test_the_right_answer_at_once_bare_or_tagged(play):
    for answer in ("408", " 408\n", "<answer>408</answer>", "so <answer> 408 </answer>"):
        (step,) = play(make(), [answer], record())
        assert (step.rewards, step.done, step.success, step.tool_calls) == ((1.0,), (True,), (True,), (0,))


def test_a_wrong_answer_ends_the_episode_unsolved(play):
    for answer in ("409", "<answer>409</answer>", "4 0 8", "", "<answer>408"):
        (step,) = play(make(), [answer], record())
        assert (step.rewards, step.done, step.success, step.observations) == ((0.0,), (True,), (False,), (None,))


def test_a_tool_call_then_the_answer(play):
    call, answer = play(make(), ["<calc>12*34</calc>", "<answer>408</answer>"], record())
    assert [m.model_dump() for m in call.observations[0]] == [{"role": "tool", "content": "408"}]
    assert (call.rewards, call.done, call.success, call.tool_calls) == ((None,), (False,), (None,), (1,))
    assert call.states[0]["calls"] == 1 and call.states[0]["result"] == "408"
    assert (answer.rewards, answer.done, answer.success, answer.tool_calls) == ((1.0,), (True,), (True,), (0,))


def test_the_observation_role_is_an_option(play):
    (call, _) = play(make(observation_role="user"), ["<calc>1+1</calc>", "2"], record())
    assert call.observations[0][0].role == "user" and call.observations[0][0].content == "2"


@pytest.mark.parametrize("response, observation", [
    ("<calc>12*34", "error: no </calc>"),
    ("<calc>1/0</calc>", "error: division by zero"),
    ("<calc>7/2</calc>", "error: not whole"),
    ("<calc>" + "9" * 100 + "</calc>", "error: too long"),
    ("<calc>import os</calc>", "error: bad character"),
    ("<calc>2**3</calc>", "error: bad expression"),
    ("<calc></calc>", "error: empty"),
    ("<calc>1+1</calc><calc>2+2</calc>", "2"),  # the first call is the one answered
])
def test_a_failed_tool_call_is_answered_and_counted(response, observation, play):
    (step,) = play(make(), [response], record())
    assert step.observations[0][0].content == observation
    assert (step.done, step.tool_calls, step.rewards) == ((False,), (1,), (None,))


def test_the_tool_call_budget(play):
    calls = ["<calc>1+1</calc>", "<calc>2+2</calc>", "<calc>3+3</calc>"]
    first, second, third = play(make(max_tool_calls=2), calls, record())
    assert (first.tool_calls, second.tool_calls) == ((1,), (1,)) and second.observations[0][0].content == "4"
    assert (third.done, third.success, third.rewards, third.tool_calls, third.observations) == \
        ((True,), (False,), (0.0,), (0,), (None,))
    (only,) = play(make(max_tool_calls=0), ["<calc>1+1</calc>"], record())
    assert (only.done, only.success) == ((True,), (False,))


def test_a_batch_of_episodes_at_different_turns_and_states_as_plain_data():
    environment = make()
    records = [record(), record("2+2=", "4"), record("9*9=", "81")]
    reset = environment.reset(records)
    assert [p[0].content for p in reset.prompts] == ["12*34=", "2+2=", "9*9="]
    first = environment.step(reset.states, ["<calc>12*34</calc>", "4", "<calc>9*9"])
    assert first.done == (False, True, False) and first.tool_calls == (1, 0, 1)
    running = [first.states[0], first.states[2]]
    round_tripped = json.loads(json.dumps(running))
    assert round_tripped == running
    second = environment.step(round_tripped, ["408", "<calc>9*9</calc>"])
    assert second.done == (True, False) and second.success == (True, None)
    third = environment.step([second.states[1]], ["<answer>81</answer>"])
    assert third.success == (True,) and third.states[0]["calls"] == 2


def test_reset_needs_solutions():
    with pytest.raises(DataError, match="environment 'calculator': record 1 has no solution"):
        make().reset([record(), Record.from_dict({"prompt": "1+1="})])


# ---- its own episodes ----------------------------------------------------------------------------------------
ALL_OPERATORS = ["+", "-", "*", "/", "//", "%"]
BY_HAND = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "%": operator.mod}


def solve_by_hand(expression: str) -> str:
    left, op, right = re.fullmatch(r"([0-9]+)(//|[-+*/%])([0-9]+)", expression).groups()
    if op == "/":
        assert int(left) % int(right) == 0, f"{expression} does not divide exactly"
        return str(int(left) // int(right))
    return str(BY_HAND[op](int(left), int(right)))


def test_own_episodes_are_seeded_right_and_disjoint():
    options = CalculatorOptions(size=300, eval_size=200, seed=3, operators=ALL_OPERATORS)
    train, evaluation = list(Calculator(options).records("train")), list(Calculator(options).records("eval"))
    assert (len(train), len(evaluation)) == (300, 200)
    expressions = {split: [r.fields["expression"] for r in records] for split, records in
                   (("train", train), ("eval", evaluation))}
    assert not set(expressions["train"]) & set(expressions["eval"]) and len(set(expressions["eval"])) == 200
    for r in train + evaluation:
        assert r.messages[0].content == r.fields["expression"] + "="
        assert r.solution == solve_by_hand(r.fields["expression"])
    used = {re.search(r"//|[-+*/%]", e).group() for e in expressions["train"]}
    assert used == set(ALL_OPERATORS)
    assert [r.fields for r in Calculator(options).records("eval")] == [r.fields for r in evaluation]
    assert [r.fields for r in Calculator(options.model_copy(update={"eval_size": 10})).records("train")] == \
        [r.fields for r in train]  # eval_size never changes the train split
    assert [r.fields for r in Calculator(options.model_copy(update={"seed": 4})).records("train")] != \
        [r.fields for r in train]


def test_operand_digits_and_operators():
    environment = Calculator(CalculatorOptions(size=50, eval_size=0, min_digits=2, max_digits=4, operators=["*"]))
    for r in environment.records("train"):
        left, right = r.fields["expression"].split("*")
        assert 2 <= len(left) <= 4 and 2 <= len(right) <= 4
    with pytest.raises(ValueError, match="min_digits"):
        CalculatorOptions(min_digits=4, max_digits=3)
    with pytest.raises(ValueError):
        CalculatorOptions(operators=["**"])


def test_a_too_small_episode_space_is_a_config_error():
    from ppo_core.errors import ConfigError

    with pytest.raises(ConfigError, match="could not draw 200 eval episodes"):
        Calculator(CalculatorOptions(size=100, eval_size=200, min_digits=1, max_digits=1, operators=["+"]))
