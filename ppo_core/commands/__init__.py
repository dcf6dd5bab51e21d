"""The commands: train (PPO), sft, eval, train-reward, demo; each a function the CLI and Python call."""
