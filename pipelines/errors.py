"""Errors in what an analysis is given (a hash list it cannot parse): the monitor reports them as user errors."""

from __future__ import annotations


class AnalysisInputError(Exception):
    """Input an analysis cannot use; the operator can fix it. `exit_code` is what a command returns for it."""

    exit_code = 2


class BankFormatError(AnalysisInputError):
    """A hash list could not be parsed; names the file and the line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason} (nothing loaded from this file)")
        self.path = path
        self.line = line
