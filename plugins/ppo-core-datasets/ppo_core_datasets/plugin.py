"""The ``datasets`` plugin: registers every dataset of ppo-core-datasets with ppo-core.

Entry point (``pyproject.toml``)::

    [project.entry-points.ppo_core]
    datasets = "ppo_core_datasets.plugin"

Importing this module never imports the optional ``datasets`` library; ``hf`` does that when it is built.
"""

from __future__ import annotations

from typing import Callable

from ppo_core import hookimpl

from .files import JsonDataset, JsonlDataset
from .hf import HFDataset
from .synthetic import CopyDataset, ReverseDataset, SortDataset

DATASETS = (JsonlDataset, JsonDataset, HFDataset, ReverseDataset, CopyDataset, SortDataset)


@hookimpl
def register_datasets(register: Callable[[type], None]) -> None:
    for dataset in DATASETS:
        register(dataset)
