"""What the engine tells the world over MQTT: alerts, incident states, stream states and signed evidence heads.

Alerts and incident states are durable (stored in the outbox before they are published, monitor/delivery/
outbox.py) and recorded as evidence; stream states and heads are retained messages. The topics are those of
monitor/contracts/topics.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monitor.app import records
from monitor.config.models import MonitorConfig
from monitor.contracts import topics
from monitor.contracts.alerts import build_alert
from monitor.delivery.mqtt import MqttPublisher
from monitor.evidence.records import EvidenceRecord
from monitor.incidents import Incident
from monitor.runtime.messages import StateChange
from monitor.servers.hooks import Origin
from pipelines.base import Finding

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0  # on SIGTERM, how long waiting alerts may take to reach the broker

Record = Callable[[str, str, Mapping[str, object], str | None], None]  # kind, stream id, body, incident id


class Announcer:
    """Publishes the engine's messages; `stream_url` gives a stream's redacted URL, `record` writes evidence."""

    def __init__(self, cfg: MonitorConfig, publisher: MqttPublisher, record: Record,
                 stream_url: Callable[[str], str]) -> None:
        self.node = cfg.node
        self.prefix = cfg.broker.topic_prefix
        self.publisher = publisher
        self.record = record
        self.stream_url = stream_url

    def alert(self, f: Finding, observed_at: float, alert_id: str, incident_id: str) -> dict[str, Any]:
        """Log, store, publish and record the alert for a new incident's finding; returns the alert."""
        alert = build_alert(f, node=self.node, stream_url=self.stream_url(f.stream_id), observed_at=observed_at,
                            alert_id=alert_id, incident_id=incident_id)
        if f.kind == "classification":
            log.warning("ALERT stream=%s t=%.2fs classifier=%s label=%s score=%.3f/%.3f model=%s incident=%s",
                        f.stream_id, f.media_time_s, f.bank, f.label, f.score or 0.0, f.score_threshold or 0.0,
                        f.model_id, incident_id, extra={"stream_id": f.stream_id, "incident_id": incident_id})
        else:
            log.warning("ALERT stream=%s t=%.2fs bank=%s entry=%s distance=%d/%d quality=%d incident=%s",
                        f.stream_id, f.media_time_s, f.bank, f.entry_id, f.distance, f.threshold, f.quality,
                        incident_id, extra={"stream_id": f.stream_id, "incident_id": incident_id})
        topic = topics.alerts(self.prefix, self.node, f.stream_id)
        self.publisher.send_durable(alert_id, topic, alert,
                                    user_properties=(("stream_id", f.stream_id), ("bank", f.bank)))
        self.record("alert", f.stream_id, records.alert(alert_id, topic, alert), incident_id)
        return alert

    def incident(self, inc: Incident, reason: str, origin: Origin | None) -> None:
        """The incident's state, retained: a console that starts later sees every open incident."""
        body = inc.to_message(self.node, self.stream_url(inc.stream_id))
        topic = topics.incident(self.prefix, self.node, inc.incident_id)
        # The outbox keeps the order.
        self.publisher.send_durable(str(uuid.uuid4()), topic, body, retain=True,
                                    user_properties=(("stream_id", inc.stream_id), ("bank", inc.bank)))
        self.record("incident", inc.stream_id, records.incident(body, reason, origin), inc.incident_id)

    def stream_state(self, change: StateChange, sampling: dict[str, Any] | None) -> str:
        """The stream's retained state message, with what its sampling covered; returns its topic."""
        body = {
            "node": self.node,
            "stream_id": change.stream_id,
            "stream_url": self.stream_url(change.stream_id),
            "state": change.state.value,
            "detail": change.detail,
            "attempt": change.attempt,
            "retry_in_s": change.retry_in_s,
            "at": change.at,
            "sampling": sampling,
        }
        topic = topics.stream_state(self.prefix, self.node, change.stream_id)
        self.publisher.send_json(topic, body, retain=True, user_properties=(("stream_id", change.stream_id),))
        return topic

    def evidence_head(self, rec: EvidenceRecord) -> None:
        """A signed head of the evidence log, retained (anchors for `monitor evidence verify`)."""
        topic = f"{self.prefix}/{self.node}/evidence/head"
        self.publisher.send_json(topic, {"node": self.node, "record_seq": rec.seq, "record_hash": rec.hash,
                                         **rec.data()}, retain=True)


async def flush_on_shutdown(publisher: MqttPublisher, outbox_path: Path) -> None:
    """Deliver what waits before the connection closes; say plainly what, if anything, is left."""
    pub = publisher
    waiting = pub.durable_pending
    if waiting:
        log.info("shutting down: delivering %d alerts and incident updates that wait", waiting)
    if await pub.flush(SHUTDOWN_FLUSH_S):
        log.info("shutdown: outbox flushed, every alert and incident update was delivered")
        return
    stored = pub.durable_pending - pub.held
    log.error("shutdown: %d alerts and incident updates not delivered within %.0f s (broker %s): %d stay in "
              "the outbox %s and are sent after a restart, %d held in memory only (the outbox could not store "
              "them) are lost", pub.durable_pending, SHUTDOWN_FLUSH_S,
              "connected" if pub.connected.is_set() else "unreachable", stored, outbox_path, pub.held)
