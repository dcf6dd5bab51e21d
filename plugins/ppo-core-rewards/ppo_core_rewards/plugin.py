"""The ``rule_rewards`` plugin: the module the ``ppo_core`` entry point names."""

from __future__ import annotations

from typing import Callable

from ppo_core import hookimpl

from .remote import HttpReward
from .rewards import EditDistance, ExactMatch, RepetitionPenalty


@hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(EditDistance)
    register(ExactMatch)
    register(RepetitionPenalty)
    register(HttpReward)
