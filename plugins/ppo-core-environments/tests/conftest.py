"""Fixtures of the environments' tests."""

from __future__ import annotations

from typing import Callable

import pytest


@pytest.fixture
def play() -> Callable:
    """``play(environment, responses, record)``: the steps of one episode of ``record`` answered by
    ``responses`` in turn, stopping when it is done."""

    def play(environment, responses, record):
        state = environment.reset([record]).states[0]
        steps = []
        for response in responses:
            steps.append(environment.step([state], [response]))
            state = steps[-1].states[0]
            if steps[-1].done[0]:
                break
        return steps

    return play
