"""What every training command runs on: the run loop, checkpoints, metrics, optimizer and schedule."""
