"""Errors caused by the user's input or environment: printed as one clear line, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the operator can fix; `exit_code` is what the CLI returns."""

    exit_code = 2


class ConfigError(UserError):
    """The config file or command-line flags are invalid."""


class BankFormatError(UserError):
    """A hash list could not be parsed; names the file and the line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason} (nothing loaded from this file)")
        self.path = path
        self.line = line


class BrokerError(UserError):
    """The MQTT broker cannot be reached or refused us."""

    exit_code = 3
