"""From findings to alert messages: the cooldown gate and the alert JSON (see schemas/alert.schema.json)."""

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


def build_alert(finding: Finding, *, node: str, stream_url: str, observed_at: float) -> dict[str, Any]:
    """The alert for one finding. `alert_id` is made once here and travels with every retry."""
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "alert",
        "alert_id": str(uuid.uuid4()),
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
        "signal_type": finding.signal_type,
        "distance": finding.distance,
        "threshold": finding.threshold,
        "quality": finding.quality,
        "sample_hash": finding.sample_hash,
    }


class CooldownGate:
    """One alert per (stream, bank, entry) per cooldown of media time; repeats of a shown image are not news.

    Media time, not wall time, so a fast-read file and a live stream behave alike. A stream whose clock
    jumps back (publisher restarted) alerts again.
    """

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self._last: dict[tuple[str, str, str], float] = {}
        self.suppressed = 0

    def admit(self, f: Finding) -> bool:
        key = (f.stream_id, f.bank, f.entry_id)
        last = self._last.get(key)
        if last is not None and 0 <= f.media_time_s - last < self.cooldown_s:
            self.suppressed += 1
            return False
        self._last[key] = f.media_time_s
        return True

    def forget_stream(self, stream_id: str) -> None:
        self._last = {k: v for k, v in self._last.items() if k[0] != stream_id}
