"""ppo-core: PPO fine-tuning of causal language models with plugin rewards, datasets and environments.

The public surface. Plugin authors import from here::

    from ppo_core import hookimpl, Reward, HiddenStateReward, Dataset, Logger, Record, Sample
    from ppo_core import Environment, EnvReset, EnvStep

and Python users call the entry functions of :mod:`ppo_core.api` (``ppo_core.train``, ``ppo_core.sft``,
``ppo_core.evaluate``, ``ppo_core.train_reward``), which load torch and transformers only when first used, with
plain functions as rewards (``ppo_core.reward``) and callbacks (``ppo_core.EarlyStopping``).
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
from .plugin.callables import reward
from .plugin.callbacks import EarlyStopping, Logger, RunInfo
from .plugin.environment import EnvReset, EnvStep, Environment
from .plugin.hookspecs import hookimpl

__version__ = "0.1.0"

_ENTRY_FUNCTIONS = {name: ("ppo_core.api", name) for name in ("train", "sft", "evaluate", "train_reward",
                                                                "TrainResult")}


def __getattr__(name: str):
    if name in _ENTRY_FUNCTIONS:
        import importlib

        module, attribute = _ENTRY_FUNCTIONS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'ppo_core' has no attribute {name!r}")


__all__ = [
    "ConfigError", "DataError", "Dataset", "EarlyStopping", "EnvReset", "EnvStep", "Environment",
    "HiddenStateReward", "Logger", "Message", "NoOptions", "PluginError", "Record", "Reward", "RewardError",
    "RunContext", "RunInfo", "Sample", "Solution", "Split", "TrainResult", "TrainingError", "UserError",
    "__version__", "evaluate", "hookimpl", "reward", "sft", "train", "train_reward",
]
