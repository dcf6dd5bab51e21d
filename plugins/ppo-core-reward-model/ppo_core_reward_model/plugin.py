"""The ``reward_model`` plugin: the module the ``ppo_core`` entry point names."""

from __future__ import annotations

from typing import Callable

from ppo_core import hookimpl

from .hub import HubRewardModel
from .reward import RewardModelReward


@hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(RewardModelReward)
    register(HubRewardModel)
