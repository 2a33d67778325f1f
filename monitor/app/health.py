"""The node's health: the retained health message, the Prometheus gauges, and counters kept as deltas.

The workers report cumulative sampling figures (monitor/runtime/messages.py `WorkerStats`), the publisher keeps
running totals of its own; Prometheus counters only grow, so `MetricDeltas` brings each counter up to its total.
`health_input` is what /healthz judges (monitor/ops/metrics.py `HealthRules`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter

from monitor.delivery.mqtt import MqttPublisher
from monitor.ops.metrics import HealthInput, Metrics
from monitor.runtime.messages import TERMINAL, SampleReport, SampleTiming, StateChange, StreamState, WorkerStats
from monitor.runtime.protocol import Supervisor
from pipelines.base import Finding


def stream_counts(states: Mapping[str, StateChange]) -> dict[str, int]:
    """How many streams are in each state (only the states that occur)."""
    counts: dict[str, int] = {}
    for c in states.values():
        counts[c.state.value] = counts.get(c.state.value, 0) + 1
    return counts


def sampling_summary(workers: Sequence[WorkerStats]) -> dict[str, float]:
    """The sampling counters of every worker, summed."""
    out: dict[str, float] = {}
    for worker in workers:
        sch, q = worker["scheduler"], worker["queue"]
        for key in ("admitted", "dropped_budget", "skipped_interval"):
            out[key] = out.get(key, 0) + sch[key]
        for key in ("dropped_full", "dropped_stale"):
            out[key] = out.get(key, 0) + q[key]
    return out


def health_message(node: str, states: Mapping[str, StateChange], publisher: MqttPublisher, *, alerts_sent: int,
                   samples: int, open_incidents: int, suppressed: Mapping[str, int], quarantined: list[str],
                   workers: Sequence[WorkerStats]) -> dict[str, Any]:
    """The node's retained health message (monitor/contracts/topics.py node_health)."""
    # outbox_depth, outbox_oldest_age_s, outbox_writable, outbox_error, held_in_memory, ...
    return {"node": node, "at": time.time(), "streams": stream_counts(states), **publisher.delivery_status(),
            "alerts_sent": alerts_sent, "samples": samples, "open_incidents": open_incidents,
            "suppressed": dict(suppressed), "quarantined": quarantined, "sampling": sampling_summary(workers)}


def health_input(states: Mapping[str, StateChange], last_sample: Mapping[str, float], supervisor: Supervisor,
                 publisher: MqttPublisher) -> HealthInput:
    """Live streams with their last sample's time, streams whose reader died unexpectedly, and delivery."""
    watched = set(supervisor.stream_ids())
    live = {sid: last_sample.get(sid) for sid, c in states.items() if c.state == StreamState.LIVE and sid in watched}
    dead = [sid for sid in supervisor.dead_streams()
            if (c := states.get(sid)) is not None and c.state not in TERMINAL]
    return HealthInput(live, dead, publisher.connected.is_set(), publisher.oldest_pending_age_s(),
                       outbox_error=publisher.outbox_error, held_in_memory=publisher.held)


def observe_sample(metrics: Metrics, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
    """One analysed sample's counts and timings (Prometheus metrics are thread-safe: called off the loop)."""
    metrics.samples.labels(sample.stream_id).inc()
    metrics.sample_lag.observe(timing.done_at - sample.received_at)
    metrics.stage.labels("decode").observe(timing.decode_s)
    for name, seconds in timing.stages:
        metrics.stage.labels(name).observe(seconds)
    for f in findings:
        metrics.matches.labels(f.bank).inc()


def forget_stream_metrics(metrics: Metrics, stream_id: str) -> None:
    """A removed stream's labelled series go (hooks add streams forever)."""
    for labels in ((stream_id,), *((stream_id, s) for s in ("reconnecting", "stalled"))):
        for metric in (metrics.samples, metrics.reconnects):
            with contextlib.suppress(KeyError, ValueError):
                metric.remove(*labels)


class MetricDeltas:
    """Brings Prometheus counters up to running totals kept elsewhere."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._counted: dict[int, float] = {}
        self._dropped_seen: dict[tuple[str, str], float] = {}

    def count_up(self, counter: Counter, total: float) -> None:
        """Bring a Prometheus counter up to a running total kept elsewhere."""
        seen = self._counted.get(id(counter), 0.0)
        if total > seen:
            counter.inc(total - seen)
        self._counted[id(counter)] = total

    def dropped(self, workers: Sequence[WorkerStats]) -> None:
        """Drop counters from the workers' cumulative figures, as increments (Prometheus counters only grow); the
        classifiers' series from their figures (monitor/ops/classifier_metrics.py)."""
        self.metrics.classifiers.update(workers)
        seen: dict[tuple[str, str], float] = {}
        for worker in workers:
            for sid, st in worker["scheduler"]["streams"].items():
                seen[(sid, "budget")] = st["dropped_budget"]
                seen[(sid, "decode_budget")] = st["forward_refused"]
            q = worker["queue"]
            for reason, key in (("queue_full", "dropped_full"), ("stale", "dropped_stale")):
                seen[("*", reason)] = seen.get(("*", reason), 0) + q[key]
        for (sid, reason), total in seen.items():
            delta = total - self._dropped_seen.get((sid, reason), 0)
            if delta > 0:
                self.metrics.dropped.labels(sid, reason).inc(delta)
            self._dropped_seen[(sid, reason)] = total

    def refresh(self, states: Mapping[str, StateChange], publisher: MqttPublisher, quarantined_entries: int,
                streams_quarantined: int) -> None:
        """The gauges and the publisher's and supervisor's totals, for a scrape."""
        m = self.metrics
        counts = dict.fromkeys((s.value for s in StreamState), 0)
        for c in states.values():
            counts[c.state.value] += 1
        for state, n in counts.items():
            m.streams.labels(state).set(n)
        pub = publisher
        m.outbox_depth.set(pub.durable_pending - pub.held)
        m.outbox_age.set(pub.oldest_pending_age_s() or 0.0)
        m.outbox_writable.set(1 if pub.outbox_error is None else 0)
        m.outbox_held.set(pub.held)
        for counter, total in ((m.outbox_write_errors, pub.outbox_errors), (m.outbox_held_total, pub.held_total),
                               (m.outbox_dropped, pub.dropped)):
            self.count_up(counter, total)
        m.mqtt_connected.set(1 if pub.connected.is_set() else 0)
        m.quarantined.set(quarantined_entries)
        self.count_up(m.streams_quarantined, streams_quarantined)
