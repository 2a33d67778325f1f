"""The evidence record format: kinds, canonical JSON, the chain hash, records and heads.

Every match, alert, incident change, moderator action and stream termination is appended as one
record (monitor/evidence/store.py). Each record's hash covers its content and the previous record's
hash, so editing, removing, inserting or reordering any record breaks the chain at that point;
`verify` (monitor/evidence/verify.py) names it.

Hash of a record (reimplementable in a few lines by whoever receives the file)::

    sha256(utf8(json.dumps([seq, recorded_at, kind, stream_id, incident_id, body, prev_hash],
                           ensure_ascii=False, separators=(",", ":")))).hexdigest()

where `body` is the stored canonical JSON text (a string inside the array), `incident_id` is
null when absent, and the first record's `prev_hash` is 64 zeros.

A `head` row, rewritten in the same transaction as each append, seals the record count and the
last hash (`EvidenceHead`), so removing records at the end is detected too.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FOLDED_TEXT",
    "GENESIS_HASH",
    "HEX64",
    "IMAGE_KEY",
    "KINDS",
    "UTC_ISO",
    "EvidenceHead",
    "EvidenceRecord",
    "canonical_json",
    "parse_utc",
    "record_hash",
    "utc_iso",
]

KINDS = frozenset({"match", "alert", "incident", "action", "termination", "note", "head"})
GENESIS_HASH = "0" * 64
IMAGE_KEY = "image_png_b64"
# The note an incident opens with when it folds in matches recorded before it (unconfirmed, so without its id):
# {"text": FOLDED_TEXT, "matches": [{"seq", "record_hash", "media_time_s"}, ...], ...} under the incident's id;
# an export of the incident holds the records it names (monitor/evidence/export.py).
FOLDED_TEXT = "earlier matches folded into the incident"

HEX64 = re.compile(r"^[0-9a-f]{64}$")
UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def canonical_json(obj: object) -> str:
    """The one JSON text of obj that is hashed: sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(
    seq: int,
    recorded_at: str,
    kind: str,
    stream_id: str,
    incident_id: str | None,
    body: str,
    prev_hash: str,
) -> str:
    """The chain hash of one record (the module docstring gives the exact encoding)."""
    material = json.dumps(
        [seq, recorded_at, kind, stream_id, incident_id, body, prev_hash],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EvidenceRecord:
    """One record as stored; `body` is the canonical JSON text the hash covers."""

    seq: int
    recorded_at: str  # UTC, ISO 8601 with microseconds, e.g. 2024-05-01T12:00:00.000000Z
    kind: str
    stream_id: str
    incident_id: str | None
    body: str
    prev_hash: str
    hash: str

    def data(self) -> Any:
        """The body parsed back into Python objects."""
        return json.loads(self.body)

    def compute_hash(self) -> str:
        return record_hash(
            self.seq, self.recorded_at, self.kind, self.stream_id, self.incident_id, self.body, self.prev_hash
        )


@dataclass(frozen=True)
class EvidenceHead:
    """The seal: how many records there are and the last hash. Publish it to anchor the log."""

    count: int
    last_seq: int
    last_hash: str


def utc_iso(dt: datetime) -> str:
    """dt as UTC ISO 8601 with microseconds and a Z, the form of `recorded_at` and `signed_at`."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: object) -> datetime | None:
    """The time of a `utc_iso` text; None for anything else."""
    if not isinstance(text, str) or not UTC_ISO.match(text):
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
