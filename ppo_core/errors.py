"""Errors that reach the user as one clear line (the CLI exits with status 2 on these)."""

from pydantic import ValidationError


class UserError(Exception):
    """A mistake in the user's config, data, plugins or command line.

    The CLI prints ``str(error)`` and exits with status 2, without a traceback.
    """


class ConfigError(UserError):
    """The run config is invalid: names the file and the field path."""


class DataError(UserError):
    """A dataset record is invalid: names the file, the line and the field."""


class PluginError(UserError):
    """A plugin misbehaved: names the plugin (and its distribution where known)."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same reward or dataset name."""


class RewardError(PluginError):
    """A reward failed on a batch: names the plugin, the reward and the sample."""


class EnvironmentPluginError(PluginError):
    """An environment failed on a batch of episodes: names the plugin, the environment, the call and the episode."""


class TrainingError(UserError):
    """Training cannot go on (for example, too many non-finite steps in a row)."""


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        where = ".".join(part for part in (prefix, loc) if part) or "(top level)"
        message = item["msg"]
        if not item["loc"] and item["type"] == "value_error":  # a check across sections: its message names the
            lines.append(f"{prefix}: {message}" if prefix else message)  # fields, its input is the whole config
            continue
        if item["type"] not in ("missing", "extra_forbidden") and "input" in item:
            shown = repr(item["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            message += f" (got {shown})"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)
