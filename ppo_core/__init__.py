"""ppo-core: PPO fine-tuning of causal language models with plugin rewards and datasets."""

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
