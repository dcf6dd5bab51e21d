"""Metric loggers for ppo-core: ``tensorboard``, ``wandb`` and ``mlflow``, chosen by ``train.loggers``."""

from .loggers import MLflowLogger, TensorBoardLogger, WandbLogger

__all__ = ["MLflowLogger", "TensorBoardLogger", "WandbLogger"]
