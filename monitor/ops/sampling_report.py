"""What the sampling of each stream covered, for operators: metrics, escalations, the stream state's detail.

The workers report cumulative per-stream figures (monitor/ingest/scheduler.py `stats()`); this turns them into
Prometheus series and finds streams newly escalated as evasive (monitor/ingest/coverage.py), which the engine records
in the evidence log, logs, and shows in the stream's retained state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class SamplingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.blind = Gauge("monitor_stream_blind_interval_seconds",
                           "Longest stretch of stream time between two samples since the stream was added",
                           ["stream"], registry=r)
        self.blind_now = Gauge("monitor_stream_blind_seconds", "Stream time since the stream's last sample",
                               ["stream"], registry=r)
        self.escalated = Gauge("monitor_stream_escalated", "1 while the stream is sampled densely as evasive",
                               ["stream"], registry=r)
        self.decoded = Counter("monitor_decoded_frames", "Frames decoded: keyframes taken, packets decoded "
                               "forward between keyframes", ["stream", "kind"], registry=r)
        self.taken = Counter("monitor_samples_taken", "Samples by why they were taken (key, interval, change, "
                             "jump, audit, wall, escalated)", ["stream", "reason"], registry=r)
        self.signals = Counter("monitor_evasion_signals", "Evasion signals seen in a stream's packets or samples",
                               ["stream", "signal"], registry=r)
        self.escalations = Counter("monitor_stream_escalations", "Times a stream was escalated as evasive",
                                   ["stream"], registry=r)


@dataclass(frozen=True, slots=True)
class Escalation:
    stream_id: str
    signals: dict[str, int]
    score: float
    blind_interval_s: float


class SamplingReport:
    def __init__(self, metrics: SamplingMetrics) -> None:
        self.metrics = metrics
        self._counted: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self._escalations: dict[str, int] = {}
        self.latest: dict[str, dict[str, Any]] = {}  # stream -> its latest figures

    def update(self, workers: list[dict[str, Any]]) -> list[Escalation]:
        """Bring the series up to the workers' figures; returns the streams escalated since the last call."""
        m = self.metrics
        new: list[Escalation] = []
        for worker in workers:
            for sid, st in worker["scheduler"]["streams"].items():
                self.latest[sid] = st
                if "blind_interval_s" not in st:
                    continue  # keyframes only
                m.blind.labels(sid).set(st["blind_interval_s"])
                m.blind_now.labels(sid).set(st["blind_now_s"])
                m.escalated.labels(sid).set(1 if st["escalated"] else 0)
                by_reason: dict[str, int] = st["samples_by_reason"]
                self._up(m.decoded, (sid, "key"), by_reason.get("key", 0))
                self._up(m.decoded, (sid, "forward"), st["forward_packets"])
                for reason, n in by_reason.items():
                    self._up(m.taken, (sid, reason), n)
                for signal, n in st["signals"].items():
                    self._up(m.signals, (sid, signal), n)
                self._up(m.escalations, (sid,), st["escalations"])
                if st["escalations"] > self._escalations.get(sid, 0):
                    new.append(Escalation(sid, dict(st["signals"]), st["evasion_score"], st["blind_interval_s"]))
                self._escalations[sid] = st["escalations"]
        return new

    def detail(self, stream_id: str) -> dict[str, Any] | None:
        """The stream's sampling as shown in its state message (None before the first figures)."""
        st = self.latest.get(stream_id)
        if st is None or "blind_interval_s" not in st:
            return None
        return {"blind_interval_s": st["blind_interval_s"], "escalated": st["escalated"],
                "evasion_score": st["evasion_score"], "signals": st["signals"],
                "samples_by_reason": st["samples_by_reason"]}

    def forget(self, stream_id: str) -> None:
        m = self.metrics
        self.latest.pop(stream_id, None)
        self._escalations.pop(stream_id, None)
        for counter, labels in [k for k in self._counted if k[1][0] == stream_id]:
            self._counted.pop((counter, labels))
            with contextlib.suppress(KeyError):
                counter.remove(*labels)
        for gauge in (m.blind, m.blind_now, m.escalated):
            with contextlib.suppress(KeyError):
                gauge.remove(stream_id)

    def _up(self, counter: Counter, labels: tuple[str, ...], total: float) -> None:
        key = (counter, labels)
        seen = self._counted.get(key, 0.0)
        if total > seen:
            counter.labels(*labels).inc(total - seen)
        self._counted[key] = max(seen, total)
