"""What the moderation console sends: commands (the contract's `Command`), their queue, and the actions log.

A command is built and checked against `monitor.contracts.messages.Command` before it is queued, so a console
never sends what the monitor would refuse. Commands wait in `CommandQueue` while the broker is away and go out,
in order, after the reconnect. Each command, its publication and the monitor's answer are appended to the
actions log (JSON lines, fsynced) when one is given.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from monitor.contracts.alerts import utc_iso
from monitor.contracts.base import ContractError, describe
from monitor.contracts.messages import ACTIONS, COMMAND_SCHEMA_VERSION, Command

__all__ = ["ACTIONS", "ActionsLog", "CommandQueue", "Outgoing", "build_command"]


def build_command(action: str, *, incident_id: str, stream_id: str, moderator: str,
                  reason: str | None = None, at: float | None = None) -> dict[str, Any]:
    """A `Command` with a fresh command_id and a UTC ISO 8601 `at`, as the JSON object that is published.

    Raises ValueError for an unknown action and ContractError for what the monitor would refuse (a reason
    that is too long or holds control characters, say)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    body = {
        "schema_version": COMMAND_SCHEMA_VERSION,
        "type": "command",
        "command_id": str(uuid.uuid4()),
        "action": action,
        "incident_id": incident_id,
        "stream_id": stream_id,
        "moderator": moderator,
        "reason": reason,
        "at": utc_iso(time.time() if at is None else at),
    }
    try:
        Command.model_validate(body)
    except ValidationError as exc:
        raise ContractError(f"command: {describe(exc)}") from None
    return body


@dataclass(frozen=True)
class Outgoing:
    key: str  # the incident row the command is for
    topic: str
    command: dict[str, Any]

    @property
    def command_id(self) -> str:
        return str(self.command["command_id"])


class CommandQueue:
    """Commands waiting for the broker, oldest first; `wake` is set when one is put."""

    def __init__(self) -> None:
        self._items: deque[Outgoing] = deque()
        self.wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, out: Outgoing) -> None:
        self._items.append(out)
        self.wake.set()

    def head(self) -> Outgoing | None:
        return self._items[0] if self._items else None

    def done(self) -> None:
        """The head was published (PUBACK): drop it."""
        self._items.popleft()


class ActionsLog:
    """The console's local record of what its moderator did: one JSON line per event, appended and fsynced."""

    def __init__(self, path: Path | None, moderator: str) -> None:
        self.path = path
        self.moderator = moderator

    def append(self, entry: dict[str, Any]) -> None:
        """Raises OSError when the file cannot be written (the caller shows it)."""
        if self.path is None:
            return
        line = json.dumps({"logged_at": utc_iso(time.time()), "moderator": self.moderator, **entry},
                          separators=(",", ":"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
