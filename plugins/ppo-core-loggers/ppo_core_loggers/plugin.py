"""The ``loggers`` plugin: the module the ``ppo_core`` entry point names."""

from __future__ import annotations

from typing import Callable

from ppo_core import hookimpl

from .loggers import MLflowLogger, TensorBoardLogger, WandbLogger


@hookimpl
def register_loggers(register: Callable[[type], None]) -> None:
    register(TensorBoardLogger)
    register(WandbLogger)
    register(MLflowLogger)
