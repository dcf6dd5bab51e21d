"""ppo-core-reward-model: the reward ``reward_model``, a learned reward model trained with
``ppo-core train-reward`` (see :mod:`ppo_core.reward_model`)."""

from .reward import RewardModelOptions, RewardModelReward

__all__ = ["RewardModelOptions", "RewardModelReward"]
