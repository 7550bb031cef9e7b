"""Typed errors and the exit codes of the ``sme`` command.

Every user-side problem is an :class:`SMEError`: the CLI prints ``str(error)`` one ``error:`` line per
problem and exits with the error's :attr:`~SMEError.exit_code`. Any other exception is an internal
error (a bug): one line plus "run with --debug for the traceback", exit code :data:`EXIT_INTERNAL`.
"""

EXIT_OK = 0
#: an unexpected exception: a bug in SME or in a plugin (``--debug`` / ``SME_DEBUG=1`` shows the traceback)
EXIT_INTERNAL = 1
#: the command line itself is wrong (unknown option, missing argument, bad ``--set``); argparse's code
EXIT_USAGE = 2
#: the config is wrong: unknown key or name, bad value, settings that cannot work together
EXIT_CONFIG = 3
#: an input file cannot be used: config file unreadable or not UTF-8, weights/checkpoint unusable
EXIT_INPUT = 4
#: the output directory or report files cannot be written
EXIT_OUTPUT = 5
#: a plugin misbehaved: bad factory, duplicate name, plugin module that cannot be imported
EXIT_PLUGIN = 6
#: interrupted by Ctrl-C (SIGINT) / terminated (SIGTERM), as shells report it (128 + signal number)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: exit code -> meaning, as listed in ``sme --help``.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug; run with --debug for the traceback)",
    EXIT_USAGE: "usage error (command line)",
    EXIT_CONFIG: "config error",
    EXIT_INPUT: "input file error (config file, weights)",
    EXIT_OUTPUT: "output error (output directory, report files)",
    EXIT_PLUGIN: "plugin error",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_TERMINATED: "terminated (SIGTERM)",
}


class SMEError(Exception):
    """Base class of every user-facing error of SME."""

    exit_code = EXIT_CONFIG


class ConfigError(SMEError):
    """A config value is wrong; the message names the config path and the bad value."""

    exit_code = EXIT_CONFIG


class ConflictError(ConfigError):
    """Settings that are each valid but cannot work together (raised by strategies while they build or
    run; the message names the section(s) and values at fault)."""


class UsageError(SMEError):
    """The command line is wrong (e.g. a malformed ``--set``)."""

    exit_code = EXIT_USAGE


class InputError(SMEError):
    """An input file cannot be used (unreadable, not UTF-8, too large)."""

    exit_code = EXIT_INPUT


class WeightsError(InputError):
    """Weights are unusable (NaN/Inf, checkpoint does not match the architecture)."""


class OutputError(SMEError):
    """The output directory cannot be written."""

    exit_code = EXIT_OUTPUT


class PluginError(SMEError):
    """A plugin misbehaved (duplicate name, bad factory, module that cannot be imported)."""

    exit_code = EXIT_PLUGIN


class Interrupted(BaseException):
    """Raised by the SIGTERM handler of the CLI, so that cleanup runs as for Ctrl-C."""

    exit_code = EXIT_TERMINATED
