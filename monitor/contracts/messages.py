"""Typed models of the wire messages other than the alert (that one is in `monitor/contracts/alerts.py`).

Topics are in `monitor/contracts/topics.py`; the JSON Schemas in schemas/ are generated from these models
(`python -m monitor.contracts.schemas`). What publishes each:

    NodeStatus   {prefix}/{node}/status            monitor/delivery/mqtt.py (and its last will)
    Health       {prefix}/{node}/health            monitor/app/engine.py `_health`, with the publisher's delivery status
    StreamStatus {prefix}/{node}/streams/{id}      monitor/app/engine.py `_publish_state` (the `sampling` block:
                                                   monitor/ops/sampling_report.py `detail`)
    Incident     {prefix}/{node}/incidents/{id}    monitor/incidents/book.py `Incident.to_message`
    Command      {prefix}/{node}/commands          monitor/console/actions.py `build_command`; read by
                                                   monitor/incidents/book.py `apply_command`
    SignedCommand {prefix}/{node}/commands         the web console (monitor/web/actions.py `CommandSigner`,
                                                   monitor/incidents/commands.py `seal_command`); opened by
                                                   `open_signed` (the Command inside, `SignedCommandBody`)

Only the incident and the command carry a `schema_version` (1); status, health and stream state have none. A
terminate's outcome is not a message of its own: it is the `result` of the command's entry in the incident's
`history`. Times: incidents and commands write UTC ISO 8601 strings; status, health and stream state write seconds
since the epoch (numbers).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal, Self, get_args

from pydantic import ConfigDict, Field, JsonValue, model_validator

from monitor.contracts.base import (
    JSON_SCHEMA_DIALECT,
    Integral,
    IsoTime,
    Name,
    Safe,
    Severity,
    StreamStateName,
    WireModel,
)

__all__ = [
    "ACTIONS",
    "COMMAND_SCHEMA_VERSION",
    "FINAL_STATUSES",
    "INCIDENT_SCHEMA_VERSION",
    "ROLE_NAMES",
    "Action",
    "Command",
    "Health",
    "HistoryEntry",
    "Incident",
    "NodeStatus",
    "RoleName",
    "SamplingDetail",
    "SignedCommand",
    "SignedCommandBody",
    "Status",
    "StreamStatus",
]

INCIDENT_SCHEMA_VERSION = 1
COMMAND_SCHEMA_VERSION = 1
_BASE = "https://github.com/livestream-safety-monitor/contracts/schemas/"

Status = Literal["open", "acknowledged", "escalated", "dismissed", "terminated", "closed"]
Action = Literal["acknowledge", "escalate", "dismiss", "terminate"]
ACTIONS: tuple[Action, ...] = ("acknowledge", "escalate", "dismiss", "terminate")
FINAL_STATUSES: frozenset[str] = frozenset({"dismissed", "terminated", "closed"})

Count = Annotated[int, Field(ge=0), Integral]
Distance = Annotated[int, Field(ge=0, le=256), Integral]
Seconds = Annotated[float, Field(description="Seconds since the epoch.")]


def _config(title: str, file_stem: str, description: str, **extra: JsonValue) -> ConfigDict:
    return ConfigDict(title=title, json_schema_extra={
        "$schema": JSON_SCHEMA_DIALECT, "$id": _BASE + file_stem + ".json", "description": description, **extra})


# -------------------------------------------------------------------------------------------------- node


class NodeStatus(WireModel):
    """Retained; the monitor's last will sets it offline."""

    model_config = _config("Node status", "node-status",
                           "Retained on {prefix}/{node}/status: online once connected; offline on a clean shutdown "
                           "and, as the last will, when the connection is lost.")
    schema_file: ClassVar[str] = "node-status.schema.json"

    node: Name
    state: Literal["online", "offline"]
    at: Seconds


class Health(WireModel):
    """Retained with an MQTT 5 message expiry of three health intervals."""

    model_config = _config("Node health", "health",
                           "Retained on {prefix}/{node}/health every delivery.health_interval_s, with an MQTT 5 "
                           "message expiry of three intervals.")
    schema_file: ClassVar[str] = "health.schema.json"

    node: Name
    at: Seconds
    streams: dict[StreamStateName, Count] = Field(description="How many streams are in each state.")
    outbox_depth: Count = Field(description="Messages stored in the outbox and not yet delivered.")
    outbox_oldest_age_s: float | None = Field(description="Age of the oldest undelivered message.")
    outbox_writable: bool
    outbox_error: str | None = Field(description="Why the outbox cannot be written (messages are held in memory).")
    held_in_memory: Count
    outbox_write_errors: Count
    held_total: Count
    dropped: Count = Field(description="Held messages given up at the memory limit.")
    alerts_sent: Count
    samples: Count
    open_incidents: Count
    suppressed: dict[str, Count] = Field(description="Matches that alerted nobody, by why.")
    quarantined: list[str] = Field(description="Bank entries quarantined as noisy, as bank/entry.")
    sampling: dict[str, Count] = Field(description="Sampling totals of all workers: admitted, dropped_budget, "
                                                   "skipped_interval, dropped_full, dropped_stale.")


# -------------------------------------------------------------------------------------------------- stream


class SamplingDetail(WireModel):
    """What the stream's sampling covered (monitor/ops/sampling_report.py `detail`)."""

    model_config = ConfigDict(title="Sampling detail")

    blind_interval_s: float = Field(description="Longest stretch of stream time between two samples.")
    escalated: bool = Field(description="Sampled densely as evasive.")
    evasion_score: float
    signals: dict[str, Count]
    samples_by_reason: dict[str, Count]


class StreamStatus(WireModel):
    """Retained; cleared (empty payload) when the stream is removed."""

    model_config = _config("Stream state", "stream-state",
                           "Retained on {prefix}/{node}/streams/{stream_id} on every state change and when the "
                           "stream is escalated as evasive; an empty retained message when the stream is removed.")
    schema_file: ClassVar[str] = "stream-state.schema.json"

    node: Name
    stream_id: Name
    stream_url: str = Field(description="Without credentials or secret query values.")
    state: StreamStateName
    detail: str
    attempt: Count
    retry_in_s: float | None
    at: Seconds
    sampling: SamplingDetail | None = Field(description="Null before the first figures, and for keyframe-only "
                                                        "sampling.")


# -------------------------------------------------------------------------------------------------- incident


class HistoryEntry(WireModel):
    """A moderator's action, or the monitor's own closure (action "close", moderator null)."""

    model_config = ConfigDict(title="Incident history entry")

    action: Literal["acknowledge", "escalate", "dismiss", "terminate", "close"]
    moderator: str | None
    at: IsoTime
    reason: str
    result: str | None = Field(description="terminate: 'requested', then what the server API answered.")


_INCIDENT_RULES: list[JsonValue] = [
    {"if": {"properties": {"kind": {"const": "classification"}}, "required": ["kind"]},
     "then": {"required": ["label"], "properties": {"label": {"type": "string"}}},
     "else": {"properties": {"best_distance": {"type": "integer"}, "threshold": {"type": "integer"}}}},
]


class Incident(WireModel):
    """The monitor's incident state: the source of truth that every console shows."""

    model_config = _config("Incident", "incident-1",
                           "Retained on {prefix}/{node}/incidents/{incident_id}, re-published on every change. "
                           "A classification incident adds kind, label, best_score, score_threshold and model_id; "
                           "its best_distance and threshold are null.", allOf=_INCIDENT_RULES)
    schema_file: ClassVar[str] = "incident.schema.json"

    schema_version: Literal[1]
    type: Literal["incident"]
    incident_id: str = Field(min_length=1)
    node: Name
    stream_id: Name
    stream_url: str
    bank: str = Field(description="The bank; for classifications the analysis.")
    entry_id: str = Field(description="The bank entry; for classifications the label.")
    entry_label: str | None
    severity: Severity
    status: Status
    first_seen: IsoTime
    last_seen: IsoTime
    first_media_time_s: float
    last_media_time_s: float
    samples: Count
    best_distance: Distance | None
    threshold: Distance | None
    alert_ids: list[str]
    history: list[HistoryEntry]
    updated_at: IsoTime
    kind: Literal["match", "classification"] = "match"
    label: str | None = None
    best_score: Annotated[float, Field(ge=0, le=1)] | None = None
    score_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    model_id: str | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        if self.kind == "classification" and self.label is None:
            raise ValueError("a classification incident needs its label")
        if self.kind == "match" and (self.best_distance is None or self.threshold is None):
            raise ValueError("a match incident needs an integer best_distance and threshold")
        return self

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


# -------------------------------------------------------------------------------------------------- command

# The limits monitor/incidents/book.py `apply_command` applies (tests/unit/test_contracts.py checks they agree).
_ID = Annotated[str, Field(min_length=1, max_length=100, pattern=r"\S"), Safe]


class Command(WireModel):
    """A moderator's action on an incident, console -> monitor."""

    model_config = _config("Command", "command-1",
                           "Published by a console, QoS 1, not retained, on {prefix}/{node}/commands. The monitor "
                           "answers by re-publishing the incident. Text fields hold no control, separator or "
                           "bidirectional characters.")
    schema_file: ClassVar[str] = "command.schema.json"

    schema_version: Literal[1]
    type: Literal["command"]
    command_id: _ID = Field(description="A UUID from the console; a redelivered command_id is applied once.")
    action: Action
    incident_id: _ID
    stream_id: _ID | None = Field(None, description="When given, the incident must be on this stream.")
    moderator: _ID
    reason: Annotated[str, Field(max_length=1000), Safe] | None = Field(
        None, description="Required by the console for dismiss (a false positive: why).")
    at: Annotated[str, Field(min_length=1, max_length=64, pattern=r"\S"), Safe] | None = Field(
        None, description="UTC ISO 8601 on the console's clock; informative only (the monitor records its own).")


SIGNED_FORMAT = "lsmc-command-1"  # monitor/incidents/commands.py SIGNED_FORMAT (tests/unit/test_contracts.py)
MAX_SIGNED = 8192
_COMMAND_ID = _BASE + "command-1.json"
# A console user's role, each allowed what the one before is (monitor/web/users.py takes them from here).
RoleName = Literal["viewer", "moderator", "lead", "admin"]
ROLE_NAMES: Final[tuple[RoleName, ...]] = get_args(RoleName)


class SignedCommandBody(WireModel):
    """What a signed command's `signed` text holds, as JSON: the command and whose word it is."""

    command: Command
    role: RoleName | None = Field(
        description="The signing user's role in the console.")
    approved_by: _ID | None = Field(
        description="A second user who approved this command (the two-person rule for permanent bans).")


class SignedCommand(WireModel):
    """A command sealed by a console with its own Ed25519 key, console -> monitor."""

    model_config = _config(
        "Signed command", "signed-command-1",
        "Published by a console that signs (the web console), QoS 1, not retained, on {prefix}/{node}/commands, in "
        "place of a plain Command. `signature` is Ed25519 over the bytes 'lsmc-command-1' + LF + the UTF-8 of "
        "`signed` exactly as sent; `signed` is the JSON text of {command, role, approved_by}. A monitor that lists "
        "the key records the command's moderator as verified; it refuses a stale `at` (the command's), an unknown "
        "key, a bad signature and, under a permanent ban policy, a terminate that neither a lead signed nor a "
        "second user approved.")
    schema_file: ClassVar[str] = "signed-command.schema.json"

    type: Literal["signed_command"]
    format: Literal["lsmc-command-1"]
    key_id: _ID = Field(description="The id of the console's public key (monitor/evidence/signing.py key_id).")
    signature: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9+/]+={0,2}$")] = Field(
        description="Base64 of the 64-byte Ed25519 signature.")
    signed: Annotated[str, Field(min_length=2, max_length=MAX_SIGNED)] = Field(
        description="The JSON text of a SignedCommandBody; the command in it must carry `at`.",
        json_schema_extra={"contentMediaType": "application/json", "contentSchema": {
            "type": "object", "required": ["command", "role", "approved_by"], "additionalProperties": False,
            "properties": {"command": {"$ref": _COMMAND_ID},
                           "role": {"anyOf": [{"enum": list(ROLE_NAMES)}, {"type": "null"}]},
                           "approved_by": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 100},
                                                     {"type": "null"}]}}}})
