"""Mixing the chosen rewards: the weighted composer and its fault checks."""
