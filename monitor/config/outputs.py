"""What becomes of findings: `incidents:` (matches become incidents), `delivery:` (alerts through the outbox),
`evidence:` (the signed log) and `terminate:` (stopping and banning a publisher)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from monitor.config.base import Severity, Strict


class IncidentsConfig(Strict):
    """Matches of one entry on one stream become one incident (see monitor/incidents/book.py)."""

    strong_distance: int = Field(31, ge=0, le=256)  # at or below: alert on the first sample
    confirm_k: int = Field(2, ge=1)  # weaker matches alert after k of the last n samples ...
    confirm_n: int = Field(3, ge=1)
    confirm_window_s: float = Field(30.0, ge=0)  # ... within this much stream time
    update_interval_s: float = Field(30.0, ge=0)
    close_after_s: float = Field(120.0, ge=0)  # quiet this long (wall time): closed
    quarantine_streams: int = Field(5, ge=1)  # an entry matching this many streams ...
    quarantine_window_s: float = Field(300.0, ge=0)  # ... within this window is quarantined as noisy
    quarantine_s: float = Field(3600.0, ge=0)


class DeliveryConfig(Strict):
    outbox_max_mb: int = Field(512, ge=1)  # a long broker outage fills this, not the disk the evidence is on
    health_interval_s: float = Field(10.0, gt=0)


class EvidenceConfig(Strict):
    enabled: bool = True
    store_images: bool = False  # frames are never written to disk unless this is on
    # Ed25519 key (`monitor evidence keygen`) that signs the log's heads; outside state_dir, mode 0600.
    # Unset: heads are not signed, and a rewritten chain cannot be told from the real one.
    signing_key_file: Path | None = None
    head_interval_s: float = Field(60.0, ge=1, le=86400)  # how often a signed head is appended and published


class TerminateConfig(Strict):
    auto_severities: list[Severity] = Field(default_factory=list)  # terminate without a moderator for these
    ban: bool = True  # ban the stream name and its `key` arguments so the publisher's automatic reconnect is refused
    ban_addr: bool = False  # also ban the publisher's address (shared addresses: NAT, a CDN edge, a relay)
    ban_hours: float | None = None  # None: until removed
