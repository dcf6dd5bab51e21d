"""The plugin contract: the hooks a ppo-core plugin may implement.

A plugin is a module (or object) registered under the entry-point group ``ppo_core``::

    [project.entry-points.ppo_core]
    my_rewards = "my_package.rewards"

and implements one or more of the hooks below, decorated with :data:`ppo_core.hookimpl`.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "ppo_core"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_rewards(register: Callable[[type], None]) -> None:
    """Register reward classes.

    :param register: call ``register(RewardClass)`` once for each reward the plugin provides.
        A reward class subclasses :class:`ppo_core.Reward`: it has a unique ``name``, a pydantic
        ``Options`` model validated from the run config's ``options:``, and ``__call__(samples)``
        returning one float (or ``None`` to abstain) per sample. ppo-core stamps each reward with the
        plugin that registered it and rejects a name that another plugin already registered.
    """


@hookspec
def register_datasets(register: Callable[[type], None]) -> None:
    """Register dataset classes.

    :param register: call ``register(DatasetClass)`` once for each dataset the plugin provides.
        A dataset class subclasses :class:`ppo_core.Dataset`: it has a unique ``name``, a pydantic
        ``Options`` model, and ``records(split)`` yielding validated :class:`ppo_core.Record` objects
        for the ``"train"`` or ``"eval"`` split.
    """


@hookspec
def register_environments(register: Callable[[type], None]) -> None:
    """Register environment classes (multi-turn episodes; docs/design.md, "Environments").

    :param register: call ``register(EnvironmentClass)`` once for each environment the plugin provides.
        An environment class subclasses :class:`ppo_core.Environment`: it has a unique ``name``, a pydantic
        ``Options`` model validated from the config's ``environment.options``, and batched
        ``reset(records) -> EnvReset`` and ``step(states, responses) -> EnvStep``; optionally its own
        ``records(split)`` like a dataset's. States are plain (JSON-serialisable) data.
    """
