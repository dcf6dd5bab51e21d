"""ppo-core: PPO fine-tuning of causal language models with plugin rewards, datasets and environments.

The public surface. Plugin authors import from here::

    from ppo_core import hookimpl, Reward, HiddenStateReward, Dataset, Record, Sample
    from ppo_core import Environment, EnvReset, EnvStep

and Python users call the entry functions (``ppo_core.train``, ``ppo_core.sft``, ``ppo_core.evaluate``,
``ppo_core.train_reward``), which load torch and transformers only when first used.
"""

from .runtime.cpu import prefer_passive_openmp_threads

prefer_passive_openmp_threads()  # before anything imports torch (ppo_core.runtime.cpu says why)

from .errors import (
    ConfigError,
    DataError,
    PluginError,
    RewardError,
    TrainingError,
    UserError,
)
from .plugin.contract import (
    Dataset,
    HiddenStateReward,
    Message,
    NoOptions,
    Record,
    Reward,
    RunContext,
    Sample,
    Solution,
    Split,
)
from .plugin.environment import EnvReset, EnvStep, Environment
from .plugin.hookspecs import hookimpl

__version__ = "0.1.0"

_ENTRY_FUNCTIONS = {
    "train": ("ppo_core.commands.train", "train"),
    "sft": ("ppo_core.commands.sft", "train_sft"),
    "evaluate": ("ppo_core.commands.evaluate", "evaluate_model"),
    "train_reward": ("ppo_core.commands.train_reward", "run_train_reward"),
}


def __getattr__(name: str):
    if name in _ENTRY_FUNCTIONS:
        import importlib

        module, attribute = _ENTRY_FUNCTIONS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'ppo_core' has no attribute {name!r}")


__all__ = [
    "ConfigError", "DataError", "Dataset", "EnvReset", "EnvStep", "Environment", "HiddenStateReward", "Message", "NoOptions", "PluginError", "Record",
    "Reward", "RewardError", "RunContext", "Sample", "Solution", "Split", "TrainingError", "UserError", "__version__",
    "evaluate", "hookimpl", "sft", "train", "train_reward",
]
