"""`monitor bench ingest`: what it reads of a running monitor: its Prometheus metrics and its alerts over MQTT."""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor_tools.bench.harness import start_alert_subscriber
from monitor_tools.bench.ingest.inputs import percentile, to_ms

# Prometheus text: name -> [(labels, value)]
Scrape = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Scrape | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: Scrape = {}
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m is None or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def metric_sum(s: Scrape | None, name: str, **match: str) -> float:
    if s is None:
        return 0.0
    return sum(v for labels, v in s.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def metric_by_stream(s: Scrape | None, name: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in (s or {}).get(name, []):
        if all(labels.get(k) == x for k, x in match.items()) and "stream" in labels:
            out[labels["stream"]] = out.get(labels["stream"], 0.0) + v
    return out


def histogram_quantiles(before: Scrape | None, after: Scrape | None, name: str,
                        qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, Any]:
    """Quantiles of a histogram's observations between two scrapes, interpolated linearly inside buckets."""
    def buckets(s: Scrape | None) -> dict[float, float]:
        return {float(labels["le"]): v for labels, v in (s or {}).get(f"{name}_bucket", [])}

    b0, b1 = buckets(before), buckets(after)
    edges = sorted(b1)
    cum = [b1[e] - b0.get(e, 0.0) for e in edges]
    total = cum[-1] if cum else 0.0
    out: dict[str, Any] = {"n": int(total), "from": "the engine's histogram, interpolated inside its buckets"}
    for q in qs:
        key = f"p{q:g}_ms"
        if total <= 0:
            out[key] = None
            continue
        want = total * q / 100
        lo, prev = 0.0, 0.0
        for e, c in zip(edges, cum, strict=True):
            if c >= want:
                if math.isinf(e):
                    out[key] = f"> {lo * 1e3:g}"
                else:
                    frac = (want - prev) / (c - prev) if c > prev else 1.0
                    out[key] = round((lo + frac * (e - lo)) * 1e3, 1)
                break
            lo, prev = e, c
    return out


@dataclass
class AlertLog:
    """Alerts as a subscriber gets them: (arrival, node, stream, alert)."""

    port: int
    got: list[tuple[float, str, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: Any = None

    def start(self) -> AlertLog:
        self.client = start_alert_subscriber(self.port, "bench-ingest", self._message)
        return self

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        parts = msg.topic.split("/")
        with contextlib.suppress(ValueError, IndexError):
            body = json.loads(msg.payload)
            with self.lock:
                self.got.append((now, parts[1], parts[3], body))

    def latencies(self, node: str, since: float) -> list[float]:
        """Keyframe packet read (the alert's received_at) to the alert's arrival here."""
        out = []
        with self.lock:
            for arrival, n, _, body in self.got:
                if n != node or arrival < since:
                    continue
                with contextlib.suppress(KeyError, ValueError):
                    read = datetime.fromisoformat(body["received_at"].replace("Z", "+00:00")).timestamp()
                    out.append(arrival - read)
        return out

    def stop(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()


def latency_summary(values: list[float]) -> dict[str, Any]:
    return {"p50_ms": to_ms(percentile(values, 50)), "p95_ms": to_ms(percentile(values, 95)),
            "p99_ms": to_ms(percentile(values, 99)), "max_ms": to_ms(max(values) if values else None), "n": len(values)}
