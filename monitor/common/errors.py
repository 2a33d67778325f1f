"""Errors caused by the user's input or environment: printed as one clear line, never a traceback.

A hash list the analyses cannot parse raises `pipelines.errors.BankFormatError`; `USER_ERRORS` catches both.
"""

from __future__ import annotations

from pipelines.errors import AnalysisInputError


class UserError(Exception):
    """Something the operator can fix; `exit_code` is what the CLI returns."""

    exit_code = 2


class ConfigError(UserError):
    """The config file or command-line flags are invalid."""


class BrokerError(UserError):
    """The MQTT broker cannot be reached or refused us."""

    exit_code = 3


USER_ERRORS: tuple[type[Exception], ...] = (UserError, AnalysisInputError)
"""What a command reports as one line and an exit code: the operator's input, not a bug."""
