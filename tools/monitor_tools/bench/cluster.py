"""`monitor bench cluster`: what the Ray backend (monitor/cluster/) costs, and how far one engine carries it.

Two parts, one JSON report:

- same_box: live RTMP streams through nginx-rtmp read by two monitors at once, side by side: one with local
  worker processes (`workers: N`), one with stream actors on a Ray cluster it starts in its own process tree
  (`cluster: {engine: ray, address: local}`). The CPU of each whole process tree (Ray's GCS, raylet and actors
  included) per analysed sample, and their ratio (target <= 1.10).
- simulation: the real `Coordinator` and the real `RaySupervisor` dispatch path, driven by fake actors (no Ray):
  placement of 100,000 streams over 1,000 actors on 100 nodes; one simulated second of traffic (every actor's
  batch of samples, pickled as Ray would carry it, unpickled and handed to a sink that does the engine's
  per-sample metrics) to get engine messages/s and engine CPU at that rate; the loss of 10 % of the nodes (their
  heartbeats stop) and the time to place their streams again.

`--quick` makes both small (a few streams for 20 s; 10,000 simulated streams).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from monitor.app.health import observe_sample
from monitor.cluster.actor import ActorBatch
from monitor.cluster.coordinator import Coordinator, Load
from monitor.cluster.supervisor import RaySupervisor
from monitor.config.models import ClusterConfig, IngestConfig, MatchingConfig, SamplingConfig
from monitor.ops.metrics import Metrics
from monitor.runtime.messages import Sampled, SampleReport, SampleTiming, StateChange, WorkerEvent
from monitor_tools import TOOLS_ROOT
from monitor_tools.bench.harness import die_with_parent, loadavg, run_report, tree_cpu_s
from monitor_tools.bench.ingest.live import live_clip, publishers, write_bank
from monitor_tools.bench.ingest.metrics import metric_sum, scrape
from pipelines.base import Finding

TARGET_OVERHEAD = 1.10  # Ray's CPU per sample over the local processes'
SAMPLES_PER_STREAM_S = 0.5  # one keyframe every 2 s: the default sampling of a live stream


def say(msg: str) -> None:
    print(f"[bench cluster] {msg}", file=sys.stderr, flush=True)


class CountingSink:
    """The engine's side of a sample up to its incident book: the per-sample metrics and the hop onto an event
    loop (monitor/app/engine.py `Engine.on_sample`), with a handler that only counts."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.samples = 0
        self.states = 0
        self.handled = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def on_state(self, change: StateChange) -> None:
        self.states += 1

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        self.loop.call_soon_threadsafe(self._handle, sample.stream_id, findings)
        observe_sample(self.metrics, sample, findings, timing)
        self.samples += 1

    def _handle(self, stream_id: str, findings: list[Finding]) -> None:
        self.handled += 1

    def drain(self) -> None:
        """Waits until the loop has run every handler queued so far, then stops it."""
        done = threading.Event()
        self.loop.call_soon_threadsafe(done.set)
        done.wait(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(streams: int, actors: int, nodes: int, lose_share: float = 0.10) -> dict[str, Any]:
    """The coordinator and the dispatch path at scale, with fake actors; CPU measured in this process."""
    clock = FakeClock()
    cfg = ClusterConfig(engine="ray", dead_after_s=4.0)
    sink = CountingSink()
    sup = RaySupervisor(cfg, IngestConfig(), SamplingConfig(), [], MatchingConfig(), sink)
    sup.coordinator = coord = Coordinator(cfg.dead_after_s, clock)
    for a in range(actors):
        coord.add_actor(f"actor-{a}", f"node-{a % nodes}")
    ids = [f"s{i:06d}" for i in range(streams)]
    t0, c0 = time.perf_counter(), time.process_time()
    coord.place_many(ids)
    placement: dict[str, Any] = {"streams": streams, "actors": actors, "nodes": nodes,
                 "seconds": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)}
    per_actor: dict[str, list[str]] = {}
    for sid, actor in coord.placement.items():
        per_actor.setdefault(actor, []).append(sid)
    counts = [len(v) for v in per_actor.values()]
    placement["streams_per_actor"] = {"min": min(counts), "max": max(counts)}

    # one simulated second: each actor sends one batch with its streams' samples (pickled as Ray carries it)
    rng = random.Random(1)
    now = time.time()
    wire = []
    for actor, sids in per_actor.items():
        timing = SampleTiming(0.01, (("known_content", 0.002),), now)
        events: list[WorkerEvent] = [Sampled(SampleReport(sid, 100.0, now - 0.3), [], timing)
                                     for sid in sids if rng.random() < SAMPLES_PER_STREAM_S]
        load = Load(len(events), 0.05 * len(sids), 0.3, len(sids))
        wire.append(pickle.dumps(ActorBatch(actor, events, load), protocol=5))
    messages = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for blob in wire:
        batch: ActorBatch = pickle.loads(blob)
        coord.heartbeat(batch.actor_id, batch.load)
        sup._handle(batch)
        messages += len(batch.events) + 1
    sink.drain()
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    engine = {"messages_per_s": messages,  # in one simulated second of traffic
              "engine_cores_busy": round(cpu, 3),  # CPU seconds to handle that second
              "messages_per_s_one_core": round(messages / cpu) if cpu else None,
              "wall_s": round(wall, 3), "samples_handled": sink.samples,
              "saturates_at_streams": round(streams / cpu) if cpu else None,
              "what": "unpickling each actor's batch, the heartbeat, the dispatch, the engine's per-sample "
                      "metrics and the hop onto its event loop; not the incident book's work per sample"}

    # lose a tenth of the nodes: their actors stop answering
    clock.t += 1.0
    lost_nodes = {f"node-{n}" for n in range(max(1, round(nodes * lose_share)))}
    survivors = [s for s in coord.actors.values() if s.node_id not in lost_nodes]
    moved_expected = sum(len(s.streams) for s in coord.actors.values() if s.node_id in lost_nodes)
    detect_at = None
    moves = []
    compute = 0.0
    while detect_at is None or not moves:
        clock.t += cfg.heartbeat_s
        for s in survivors:
            coord.heartbeat(s.actor_id, Load(streams=len(s.streams)))
        c0 = time.process_time()
        moves = coord.check()
        compute += time.process_time() - c0
        if moves:
            detect_at = clock.t - 1.0
    counts = [len(s.streams) for s in survivors]
    rebalance = {"nodes_lost": len(lost_nodes), "streams_moved": len(moves), "expected": moved_expected,
                 "detected_after_s": round(detect_at, 1), "placement_cpu_s": round(compute, 3),
                 "rebalancing_s": round(detect_at + compute, 2),
                 "streams_per_surviving_actor": {"min": min(counts), "max": max(counts)},
                 "what": "heartbeat timeout (dead_after_s, on the fake clock) plus the coordinator's CPU to place "
                         "the streams again; each actor then opens its new streams (seconds: an RTMP connect)"}
    return {"placement": placement, "engine": engine, "rebalance": rebalance}


def _monitor(work: Path, name: str, streams: list[tuple[str, str]], bank: Path, broker_url: str,
             extra: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int, Path]:
    from test_streams.broker import free_port

    port = free_port()
    config: dict[str, Any] = {
        "node": name, "state_dir": str(work / f"state-{name}"),
        "broker": {"url": broker_url, "topic_prefix": "bench"},
        "streams": [{"id": sid, "url": url} for sid, url in streams],
        "banks": [{"name": "bench", "path": str(bank)}],
        "ingest": {"backoff_initial_s": 0.5, "backoff_max_s": 2.0},
        "metrics": {"enabled": True, "port": port}, "log_level": "warning", **extra}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = work / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(path)], cwd=TOOLS_ROOT,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    return proc, port, log


def same_box(n: int, seconds: float, work: Path, quick: bool) -> dict[str, Any]:
    """Both backends over the same live streams at once; CPU of each process tree per analysed sample."""
    from test_streams.infra import Mosquitto, NginxRtmp

    clip = live_clip(work, quick)
    bank = work / "bank.csv"
    write_bank(bank, clip, 1000)
    workers = max(1, min(n, os.cpu_count() or 1))
    names = [f"s{i}" for i in range(n)]
    out: dict[str, Any] = {"streams": n, "window_s": seconds, "workers": workers}
    broker, nginx = Mosquitto().start(), NginxRtmp().start()
    try:
        with publishers(nginx, names, clip, seconds + 240):
            _side_by_side(work, [(s, nginx.rtmp_url(s)) for s in names], bank, broker.url, workers, n, seconds, out)
    finally:
        nginx.close()
        broker.close()
    local, ray = out["local"].get("cpu_ms_per_sample"), out["ray"].get("cpu_ms_per_sample")
    out["overhead"] = round(ray / local, 3) if local and ray else None
    out["target"] = f"<= {TARGET_OVERHEAD}x"
    out["met"] = out["overhead"] is not None and out["overhead"] <= TARGET_OVERHEAD
    return out


def _side_by_side(work: Path, urls: list[tuple[str, str]], bank: Path, broker_url: str, workers: int, n: int,
                  seconds: float, out: dict[str, Any]) -> None:
    from test_streams.infra import stop_process

    ray_cluster = {"engine": "ray", "address": "local", "cpus_per_actor": 1.0, "max_actors_per_node": workers}
    runs = {"local": _monitor(work, "local", urls, bank, broker_url, {"workers": workers}),
            "ray": _monitor(work, "ray", urls, bank, broker_url, {"cluster": ray_cluster})}
    try:
        say("waiting for both monitors to sample every stream")
        deadline = time.monotonic() + 180
        while not all(metric_sum(scrape(port), "monitor_samples_total") >= 2 * n for _, port, _ in runs.values()):
            for name, (proc, _, log) in runs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} monitor exited: {log.read_text(errors='replace')[-1500:]}")
            if time.monotonic() > deadline:
                counts = {k: metric_sum(scrape(port), "monitor_samples_total") for k, (_, port, _) in runs.items()}
                tails = {k: log.read_text(errors="replace")[-1200:] for k, (_, _, log) in runs.items()}
                raise RuntimeError(f"not every stream was sampled twice within 180 s: samples {counts}; logs {tails}")
            time.sleep(1)
        time.sleep(5)  # the start-up's own work (Ray's workers importing) is not the steady state
        before = {k: (tree_cpu_s(p.pid), metric_sum(scrape(port), "monitor_samples_total"))
                  for k, (p, port, _) in runs.items()}
        say(f"measuring {seconds:.0f} s")
        time.sleep(seconds)
        for k, (p, port, _) in runs.items():
            cpu = tree_cpu_s(p.pid) - before[k][0]
            samples = metric_sum(scrape(port), "monitor_samples_total") - before[k][1]
            out[k] = {"cpu_s": round(cpu, 2), "samples": int(samples),
                      "cpu_ms_per_sample": round(1000 * cpu / samples, 2) if samples else None,
                      "cpu_per_stream": round(cpu / seconds / n, 4)}
    finally:
        for proc, _, _ in runs.values():
            stop_process(proc, 30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="monitor bench cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small: 2 live streams for 20 s, 10,000 simulated streams")
    p.add_argument("--streams", type=int, help="live streams of the same-box part (default 4, quick 2)")
    p.add_argument("--seconds", type=float, help="measuring window of the same-box part (default 60, quick 20)")
    p.add_argument("--no-live", action="store_true", help="the simulation alone")
    args = p.parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "cluster", "quick": args.quick,
                              "environment": {"cpus": os.cpu_count(), "loadavg_at_start": loadavg()}}

    def body(work: Path) -> None:
        sim = (10_000, 100, 10) if args.quick else (100_000, 1_000, 100)
        say(f"simulation: {sim[0]} streams, {sim[1]} actors, {sim[2]} nodes")
        report["simulation"] = simulate(*sim)
        if not args.no_live:
            n = args.streams or (2 if args.quick else 4)
            report["same_box"] = same_box(n, args.seconds or (20.0 if args.quick else 60.0), work, args.quick)

    return run_report(report, body, started=started, work_prefix="bench-cluster-", log=say)


if __name__ == "__main__":
    raise SystemExit(main())
