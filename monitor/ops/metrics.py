"""Prometheus metrics and a health check, served over HTTP (aiohttp) on the metrics port.

Stream labels are stream ids only: URLs (which may carry credentials or keys) never become label values.
`/healthz` fails when the monitor is not sampling what it should: a live stream whose samples stopped, a
stream worker that died, alerts piling up undelivered, or an outbox that cannot be written (disk full).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from monitor.ops.classifier_metrics import ClassifierMetrics
from monitor.ops.sampling_report import SamplingMetrics

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ClusterMetrics:
    """Per stream actor on a Ray cluster (monitor/cluster/supervisor.py feeds them from every poll answer); empty
    with local workers. Series of an actor that is gone are removed; losses are counted per node, since a lost
    actor's name never comes back."""

    def __init__(self, r: CollectorRegistry) -> None:
        a = ["node", "actor"]
        self.streams = Gauge("monitor_cluster_actor_streams", "Streams running in the stream actor", a, registry=r)
        self.samples = Counter("monitor_cluster_actor_samples", "Samples the stream actor analysed (rate: "
                               "samples/s)", a, registry=r)
        self.cpu = Counter("monitor_cluster_actor_cpu_seconds", "CPU seconds of the stream actor's process (rate: "
                           "cores busy)", a, registry=r)
        self.lag = Gauge("monitor_cluster_actor_lag_seconds", "Keyframe to analysed, or the oldest buffered "
                         "event's age, whichever is longer, at the last poll", a, registry=r)
        self.buffered = Gauge("monitor_cluster_actor_buffered_events", "Events waiting in the actor for the engine",
                              a, registry=r)
        self.dropped = Counter("monitor_cluster_actor_dropped_events", "Events the actor dropped: its buffer "
                               "stayed full", a, registry=r)
        self.polls = Counter("monitor_cluster_actor_polls", "Poll answers from the actor", a, registry=r)
        self.actors = Gauge("monitor_cluster_actors", "Stream actors by state (starting, live, draining)",
                            ["node", "state"], registry=r)
        self.lost = Counter("monitor_cluster_actors_lost", "Stream actors given up and replaced (reason: "
                            "poll_failed, silent, node_left, start_failed)", ["node", "reason"], registry=r)
        self.moved = Counter("monitor_cluster_streams_moved", "Streams started on another actor (reason: lost, "
                             "rebalanced)", ["reason"], registry=r)
        self.waiting = Gauge("monitor_cluster_streams_waiting", "Streams no actor runs now (waiting for one)",
                             registry=r)
        self.reattached = Counter("monitor_cluster_actors_reattached", "Stream actors of an earlier run taken over "
                                  "at start (cluster.detach_actors)", registry=r)

    def forget_actor(self, node: str, actor: str) -> None:
        for m in (self.streams, self.samples, self.cpu, self.lag, self.buffered, self.dropped, self.polls):
            with contextlib.suppress(KeyError):
                m.remove(node, actor)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.streams = Gauge("monitor_streams", "Streams by state", ["state"], registry=r)
        self.samples = Counter("monitor_samples", "Samples analysed", ["stream"], registry=r)
        self.keyframes = Counter("monitor_keyframes", "Keyframes decoded", ["stream"], registry=r)
        self.dropped = Counter("monitor_dropped_samples", "Samples dropped (stale or over budget)",
                               ["stream", "reason"], registry=r)
        self.reconnects = Counter("monitor_reconnects", "Stream reconnect attempts", ["stream", "state"], registry=r)
        self.streams_quarantined = Counter("monitor_streams_quarantined", "Streams quarantined because their "
                                           "input crashed their worker process (monitor/runtime/workers.py)",
                                           registry=r)
        self.sample_lag = Histogram("monitor_sample_lag_seconds", "Keyframe packet read to analysis done",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("monitor_stage_seconds", "Time per sample in each stage", ["stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.bank_entries = Gauge("monitor_bank_entries", "Entries per bank", ["bank"], registry=r)
        self.bank_reload = Histogram("monitor_bank_reload_seconds", "Bank load/reload time", ["bank"],
                                     registry=r)
        self.matches = Counter("monitor_matches", "Samples matching a bank entry", ["bank"], registry=r)
        self.incidents = Counter("monitor_incidents", "Incidents opened", ["bank", "severity"], registry=r)
        self.alerts = Counter("monitor_alerts", "Alerts sent", ["bank"], registry=r)
        self.suppressed = Counter("monitor_suppressed", "Matches that did not alert", ["reason"], registry=r)
        self.outbox_depth = Gauge("monitor_outbox_depth", "Messages waiting in the durable outbox", registry=r)
        self.outbox_age = Gauge("monitor_outbox_oldest_age_seconds", "Age of the oldest undelivered message",
                                registry=r)
        self.outbox_writable = Gauge("monitor_outbox_writable",
                                     "0 while the outbox cannot be written (disk full?): alerts are held in memory",
                                     registry=r)
        self.outbox_held = Gauge("monitor_outbox_held_in_memory",
                                 "Alerts and incident updates held in memory only (the outbox could not store them)",
                                 registry=r)
        self.outbox_write_errors = Counter("monitor_outbox_write_errors", "Failed outbox writes", registry=r)
        self.outbox_held_total = Counter("monitor_outbox_held", "Alerts and incident updates the outbox could "
                                         "not store (held in memory and published directly)", registry=r)
        self.outbox_dropped = Counter("monitor_outbox_dropped", "Held messages given up at the memory limit",
                                      registry=r)
        self.mqtt_connected = Gauge("monitor_mqtt_connected", "1 while connected to the broker", registry=r)
        self.quarantined = Gauge("monitor_quarantined_entries", "Bank entries quarantined as noisy", registry=r)
        # blind intervals, forward decoding, evasion (monitor/ops/sampling_report.py)
        self.sampling = SamplingMetrics(r)
        # classifiers, from the workers' figures at scrape time (monitor/ops/classifier_metrics.py)
        self.classifiers = ClassifierMetrics(r)
        self.hook_publishes = Counter("monitor_hook_publishes", "Publish hook decisions by outcome (watched, "
                                      "refused, allowed_unwatched, banned, unpublish_ignored, gate_expired) "
                                      "and reason", ["outcome", "reason"], registry=r)
        # stream actors on a Ray cluster (empty with local workers)
        self.cluster = ClusterMetrics(r)


@dataclass
class HealthRules:
    """When to report unhealthy."""

    stale_sample_s: float = 30.0  # a live stream without a sample for this long is not being watched
    max_outbox_age_s: float = 300.0  # alerts undelivered for this long: moderators are not seeing them


@dataclass
class HealthInput:
    live_streams: dict[str, float | None] = field(default_factory=dict)  # stream -> last sample (unix)
    dead_workers: list[str] = field(default_factory=list)
    mqtt_connected: bool = True
    outbox_oldest_age_s: float | None = None
    outbox_error: str | None = None  # the outbox cannot be written: what went wrong
    held_in_memory: int = 0  # alerts and incident updates held in memory only meanwhile


def health(inp: HealthInput, rules: HealthRules, now: float | None = None) -> tuple[bool, list[str]]:
    now = time.time() if now is None else now
    problems = [f"stream {s}: worker thread is gone" for s in inp.dead_workers]
    for stream, last in inp.live_streams.items():
        if last is None:
            continue  # just connected: its first keyframe is on the way
        if now - last > rules.stale_sample_s:
            problems.append(f"stream {stream}: live but no sample for {now - last:.0f} s")
    if inp.outbox_error is not None:
        problems.append(f"{inp.outbox_error}: alerts are not stored durably; {inp.held_in_memory} held in memory "
                        "only until the broker takes them")
    age = inp.outbox_oldest_age_s
    if age is not None and age > rules.max_outbox_age_s:
        problems.append(f"outbox: oldest undelivered message is {age:.0f} s old"
                        + ("" if inp.mqtt_connected else " (broker disconnected)"))
    return not problems, problems


async def start_metrics_server(metrics: Metrics, refresh: Callable[[], None],
                               health_input: Callable[[], HealthInput], rules: HealthRules,
                               host: str, port: int) -> web.AppRunner:
    async def metrics_view(_: web.Request) -> web.Response:
        refresh()  # gauges that mirror state are read at scrape time
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_: web.Request) -> web.Response:
        ok, problems = health(health_input(), rules)
        body: dict[str, Any] = {"ok": ok, "problems": problems}
        return web.Response(status=200 if ok else 503, text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", health_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
    return runner
