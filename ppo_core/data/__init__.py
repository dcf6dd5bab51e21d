"""Prompts: records from a dataset plugin, streamed, rendered, encoded and padded; samples for the rewards."""
