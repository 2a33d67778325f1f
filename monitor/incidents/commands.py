"""Console commands as the incident book accepts them: `parse_command` checks every field of one (as JSON,
from MQTT) and raises `CommandError` naming the field it rejects. Signed commands (`seal_command`,
`open_signed`): the envelope a console with its own Ed25519 key sends, and the trust it earns (`CommandTrust`).

The limits agree with the Command contract (monitor/contracts/messages.py; tests/unit/test_contracts.py).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from monitor.common.safetext import describe_char, forbidden_char
from monitor.contracts.messages import MAX_SIGNED, ROLE_NAMES, SIGNED_FORMAT
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



# ------------------------------------------------------------------------------------------- signed commands
# A console with its own key (the web console, monitor/web/) publishes each command as an envelope:
#   {"type": "signed_command", "format": "lsmc-command-1", "key_id": K, "signature": base64 Ed25519,
#    "signed": "<JSON text of {"command": {...the Command...}, "role": R, "approved_by": name | null}>"}
# The signature covers b"lsmc-command-1\n" + the UTF-8 of "signed" exactly as sent (no re-serialisation).
# A monitor that trusts K records the command's moderator as verified (monitor/app/commands.py).
# The contract: monitor/contracts/messages.py SignedCommand (schemas/signed-command.schema.json).

SIGNED_TYPE: Final = "signed_command"
_ENVELOPE_FIELDS: Final = frozenset({"type", "format", "key_id", "signature", "signed"})
_BODY_FIELDS: Final = frozenset({"command", "role", "approved_by"})


@dataclass(frozen=True, slots=True)
class CommandTrust:
    """Whose word a command is: verified (a trusted console signed it for its logged-in user) or declared."""

    verified: bool
    key_id: str | None = None
    role: str | None = None
    approved_by: str | None = None

    def evidence(self) -> dict[str, object]:
        """What the action's evidence record adds: verified, and for a signed command its key, role, approver."""
        if not self.verified:
            return {"verified": False}
        return {"verified": True, "key_id": self.key_id, "role": self.role, "approved_by": self.approved_by}


DECLARED: Final = CommandTrust(False)


def signed_message(signed: str) -> bytes:
    """The bytes a command envelope's signature covers."""
    return SIGNED_FORMAT.encode("ascii") + b"\n" + signed.encode("utf-8")


def seal_command(key: Ed25519PrivateKey, key_id: str, command: Mapping[str, object], *, role: str,
                 approved_by: str | None = None) -> dict[str, object]:
    """The envelope for command, signed with key (whose public half has the id key_id)."""
    signed = json.dumps({"command": dict(command), "role": role, "approved_by": approved_by},
                        sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    signature = base64.b64encode(key.sign(signed_message(signed))).decode("ascii")
    return {"type": SIGNED_TYPE, "format": SIGNED_FORMAT, "key_id": key_id, "signature": signature, "signed": signed}


def is_signed(cmd: Mapping[str, object]) -> bool:
    return cmd.get("type") == SIGNED_TYPE


def open_signed(envelope: Mapping[str, object], keys: Mapping[str, Ed25519PublicKey], *, now: float,
                max_age_s: float) -> tuple[dict[str, object], CommandTrust]:
    """The command inside a signed envelope and its trust; CommandError naming the field that fails.

    Refused: unknown fields, an unknown key, a bad signature, a command whose `at` is missing or further than
    max_age_s from now (a captured envelope replayed after the incident book forgot its command_id)."""
    unknown = sorted(str(k) for k in envelope if k not in _ENVELOPE_FIELDS)
    if unknown:
        raise CommandError(unknown[0], "unknown field in a signed command")
    if envelope.get("format") != SIGNED_FORMAT:
        raise CommandError("format", f"must be {SIGNED_FORMAT!r}, got {_show(envelope.get('format'))}")
    kid, signature, signed = envelope.get("key_id"), envelope.get("signature"), envelope.get("signed")
    if not isinstance(kid, str) or kid not in keys:
        raise CommandError("key_id", f"not a trusted command key: {_show(kid)}")
    if not isinstance(signed, str) or len(signed) > MAX_SIGNED:
        raise CommandError("signed", f"must be a string of at most {MAX_SIGNED} characters")
    try:
        raw = base64.b64decode(signature if isinstance(signature, str) else "", validate=True)
        keys[kid].verify(raw, signed_message(signed))
    except (binascii.Error, ValueError, InvalidSignature):
        raise CommandError("signature", f"does not verify with key {kid}") from None
    try:
        inner = json.loads(signed)
    except json.JSONDecodeError:
        raise CommandError("signed", "is not JSON") from None
    if not isinstance(inner, dict) or not isinstance(inner.get("command"), dict):
        raise CommandError("signed", "must hold a command object")
    cmd: dict[str, object] = inner["command"]
    extra = sorted(str(k) for k in inner if k not in _BODY_FIELDS)
    if extra:
        raise CommandError(f"signed.{extra[0]}", "unknown field in a signed command")
    role = inner.get("role")
    if role is not None and role not in ROLE_NAMES:
        raise CommandError("signed.role", f"must be one of {', '.join(ROLE_NAMES)} or null, got {_show(role)}")
    approved_by = _text(inner, "approved_by", MAX_MODERATOR, required=False) or None
    at = cmd.get("at")
    try:
        sent = datetime.fromisoformat(str(at)).timestamp() if isinstance(at, str) else None
    except ValueError:
        sent = None
    if sent is None or abs(now - sent) > max_age_s:
        raise CommandError("at", f"a signed command must be sent within {max_age_s:g} s of now, got {_show(at)}")
    return cmd, CommandTrust(True, kid, cast(str | None, role), approved_by)
