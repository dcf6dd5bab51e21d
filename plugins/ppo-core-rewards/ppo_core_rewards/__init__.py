"""Rule-based rewards for ppo-core: ``edit_distance``, ``exact_match`` and ``repetition_penalty``; and
``http_reward``, rewards from a server over HTTP.

The core never imports this package: ppo-core finds it through the ``ppo_core`` entry point
``rule_rewards = "ppo_core_rewards.plugin"`` of the distribution ``ppo-core-rewards``.
"""

from .remote import HttpReward, HttpRewardOptions
from .rewards import (
    EditDistance,
    EditDistanceOptions,
    ExactMatch,
    RepetitionPenalty,
    RepetitionPenaltyOptions,
)
from .text import TextMatchOptions

__version__ = "0.1.0"

__all__ = [
    "EditDistance",
    "EditDistanceOptions",
    "ExactMatch",
    "HttpReward",
    "HttpRewardOptions",
    "RepetitionPenalty",
    "RepetitionPenaltyOptions",
    "TextMatchOptions",
]
