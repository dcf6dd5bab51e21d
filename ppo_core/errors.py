"""Errors that reach the user as one clear line (the CLI exits with status 2 on these)."""


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


class TrainingError(UserError):
    """Training cannot go on (for example, too many non-finite steps in a row)."""
