"""Console commands as the incident book accepts them: `parse_command` checks every field of one (as JSON,
from MQTT) and raises `CommandError` naming the field it rejects.

The limits agree with the Command contract (monitor/contracts/messages.py; tests/unit/test_contracts.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

from monitor.common.safetext import describe_char, forbidden_char
from monitor.incidents.model import ACTION_STATUS, SCHEMA_VERSION, Action

MAX_MODERATOR = 100
MAX_REASON = 1000
MAX_ID = 100
_COMMAND_FIELDS: Final = frozenset(
    {"schema_version", "type", "command_id", "action", "incident_id", "stream_id", "moderator", "reason", "at"}
)


class CommandError(ValueError):
    """A console command that cannot be applied; the message starts with the offending field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name



@dataclass(frozen=True, slots=True)
class ParsedCommand:
    command_id: str
    action: Action
    incident_id: str
    moderator: str
    reason: str
    stream_id: str | None



def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(cmd: Mapping[str, object], name: str, limit: int, *, required: bool = True, empty_ok: bool = False) -> str:
    value = cmd.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise CommandError(name, "missing" if value is None else f"must be a string, got {_show(value)}")
    if not empty_ok and not value.strip():
        raise CommandError(name, "must not be empty")
    if len(value) > limit:
        raise CommandError(name, f"longer than {limit} characters")
    bad = forbidden_char(value)
    if bad is not None:  # a forged log line, a terminal escape, a name that reads backwards
        raise CommandError(name, f"contains {describe_char(bad[1])} at position {bad[0]}: control, separator and "
                                 "bidirectional characters are not accepted")
    return value


def parse_command(cmd: object) -> ParsedCommand:
    if not isinstance(cmd, Mapping):
        raise CommandError("command", f"must be a JSON object, got {type(cmd).__name__}")
    unknown = sorted(str(k) for k in cmd if k not in _COMMAND_FIELDS)
    if unknown:
        raise CommandError(unknown[0], "unknown field")
    version = cmd.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise CommandError("schema_version", f"must be {SCHEMA_VERSION}, got {_show(version)}")
    if cmd.get("type") != "command":
        raise CommandError("type", f"must be 'command', got {_show(cmd.get('type'))}")
    command_id = _text(cmd, "command_id", MAX_ID)
    action = cmd.get("action")
    if not isinstance(action, str) or action not in ACTION_STATUS:
        raise CommandError("action", f"must be one of {', '.join(ACTION_STATUS)}, got {_show(action)}")
    incident_id = _text(cmd, "incident_id", MAX_ID)
    moderator = _text(cmd, "moderator", MAX_MODERATOR).strip()
    reason = _text(cmd, "reason", MAX_REASON, required=False, empty_ok=True)
    stream_id = _text(cmd, "stream_id", MAX_ID) if cmd.get("stream_id") is not None else None
    if cmd.get("at") is not None:
        _text(cmd, "at", 64)  # the monitor records its own time; a console's clock is only informative
    return ParsedCommand(command_id, cast(Action, action), incident_id, moderator, reason, stream_id)

