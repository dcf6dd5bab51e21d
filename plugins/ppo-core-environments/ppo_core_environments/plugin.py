"""The ``environments`` plugin: registers the environments of ppo-core-environments and their SFT transcript
datasets with ppo-core.

Entry point (``pyproject.toml``)::

    [project.entry-points.ppo_core]
    environments = "ppo_core_environments.plugin"
"""

from __future__ import annotations

from typing import Callable

from ppo_core import hookimpl

from .calculator import Calculator
from .guess_number import GuessNumber
from .retry import RetryWithFeedback
from .transcripts import CalculatorTranscripts, GuessNumberTranscripts, RetryTranscripts

ENVIRONMENTS = (RetryWithFeedback, Calculator, GuessNumber)
DATASETS = (RetryTranscripts, CalculatorTranscripts, GuessNumberTranscripts)


@hookimpl
def register_environments(register: Callable[[type], None]) -> None:
    for environment in ENVIRONMENTS:
        register(environment)


@hookimpl
def register_datasets(register: Callable[[type], None]) -> None:
    for dataset in DATASETS:
        register(dataset)
