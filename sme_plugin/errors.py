"""Typed errors. The CLI prints ``str(error)`` as one line and exits non-zero."""


class SMEError(Exception):
    """Base class of every user-facing error of SME."""


class ConfigError(SMEError):
    """A config value is wrong; the message names the config path and the bad value."""


class PluginError(SMEError):
    """A plugin misbehaved (duplicate name, bad factory)."""


class WeightsError(SMEError):
    """Weights are unusable (NaN/Inf, checkpoint does not match the architecture)."""


class OutputError(SMEError):
    """The output directory cannot be written."""
