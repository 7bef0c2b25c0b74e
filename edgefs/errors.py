"""Errors that reach the user.

Every error raised on purpose by edgefs is an :class:`EdgefsError`; its message
says what went wrong and what to do about it. The CLI prints the message and
exits non-zero instead of showing a traceback.
"""


class EdgefsError(Exception):
    """An error with a message meant for the user."""


class DataError(EdgefsError):
    """A data folder, image or episode request that cannot be used."""


class CheckpointError(EdgefsError):
    """A checkpoint that cannot be read or belongs to something unknown."""


class ConfigError(EdgefsError):
    """A configuration value or file that is not valid."""


class MissingDependencyError(EdgefsError):
    """An optional dependency that the requested feature needs is not installed."""
