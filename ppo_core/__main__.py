"""``python -m ppo_core``: the same command line as ``ppo-core``."""

from .cli import run

run()
