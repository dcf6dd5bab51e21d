"""ppo-core-reward-model: the reward ``reward_model``, a learned reward model trained with
``ppo-core train-reward`` (see :mod:`ppo_core.reward_model`), and ``hf_reward_model``, any transformers
sequence-classification checkpoint."""

from .hub import HubRewardModel, HubRewardModelOptions
from .reward import RewardModelOptions, RewardModelReward

__all__ = ["HubRewardModel", "HubRewardModelOptions", "RewardModelOptions", "RewardModelReward"]
