"""The alert JSON (see schemas/alert.schema.json)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from pipelines.base import Finding

SCHEMA_VERSION = 1


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_schema() -> dict[str, Any]:
    text = resources.files("monitor").joinpath("schemas/alert.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def build_alert(finding: Finding, *, node: str, stream_url: str, observed_at: float,
                alert_id: str | None = None, incident_id: str | None = None) -> dict[str, Any]:
    """The alert for one finding. `alert_id` is made once and travels with every retry (outbox included)."""
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
        "distance": finding.distance,
        "threshold": finding.threshold,
        "quality": finding.quality,
        "sample_hash": finding.sample_hash,
    }
