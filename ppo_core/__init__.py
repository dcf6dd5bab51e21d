"""ppo-core: PPO fine-tuning of causal language models with plugin rewards and datasets."""

__version__ = "0.1.0"
