"""``guess_number``: higher or lower with a guess budget, driven by scripted guesses; its own seeded episodes."""

from __future__ import annotations

import json

import pytest

from ppo_core import Record
from ppo_core.errors import ConfigError, DataError
from ppo_core_environments import GuessNumber, GuessNumberOptions


def make(**options) -> GuessNumber:
    return GuessNumber(GuessNumberOptions(size=8, eval_size=8, **options))


def secret(number: int, low: int = 1, high: int = 32) -> Record:
    return Record.from_dict({"prompt": f"guess {low}-{high}", "solution": str(number), "low": low, "high": high})


def test_the_right_first_guess(play):
    (step,) = play(make(), ["17"], secret(17))
    assert (step.rewards, step.done, step.success, step.observations, step.tool_calls) == \
        ((1.0,), (True,), (True,), (None,), (0,))


def test_wrong_guesses_hear_higher_or_lower_and_the_reward_decays(play):
    steps = play(make(decay=0.5), ["16", " 24 ", "20", "17"], secret(17))
    assert [s.observations[0] for s in steps] == ["higher", "lower", "lower", None]  # the secret is higher/lower
    assert [s.rewards[0] for s in steps] == [None, None, None, 0.125] and steps[-1].success == (True,)
    assert [s.done[0] for s in steps] == [False, False, False, True]
    assert [s.states[0]["guesses"] for s in steps] == [1, 2, 3, 4]
    assert [(s.states[0]["low"], s.states[0]["high"]) for s in steps[:3]] == [(17, 32), (17, 23), (17, 19)]


def test_range_feedback_states_the_range_still_open(play):
    """``feedback: range``: a wrong guess hears the numbers still open instead of higher/lower; same rewards."""
    steps = play(make(decay=0.5, feedback="range"), ["16", "24", "x", "20", "17"], secret(17))
    assert [s.observations[0] for s in steps] == ["17-32", "17-23", "say a number", "17-19", None]
    assert steps[-1].rewards == (0.0625,) and steps[-1].success == (True,)
    with pytest.raises(ValueError):
        GuessNumberOptions(feedback="middle")


def test_not_a_number_is_told_so_and_costs_a_guess(play):
    steps = play(make(), ["seventeen", "17.0", "", "17"], secret(17))
    assert [s.observations[0] for s in steps] == ["say a number"] * 3 + [None]
    assert steps[-1].rewards == (pytest.approx(0.9 ** 3),) and steps[-1].success == (True,)


def test_the_guess_budget_ends_the_episode_unsolved(play):
    steps = play(make(max_guesses=3), ["1", "2", "3", "17"], secret(17))
    assert len(steps) == 3
    assert (steps[-1].done, steps[-1].success, steps[-1].rewards, steps[-1].observations) == \
        ((True,), (False,), (0.0,), (None,))
    (found_last,) = play(make(max_guesses=1), ["17"], secret(17))
    assert found_last.success == (True,)


def test_a_batch_and_states_as_plain_data():
    environment = make()
    reset = environment.reset([secret(5), secret(30)])
    first = environment.step(json.loads(json.dumps(list(reset.states))), ["16", "30"])
    assert first.observations == ("lower", None) and first.done == (False, True) and first.success == (None, True)
    assert json.loads(json.dumps(first.states[0])) == first.states[0]
    second = environment.step([first.states[0]], ["5"])
    assert second.success == (True,) and second.rewards == (pytest.approx(0.9),)


def test_reset_needs_a_number_and_its_range():
    with pytest.raises(DataError, match="environment 'guess_number': record 0 needs"):
        make().reset([Record.from_dict({"prompt": "guess", "solution": "7"})])
    with pytest.raises(DataError, match="record 0 needs a whole-number solution"):
        make().reset([Record.from_dict({"prompt": "guess", "solution": "seven", "low": 1, "high": 9})])
    with pytest.raises(DataError, match="has no solution"):
        make().reset([Record.from_dict({"prompt": "guess", "low": 1, "high": 9})])


def test_own_episodes_are_seeded_in_range_and_disjoint():
    options = GuessNumberOptions(size=512, eval_size=256, seed=1)
    environment = GuessNumber(options)
    train, evaluation = list(environment.records("train")), list(environment.records("eval"))
    assert (len(train), len(evaluation)) == (512, 256)
    key = lambda r: (r.fields["low"], r.solution)  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in evaluation} and len({key(r) for r in evaluation}) == 256
    for r in train + evaluation:
        low, high, number = r.fields["low"], r.fields["high"], int(r.solution)
        assert options.low <= low <= number <= high <= options.high and high - low + 1 == options.span
        assert r.messages[0].content == f"guess {low}-{high}"
    assert [r.fields for r in GuessNumber(options).records("train")] == [r.fields for r in train]
    assert [r.solution for r in GuessNumber(GuessNumberOptions(seed=2)).records("train")] != \
        [r.solution for r in train]


def test_options_are_checked():
    with pytest.raises(ValueError, match="span \\(50\\) must fit in low..high \\(1..20\\)"):
        GuessNumberOptions(low=1, high=20, span=50)
    with pytest.raises(ValueError):
        GuessNumberOptions(decay=0)
    with pytest.raises(ConfigError, match="could not draw 100 eval episodes"):
        GuessNumber(GuessNumberOptions(low=1, high=8, span=8, size=50, eval_size=100))
