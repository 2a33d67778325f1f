"""What the web console sends: a `Command` (monitor/contracts/messages.py) for the logged-in user, signed with
the console's key (web.command_key_file) so the monitor can record the user as verified, and the audit notes it
writes to the evidence log (every image view, report export and action, with user and time).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from monitor.contracts.alerts import utc_iso
from monitor.contracts.base import ContractError, describe
from monitor.contracts.messages import ACTIONS, COMMAND_SCHEMA_VERSION, Command
from monitor.evidence.signing import KeyFileError, key_id, load_signing_key
from monitor.evidence.store import EvidenceError, EvidenceLog
from monitor.incidents.commands import seal_command

__all__ = ["AUDIT_TEXT", "Audit", "CommandSigner", "build_command"]

log = logging.getLogger(__name__)
AUDIT_TEXT = "web console audit"


def build_command(action: str, *, incident_id: str, stream_id: str, moderator: str, reason: str | None) -> dict[
        str, object]:
    """A `Command` checked against the contract (ContractError: what the monitor would refuse)."""
    if action not in ACTIONS:
        raise ContractError(f"action: must be one of {', '.join(ACTIONS)}, got {action!r}")
    body: dict[str, object] = {
        "schema_version": COMMAND_SCHEMA_VERSION, "type": "command", "command_id": str(uuid.uuid4()),
        "action": action, "incident_id": incident_id, "stream_id": stream_id, "moderator": moderator,
        "reason": reason or None, "at": utc_iso(time.time())}
    try:
        Command.model_validate(body)
    except ValidationError as exc:
        raise ContractError(f"command: {describe(exc)}") from None
    return body


class CommandSigner:
    """Seals commands with the console's Ed25519 key; without a key commands go unsigned (declared)."""

    def __init__(self, key: Ed25519PrivateKey | None) -> None:
        self.key = key
        self.key_id = key_id(key.public_key()) if key is not None else None

    @classmethod
    def from_file(cls, path: Path | None, state_dir: Path | None = None) -> CommandSigner:
        """The signer of web.command_key_file (KeyFileError naming that key, one line), or an unsigned one."""
        if path is None:
            return cls(None)
        try:
            return cls(load_signing_key(path, state_dir=state_dir))
        except KeyFileError as exc:  # its messages name the evidence key, the only other user of the loader
            raise KeyFileError(str(exc).replace("evidence.signing_key_file", "web.command_key_file", 1)) from None

    def wrap(self, command: dict[str, object], *, role: str, approved_by: str | None = None) -> dict[str, object]:
        if self.key is None or self.key_id is None:
            return command
        return seal_command(self.key, self.key_id, command, role=role, approved_by=approved_by)


class Audit:
    """Audit notes ("note" records whose body has `audit`) in the evidence log, or in memory without one."""

    def __init__(self, evidence_path: Path | None) -> None:
        self.log: EvidenceLog | None = None
        self._memory: list[dict[str, object]] = []
        if evidence_path is not None:
            try:
                self.log = EvidenceLog(evidence_path)
            except EvidenceError as exc:
                log.error("audit notes kept in memory only: %s", exc)

    def record(self, event: str, *, user: str, role: str, stream_id: str = "-", incident_id: str | None = None,
               **detail: object) -> None:
        body: dict[str, object] = {"text": AUDIT_TEXT, "audit": event, "user": user, "role": role,
                                   "at": utc_iso(time.time()), **detail}
        if self.log is None:
            self._memory.append({**body, "incident_id": incident_id})
            return
        try:
            self.log.append("note", stream_id=stream_id or "-", body=body, incident_id=incident_id)
        except (EvidenceError, ValueError) as exc:
            log.error("audit note %s by %s not written: %s", event, user, exc)
            self._memory.append({**body, "incident_id": incident_id})

    def entries(self, limit: int = 500) -> list[dict[str, object]]:
        """The newest audit notes first."""
        out = list(self._memory)
        if self.log is not None:
            out.extend(self._from_log())
        out.sort(key=lambda e: (str(e.get("at")), int(str(e.get("seq") or 0))), reverse=True)
        return out[:limit]

    def _from_log(self) -> Iterator[dict[str, object]]:
        assert self.log is not None
        for rec in self.log.records():
            if rec.kind != "note":
                continue
            data = json.loads(rec.body)
            if isinstance(data, dict) and data.get("text") == AUDIT_TEXT:
                yield {**data, "incident_id": rec.incident_id, "seq": rec.seq}

    def viewers(self, incident_id: str) -> set[str]:
        return {str(e["user"]) for e in self.entries(10_000)
                if e.get("incident_id") == incident_id and e.get("audit") == "image_view"}

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
