"""One error root for Predis, split by who did something wrong (see STYLE.md)."""

from __future__ import annotations


class PredisError(Exception):
    """Root of every error Predis raises itself. Redis's own ``-ERR`` replies are values, not these."""


class ClientProtocolError(PredisError):
    """The client sent bytes that are not a valid request. Its connection is closed after the reply."""


class UpstreamError(PredisError):
    """The upstream Redis could not be reached, dropped the connection, or did not answer in time."""


class ConfigError(PredisError):
    """A setting, file or flag is invalid. The message is one line naming the problem."""


class DataError(PredisError):
    """An access log, trace or workload parameter is unreadable or invalid. The message is one line."""
