"""ppo-core-datasets: the ``jsonl``, ``json`` and ``hf`` datasets and the synthetic tasks ``reverse``, ``copy``
and ``sort``, registered with ppo-core through the ``ppo_core`` entry point ``datasets``."""

from .files import FileOptions, JsonDataset, JsonlDataset
from .hf import HFDataset, HFOptions
from .synthetic import CopyDataset, ReverseDataset, SortDataset, SyntheticOptions

__version__ = "0.1.0"

__all__ = [
    "CopyDataset",
    "FileOptions",
    "HFDataset",
    "HFOptions",
    "JsonDataset",
    "JsonlDataset",
    "ReverseDataset",
    "SortDataset",
    "SyntheticOptions",
]
