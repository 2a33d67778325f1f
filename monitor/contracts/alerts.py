"""The alert JSON (see schemas/alert.schema.json).

Schema version 2 (was 1): every alert says its `kind`, "match" (a bank entry; every field of version 1, with the
same meaning) or "classification" (a classifier's label: `label`, `score`, `score_threshold`, `model_id`,
`severity`; `bank` is the analysis, `entry_id` the label, `signal_type` "classifier", `distance` and `threshold`
null, `sample_hash` the sample's PDQ hash). Match alerts carry the new keys as null.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from pipelines.base import Finding

SCHEMA_VERSION = 2


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_schema() -> dict[str, Any]:
    text = resources.files("monitor.contracts").joinpath("schemas/alert.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def build_alert(finding: Finding, *, node: str, stream_url: str, observed_at: float,
                alert_id: str | None = None, incident_id: str | None = None) -> dict[str, Any]:
    """The alert for one finding. `alert_id` is made once and travels with every retry (outbox included)."""
    classified = finding.kind == "classification"
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "alert",
        "alert_id": alert_id or str(uuid.uuid4()),
        "incident_id": incident_id,
        "node": node,
        "stream_id": finding.stream_id,
        "stream_url": stream_url,
        "media_time_s": round(finding.media_time_s, 3),
        "observed_at": utc_iso(observed_at),
        "received_at": utc_iso(finding.received_at),
        "pipeline": finding.pipeline,
        "bank": finding.bank,
        "entry_id": finding.entry_id,
        "entry_label": finding.entry_label,
        "entry_tags": list(finding.entry_tags),
        "entry_frame_s": finding.entry_frame_s,
        "variant": finding.variant,
        "signal_type": finding.signal_type,
        "distance": None if classified else finding.distance,
        "threshold": None if classified else finding.threshold,
        "quality": finding.quality,
        "sample_hash": finding.sample_hash,
        "kind": finding.kind,
        "label": finding.label,
        "score": finding.score,
        "score_threshold": finding.score_threshold,
        "model_id": finding.model_id,
        "severity": finding.severity,
    }
