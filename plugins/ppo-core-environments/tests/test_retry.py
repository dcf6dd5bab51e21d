"""``retry_with_feedback``: scripted answers over records with solutions, feedback kinds, the decaying reward,
the attempt budget; and a real dataset plugin's records through the plugin manager."""

from __future__ import annotations

import json

import pytest

from ppo_core import Record, RunContext
from ppo_core.errors import DataError
from ppo_core.plugin.loading import load_plugins
from ppo_core_environments import RetryOptions, RetryWithFeedback
from ppo_core_environments.retry import differing, feedback_text


def make(**options) -> RetryWithFeedback:
    return RetryWithFeedback(RetryOptions(**options), RunContext())


def task(solution="pqibny") -> Record:
    return Record.from_dict({"prompt": "reverse: ynbiqp =", "solution": solution})


def test_the_right_answer_at_once(play):
    (step,) = play(make(), [" pqibny\n"], task())
    assert (step.rewards, step.done, step.success, step.observations, step.tool_calls) == \
        ((1.0,), (True,), (True,), (None,), (0,))


def test_wrong_then_right_hears_feedback_and_the_reward_decays(play):
    first, second = play(make(decay=0.5), ["pqibnx", "pqibny"], task())
    assert (first.observations, first.rewards, first.done, first.success) == (("wrong: 1 differ",), (None,), (False,),
                                                                              (None,))
    assert (second.rewards, second.done, second.success) == ((0.5,), (True,), (True,))
    *_, third = play(make(decay=0.5, max_attempts=3), ["a", "b", "pqibny"], task())
    assert third.rewards == (0.25,)


@pytest.mark.parametrize("kind, answer, text", [
    ("none", "pqibnx", "wrong"),
    ("count", "pqibnx", "wrong: 1 differ"),
    ("count", "pq", "wrong: 4 differ"),
    ("count", "pqibnyzz", "wrong: 2 differ"),
    ("positions", "pxibnx", "wrong: p_ibn_"),
    ("positions", "pq", "wrong: pq____"),
    ("positions", "", "wrong: ______"),
    ("marks", "pxibnx", "wrong: +-+++-"),
    ("marks", "pq", "wrong: ++----"),
    ("marks", "pqibnyzz", "wrong: ++++++--"),
])
def test_feedback_kinds(kind, answer, text, play):
    (step, _) = play(make(feedback=kind), [answer, "pqibny"], task())
    assert step.observations == (text,)


def test_feedback_is_against_the_nearest_solution(play):
    assert feedback_text("positions", "abd", ["xyz", "abc"]) == "wrong: ab_"
    assert differing("abc", "abc") == 0 and differing("abc", "ab") == 1 and differing("", "abc") == 3
    (step, last) = play(make(), ["four", "4"], Record.from_dict({"prompt": "2+2=", "solution": ["4", "four!"]}))
    assert step.observations == ("wrong: 1 differ",) and last.success == (True,)


def test_the_attempt_budget_ends_the_episode_unsolved(play):
    steps = play(make(max_attempts=2), ["x", "y", "pqibny"], task())
    assert len(steps) == 2
    assert (steps[-1].rewards, steps[-1].done, steps[-1].success, steps[-1].observations) == \
        ((0.0,), (True,), (False,), (None,))
    (only,) = play(make(max_attempts=1), ["x"], task())
    assert only.done == (True,) and only.success == (False,)


def test_a_batch_and_states_as_plain_data():
    environment = make()
    reset = environment.reset([task(), task("abc")])
    assert [p[0].content for p in reset.prompts] == ["reverse: ynbiqp =", "reverse: ynbiqp ="]
    states = json.loads(json.dumps(list(reset.states)))
    first = environment.step(states, ["pqibny", "abd"])
    assert first.done == (True, False) and first.observations == (None, "wrong: 1 differ")
    second = environment.step(json.loads(json.dumps([first.states[1]])), ["abc"])
    assert second.success == (True,) and second.rewards == (0.5,) and second.states[0]["attempt"] == 2


def test_reset_needs_solutions():
    with pytest.raises(DataError, match="environment 'retry_with_feedback': record 0 has no solution"):
        make().reset([Record.from_dict({"prompt": "hi"})])


def test_it_wraps_a_dataset_plugin_through_the_plugin_manager():
    registry = load_plugins().registry
    environment = registry.build("environment", "retry_with_feedback", {"max_attempts": 2, "feedback": "positions"},
                                 RunContext())
    records = list(registry.build("dataset", "reverse", {"size": 4, "eval_size": 0}, RunContext()).records("train"))
    reset = environment.reset(records)
    step = environment.step(reset.states, [r.solution for r in records[:2]] + ["", "x"])
    assert step.success[:2] == (True, True) and step.done == (True, True, False, False)
    assert step.observations[2] == "wrong: " + "_" * len(records[2].solution)
