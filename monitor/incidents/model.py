"""What the incident book deals in: incidents (immutable snapshots, with their wire message), their history,
the events the book returns for the engine to publish, and the outcome of a console command.

The wire messages follow monitor/contracts/messages.py; the book that makes these is monitor/incidents/book.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

from monitor.contracts.alerts import utc_iso
from pipelines.base import Finding

SCHEMA_VERSION: Final = 1

Severity = Literal["low", "medium", "high"]
Status = Literal["open", "acknowledged", "escalated", "dismissed", "terminated", "closed"]
Action = Literal["acknowledge", "escalate", "dismiss", "terminate"]

SEVERITIES: Final[frozenset[str]] = frozenset({"low", "medium", "high"})
OPEN_STATUSES: Final[frozenset[str]] = frozenset({"open", "acknowledged", "escalated"})
ACTION_STATUS: Final[Mapping[str, Status]] = {
    "acknowledge": "acknowledged", "escalate": "escalated", "dismiss": "dismissed", "terminate": "terminated",
}

Key = tuple[str, str, str]  # (stream_id, bank, entry_id)
EntryKey = tuple[str, str]  # (bank, entry_id)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    action: str  # a command action, or "close" for the monitor's own closures
    moderator: str | None  # None: the monitor itself
    at: float
    reason: str
    result: str | None = None  # terminate: "requested", then what the server API answered
    command_id: str | None = None  # internal: record_result finds the entry by it; not published

    def to_message(self) -> dict[str, object]:
        return {"action": self.action, "moderator": self.moderator, "at": utc_iso(self.at),
                "reason": self.reason, "result": self.result}


@dataclass(frozen=True, slots=True)
class Incident:
    """An immutable snapshot; events carry the state as it was when they were made."""

    incident_id: str
    stream_id: str
    bank: str
    entry_id: str
    entry_label: str | None
    severity: Severity
    status: Status
    first_seen: float
    last_seen: float
    first_media_time_s: float
    last_media_time_s: float
    samples: int
    best_distance: int
    threshold: int
    alert_ids: tuple[str, ...]
    history: tuple[HistoryEntry, ...]
    updated_at: float
    kind: str = "match"  # or "classification": bank is the analysis, entry_id the label
    best_score: float | None = None  # classifications: the highest score so far ...
    score_threshold: float | None = None
    model_id: str | None = None
    sample_hash: str | None = None  # ... and the PDQ hash of that sample

    @property
    def key(self) -> Key:
        return (self.stream_id, self.bank, self.entry_id)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def to_message(self, node: str, stream_url: str) -> dict[str, object]:
        msg = self._match_message(node, stream_url)
        if self.kind == "classification":  # match incidents keep exactly their fields
            msg.update(best_distance=None, threshold=None, kind=self.kind, label=self.entry_id,
                       best_score=self.best_score, score_threshold=self.score_threshold, model_id=self.model_id)
        return msg

    def _match_message(self, node: str, stream_url: str) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "type": "incident",
            "incident_id": self.incident_id,
            "node": node,
            "stream_id": self.stream_id,
            "stream_url": stream_url,
            "bank": self.bank,
            "entry_id": self.entry_id,
            "entry_label": self.entry_label,
            "severity": self.severity,
            "status": self.status,
            "first_seen": utc_iso(self.first_seen),
            "last_seen": utc_iso(self.last_seen),
            "first_media_time_s": round(self.first_media_time_s, 3),
            "last_media_time_s": round(self.last_media_time_s, 3),
            "samples": self.samples,
            "best_distance": self.best_distance,
            "threshold": self.threshold,
            "alert_ids": list(self.alert_ids),
            "history": [h.to_message() for h in self.history],
            "updated_at": utc_iso(self.updated_at),
        }


# -- events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewIncident:
    """Send one alert for `finding`, with `alert_id` and the incident id, then publish the incident."""

    incident: Incident
    finding: Finding
    alert_id: str  # already listed in incident.alert_ids: use it as the alert's alert_id
    kind: ClassVar[str] = "new_incident"


@dataclass(frozen=True, slots=True)
class IncidentUpdate:
    """Publish the incident message (retained); no alert."""

    incident: Incident
    reason: str  # "better match", "activity", "quiet", "stream ended", "terminate result"
    kind: ClassVar[str] = "incident_update"


@dataclass(frozen=True, slots=True)
class Quarantined:
    """Reported once per quarantine; alerts for this entry are suppressed on every stream until `until`."""

    bank: str
    entry_id: str
    streams: tuple[str, ...]
    until: float
    kind: ClassVar[str] = "quarantined"


@dataclass(frozen=True, slots=True)
class QuarantineLifted:
    bank: str
    entry_id: str
    kind: ClassVar[str] = "quarantine_lifted"


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A match that alerted nobody; count it, do not publish it."""

    finding: Finding
    why: str  # "unconfirmed", "quarantined", "dismissed", "terminated"
    kind: ClassVar[str] = "suppressed"


Event = NewIncident | IncidentUpdate | Quarantined | QuarantineLifted | Suppressed


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """Publish `incident` when `changed`; a duplicate (redelivered command_id) changes nothing."""

    incident: Incident
    changed: bool
    duplicate: bool
    proposed_negative_entry: EntryKey | None  # dismiss: (bank, entry_id) proposed for a negative bank
    message: str

