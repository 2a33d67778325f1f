"""`monitor bench ingest`, part 2: the real engine live (`monitor run` over nginx-rtmp) beside the floor, CPU and RSS of
each process tree, latency and drops from its metrics and alerts."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from monitor.config.models import IngestConfig
from monitor.ingest.reader import KeyframeReader
from monitor_tools import TOOLS_ROOT
from monitor_tools.bench.harness import (
    descendants,
    die_with_parent,
    machine_busy_s,
    proc_cpu_s,
    tree_cpu_s,
    tree_rss_bytes,
)
from monitor_tools.bench.ingest.floor import finish_floor, start_floor
from monitor_tools.bench.ingest.inputs import (
    BANK_SIZE,
    GOP_S,
    INCIDENT_CLOSE_S,
    KEPT_UP,
    LIVE_CLIP_S,
    LIVE_CLIP_S_QUICK,
    PLANTED_AT_S,
    prepare_input,
    say,
)
from monitor_tools.bench.ingest.metrics import (
    AlertLog,
    Scrape,
    histogram_quantiles,
    latency_summary,
    metric_by_stream,
    metric_sum,
    scrape,
)
from pipelines.fingerprint import pdq
from pipelines.hamming import CODE_BYTES
from test_streams.infra import NginxRtmp, free_port, stop_process


def live_clip(folder: Path, quick: bool) -> Path:
    """Camera-like content: a slow pan over a generated texture, 720p30, 2 s GOP, 2.5 Mbit/s (as offline)."""
    return prepare_input(folder, "pan", LIVE_CLIP_S_QUICK if quick else LIVE_CLIP_S)


def write_bank(path: Path, clip: Path, size: int) -> int:
    """`size` random PDQ codes plus the hash of one keyframe of the clip (PLANTED_AT_S): each stream matches it
    once per loop of the clip, and alerts on it once per loop (incidents close after INCIDENT_CLOSE_S)."""
    from pipelines.banks import format_bank

    cfg = IngestConfig()
    frames = list(KeyframeReader(str(clip), cfg, threading.Event()).frames())
    key = min(frames, key=lambda f: abs(f.media_time_s - PLANTED_AT_S))
    planted = pdq(key.rgb)[0]
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (size, CODE_BYTES), dtype=np.uint8)
    codes[size // 2] = planted
    path.write_text(format_bank([bytes(c).hex() for c in codes], "csv", "pdq"))
    return size // 2 + 1


@dataclass
class MonitorRun:
    """One `monitor run` process over the benchmark's streams."""

    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    log_file: BinaryIO

    def tail(self, lines: int = 8) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def close(self) -> None:
        stop_process(self.proc, 30)
        self.log_file.close()


def start_monitor(work: Path, name: str, sampling: dict[str, Any], streams: list[tuple[str, str]], bank: Path,
                  broker_url: str, tree: Path | None = None) -> MonitorRun:
    """`monitor run` with a real YAML config: default ingest, sampling and matching, except what is said here.
    `tree`: another checkout whose `monitor run` this is (a before/after comparison in one run)."""
    port = free_port()
    config: dict[str, Any] = {
        "node": name,
        "state_dir": str(work / f"state-{name}"),
        "broker": {"url": broker_url, "topic_prefix": "bench"},
        "streams": [{"id": sid, "url": url} for sid, url in streams],
        "banks": [{"name": "bench", "path": str(bank)}],
        # Reconnects within 2 s: the readers start before the publishers (the idle cost is measured first).
        "ingest": {"backoff_initial_s": 0.5, "backoff_max_s": 2.0},
        "metrics": {"enabled": True, "port": port},
        # One alert per stream per loop of the clip (an incident per loop), and the same entry on every stream is
        # the point here, not a noisy list entry.
        "incidents": {"close_after_s": INCIDENT_CLOSE_S, "quarantine_streams": 1_000_000},
        "log_level": "warning",
    }
    if sampling:
        config["sampling"] = sampling
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = work / f"{name}.log"
    root = tree if tree is not None else TOOLS_ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in close()
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(path)], cwd=root, env=env,
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)
    return MonitorRun(name, proc, port, log_path, log_file)


@contextlib.contextmanager
def publishers(nginx: NginxRtmp, names: list[str], clip: Path,
               duration_s: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    from test_streams.infra import ffmpeg_publish_cmd

    pubs: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            cmd = ffmpeg_publish_cmd(nginx.rtmp_url(name), duration_s=duration_s, source=str(clip))
            pubs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=die_with_parent))
            time.sleep(0.02)  # no thundering herd of ffmpeg start-ups
        yield pubs
    finally:
        for p in pubs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in pubs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def perf_start(name: str, pids: list[int], seconds: float, work: Path) -> tuple[str, Path, subprocess.Popen[bytes]]:
    """`perf record` of these processes (every thread) for `seconds`, at 499 Hz."""
    data = work / f"perf-{name}.data"
    cmd = ["perf", "record", "-q", "-F", "499", "-o", str(data), "-p", ",".join(map(str, pids)), "--",
           "sleep", f"{seconds:g}"]
    return name, data, subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)


def perf_report(data: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Shares of the samples by shared object and the top symbols (`perf report --sort dso` / `sym`)."""
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        stop_process(proc, 5)
    out: dict[str, Any] = {}
    for key, sort, limit in (("by_dso_pct", "dso", 0.5), ("top_symbols_pct", "dso,sym", 1.0)):
        try:
            text = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-q", "--sort", sort,
                                   "--percent-limit", str(limit)], capture_output=True, text=True, timeout=120,
                                  check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {"error": "perf report failed"}
        rows = {}
        for line in text.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(.+?)\s*$", line)
            if m:
                rows[re.sub(r"\s+", " ", m.group(2))] = float(m.group(1))
        out[key] = rows
    return out


def _wait_metrics(m: MonitorRun, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if m.proc.poll() is not None:
            break
        if scrape(m.metrics_port) is not None:
            return
        time.sleep(0.3)
    raise RuntimeError(f"monitor {m.name} did not start (exit {m.proc.poll()}): " + " | ".join(m.tail()))


def _settle(monitors: list[MonitorRun], n: int, timeout_s: float) -> dict[str, int]:
    """Until every monitor has every stream live (or the timeout), then one GOP more."""
    deadline = time.monotonic() + timeout_s
    live: dict[str, int] = {}
    while time.monotonic() < deadline:
        live = {m.name: int(metric_sum(scrape(m.metrics_port), "monitor_streams", state="live")) for m in monitors}
        if all(v >= n for v in live.values()):
            break
        time.sleep(0.5)
    say(f"  streams live: {live}; measuring")
    time.sleep(GOP_S)
    return live


def _monitor_report(m: MonitorRun, n: int, window_s: float, cpu_s: float, idle: dict[str, float],
                    rss: int, s0: Scrape | None, s1: Scrape | None, s_end: Scrape | None, alerts: AlertLog,
                    alerts_since: float) -> dict[str, Any]:
    expected = window_s / GOP_S
    samples = {k: v - metric_by_stream(s0, "monitor_samples_total").get(k, 0.0)
               for k, v in metric_by_stream(s1, "monitor_samples_total").items()}
    keys = {k: v - metric_by_stream(s0, "monitor_decoded_frames_total", kind="key").get(k, 0.0)
            for k, v in metric_by_stream(s1, "monitor_decoded_frames_total", kind="key").items()}
    forward = (metric_sum(s1, "monitor_decoded_frames_total", kind="forward")
               - metric_sum(s0, "monitor_decoded_frames_total", kind="forward"))
    taken_by: dict[str, float] = {}
    for labels, v in (s1 or {}).get("monitor_samples_taken_total", []):
        taken_by[labels.get("reason", "?")] = taken_by.get(labels.get("reason", "?"), 0.0) + v
    for labels, v in (s0 or {}).get("monitor_samples_taken_total", []):
        taken_by[labels.get("reason", "?")] = taken_by.get(labels.get("reason", "?"), 0.0) - v
    lat = alerts.latencies(m.name, alerts_since)
    dropped = {labels.get("reason", "?"): v for labels, v in (s_end or {}).get("monitor_dropped_samples_total", [])}
    per = cpu_s / window_s / n
    return {
        "cpu_s": round(cpu_s, 2),
        "cpu_pct_of_one_core": round(100 * cpu_s / window_s, 1),
        "cpu_s_per_media_s_per_stream": round(per, 5),
        "cpu_ms_per_keyframe": round(per * GOP_S * 1e3, 2),
        "idle_cpu_pct_of_one_core": round(100 * idle["cpu_per_s"], 1),
        "rss_mb": {"idle": round(idle["rss"] / 2**20, 1), "at_n_streams": round(rss / 2**20, 1),
                   "per_stream": round(rss / n / 2**20, 2),
                   "per_stream_above_idle": round((rss - idle["rss"]) / n / 2**20, 2)},
        "sample_lag_ms": histogram_quantiles(s0, s1, "monitor_sample_lag_seconds"),
        "keyframe_read_to_alert_ms": {**latency_summary(lat), "from": "alert received_at (keyframe packet read) to its "
                                      "arrival at an MQTT subscriber, every alert after the publishers started"},
        "samples_in_window": int(sum(samples.values())),
        # A starved monitor does less work per stream and reads cheaper: its ratios are no figures. An audit just
        # before a keyframe makes the keyframe redundant (min_interval_s), so samples are counted, not keyframes.
        "kept_up": sum(samples.values()) >= KEPT_UP * expected * n,
        "samples_by_reason_in_window": {k: int(v) for k, v in sorted(taken_by.items()) if v},
        "keyframes_decoded_in_window": int(sum(keys.values())),
        "keyframes_expected_in_window": round(expected * n),
        "streams_short_of_keyframes": sorted(k for k, v in keys.items() if v < math.floor(expected) - 1),
        "frames_decoded_forward_in_window": int(forward),
        "dropped_samples": {"total": int(sum(dropped.values())), "by_reason": {k: int(v) for k, v in dropped.items()},
                            "over": "the whole run (the workers report them every 5 s)"},
        "reconnects": int(metric_sum(s_end, "monitor_reconnects_total") - metric_sum(s0, "monitor_reconnects_total")),
        "alerts": len(lat),
    }


def bench_live(n: int, seconds: float, clip: Path, work: Path, *, floor: bool = True, keyframes: bool = False,
               chunk_size: int = 65536, compare_tree: Path | None = None, perf: bool = False) -> dict[str, Any]:
    """N streams through nginx-rtmp into `monitor run` (and the floor, and optionally a keyframe-only monitor
    and the monitor of another checkout) at the same time: CPU, latency, memory and drops of each."""
    from test_streams.infra import Mosquitto, NginxRtmp

    say(f"live: {n} streams for {seconds:g} s (floor {floor}, keyframes monitor {keyframes})")
    out: dict[str, Any] = {"streams": n, "seconds": seconds, "nginx_chunk_size": chunk_size}
    bank = work / "bank.csv"
    out["bank_entries"] = write_bank(bank, clip, BANK_SIZE)
    names = [f"s{i:03d}" for i in range(n)]
    monitors: list[MonitorRun] = []
    broker = Mosquitto().start()
    nginx = NginxRtmp(chunk_size=chunk_size)
    alerts: AlertLog | None = None
    floor_proc: subprocess.Popen[str] | None = None
    try:
        nginx.start()
        alerts = AlertLog(broker.port).start()
        streams = [(s, nginx.rtmp_url(s)) for s in names]
        plan: list[tuple[str, dict[str, Any], Path | None]] = [("engine", {}, None)]
        if keyframes:
            plan.append(("keyframes", {"mode": "keyframes"}, None))
        if compare_tree is not None:
            plan.append(("compare", {}, compare_tree))
        monitors = [start_monitor(work, name, sampling, streams, bank, broker.url, tree)
                    for name, sampling, tree in plan]
        for m in monitors:
            _wait_metrics(m, 120 + n)
        time.sleep(2.0)
        idle_s = 4.0
        c0 = {m.name: tree_cpu_s(m.proc.pid) for m in monitors}
        time.sleep(idle_s)
        idle = {m.name: {"cpu_per_s": (tree_cpu_s(m.proc.pid) - c0[m.name]) / idle_s,
                         "rss": float(tree_rss_bytes(m.proc.pid))} for m in monitors}
        started = time.time()
        with publishers(nginx, names, clip, seconds + 300 + 2 * n) as pubs:
            if floor:
                floor_proc = start_floor(streams)
            out["streams_live_at_start"] = _settle(monitors, n, 30 + 0.5 * n)
            helpers = [nginx.proc.pid, *descendants(nginx.proc.pid)] if nginx.proc else []
            pub_pids = [p.pid for p in pubs]
            s0 = {m.name: scrape(m.metrics_port) for m in monitors}
            cpu0 = {m.name: tree_cpu_s(m.proc.pid) for m in monitors}
            f0 = tree_cpu_s(floor_proc.pid) if floor_proc else 0.0
            profiles = []
            if perf:
                targets = {m.name: [m.proc.pid, *descendants(m.proc.pid)] for m in monitors}
                if floor_proc is not None:
                    targets["floor"] = [floor_proc.pid]
                profiles = [perf_start(name, pids, seconds, work) for name, pids in targets.items()]
            n0, p0, (busy0, all0), t0 = proc_cpu_s(helpers), proc_cpu_s(pub_pids), machine_busy_s(), time.monotonic()
            time.sleep(seconds)
            window = time.monotonic() - t0
            cpu = {m.name: tree_cpu_s(m.proc.pid) - cpu0[m.name] for m in monitors}
            f_cpu = tree_cpu_s(floor_proc.pid) - f0 if floor_proc else 0.0
            busy1, all1 = machine_busy_s()
            c_nginx, c_pub = proc_cpu_s(helpers) - n0, proc_cpu_s(pub_pids) - p0
            s1 = {m.name: scrape(m.metrics_port) for m in monitors}
            rss = {m.name: tree_rss_bytes(m.proc.pid) for m in monitors}
            if profiles:
                out["perf"] = {name: perf_report(data, proc) for name, data, proc in profiles}
            floor_keys = finish_floor(floor_proc) if floor_proc else {}
            floor_proc = None
            time.sleep(6.0)  # the workers' drop counters reach the metrics every 5 s
            s_end = {m.name: scrape(m.metrics_port) for m in monitors}
            pubs_exited = sum(1 for p in pubs if p.poll() is not None)
        busy = (busy1 - busy0) / max(1e-9, all1 - all0)
        for m in monitors:
            out[m.name] = _monitor_report(m, n, window, cpu[m.name], idle[m.name], rss[m.name], s0[m.name],
                                          s1[m.name], s_end[m.name], alerts, started)
            out[m.name]["process_exit"] = m.proc.poll()
        engine = out["engine"]
        if floor:
            per = f_cpu / window / n
            out["floor"] = {
                "what": "one process, one thread per stream: every packet received and demuxed, each keyframe "
                        "decoded (drained), nothing else",
                "cpu_s": round(f_cpu, 2), "cpu_s_per_media_s_per_stream": round(per, 5),
                "cpu_ms_per_keyframe": round(per * GOP_S * 1e3, 2),
                "keyframes_decoded": sum(floor_keys.values()), "streams_reporting": len(floor_keys),
            }
            out["engine_vs_floor"] = round(engine["cpu_s_per_media_s_per_stream"] / per, 2) if per > 0 else None
            if keyframes:
                k = out["keyframes"]["cpu_s_per_media_s_per_stream"]
                out["keyframes_vs_floor"] = round(k / per, 2) if per > 0 else None
        if keyframes:
            k = out["keyframes"]["cpu_s_per_media_s_per_stream"]
            out["adaptive_vs_keyframes"] = round(engine["cpu_s_per_media_s_per_stream"] / k, 3) if k > 0 else None
        if compare_tree is not None:
            c = out["compare"]["cpu_s_per_media_s_per_stream"]
            out["engine_vs_compare"] = round(engine["cpu_s_per_media_s_per_stream"] / c, 3) if c > 0 else None
        ncpu = os.cpu_count() or 1
        others = busy * ncpu * window - sum(cpu.values()) - f_cpu - c_nginx - c_pub
        out["window_s"] = round(window, 1)
        out["machine"] = {"cores": ncpu, "busy_pct": round(100 * busy, 1),
                          "nginx_pct_of_one_core": round(100 * c_nginx / window, 1),
                          "publishers_pct_of_one_core": round(100 * c_pub / window, 1),
                          "other_processes_pct_of_one_core": round(100 * others / window, 1),
                          "publishers_exited_early": pubs_exited}
        say(f"  engine {engine['cpu_s_per_media_s_per_stream']} CPU-s per media-s per stream"
             + (f", floor {out['floor']['cpu_s_per_media_s_per_stream']} ({out['engine_vs_floor']}x)" if floor
                else "")
             + (f", keyframes monitor {out['keyframes']['cpu_s_per_media_s_per_stream']} "
                f"(adaptive {out['adaptive_vs_keyframes']}x)" if keyframes else "")
             + f"; alert p95 {engine['keyframe_read_to_alert_ms']['p95_ms']} ms, "
               f"rss/stream {engine['rss_mb']['per_stream']} MB, machine {out['machine']['busy_pct']} % busy")
    finally:
        if floor_proc is not None:
            stop_process(floor_proc, 5)
        for m in monitors:
            m.close()
        if alerts is not None:
            alerts.stop()
        nginx.close()
        broker.close()
    for m in monitors:
        if m.proc.returncode not in (0, None, -signal.SIGTERM):
            out.setdefault("monitor_log_tail", {})[m.name] = m.tail()
    return out
