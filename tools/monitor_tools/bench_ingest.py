"""Benchmark: ingest cost offline (keyframe path vs full decode) and the real engine live over nginx-rtmp.

    monitor bench ingest [--quick] [--streams N] [--seconds S] [--keyframes-monitor]   (python -m
    monitor_tools.bench_ingest)

1. Offline throughput, in process CPU seconds, on a prepared 720p30 H.264 file with a 2 s GOP (cached in a
   temp folder): (a) `KeyframeReader` (keyframe-only decode, drain, scale in libswscale) + `KnownContentMatcher`
   as built by default (PDQ probes looked up in a 100k-entry bank: random codes plus some of the file's own
   keyframe hashes, so matches happen) + `build_alert` for every match; (b) the same input decoded in full
   (`container.decode`, every frame) with a frame-interval sampler taking one frame per 2 s of media time, then
   the same scale + matcher + alerts. Both with one decoder thread. Reported as media-seconds per CPU-second and
   their ratio, for the default matcher and a single-probe matcher; a per-stage breakdown says where (a) goes.
2. Live, the real engine: Mosquitto, nginx-rtmp and N `ffmpeg -re -stream_loop -1 -c copy` publishers of a
   prepared textured slow pan (720p30, 2 s GOP, 2.5 Mbit/s: camera-like, not testsrc2, which decodes almost for
   free), watched by `monitor run` (a real YAML config: default ingest, sampling and matching, its own worker
   processes; a 100k-entry bank holding one keyframe of the clip, so each stream alerts once per loop) and, in
   the same run on the same streams, by the floor: one process, one thread per stream, receiving every packet and
   decoding the keyframes, nothing else. Optionally also a `sampling.mode: keyframes` monitor
   (`--keyframes-monitor`) and the monitor of another checkout (`--compare-tree`, before/after in one run).
   Reported for each: CPU seconds per media second per stream of the whole process tree (/proc/<pid>/stat of it
   and its children), the ratios engine/floor and adaptive/keyframes, RSS of the tree (idle, at N, per stream),
   sample lag p50/p95/p99 (the engine's own histogram), keyframe packet read to alert arrival at an MQTT
   subscriber p50/p95/p99 (the alerts' `received_at`), keyframes and samples in the window, dropped samples and
   reconnects (the engine's metrics), and the CPU of nginx, the publishers and the machine.

One JSON document goes to stdout; progress goes to stderr. --quick (CI) takes about two minutes and never fails
on a slow machine: it only prints figures. Every process started here is stopped, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import yaml
from av.video.reformatter import VideoReformatter

from monitor.config.models import IngestConfig
from monitor.contracts.alerts import build_alert
from monitor.ingest.reader import KeyframeReader, scaled_rgb
from pipelines.banks import Bank, Entry
from pipelines.base import Finding, Sample
from pipelines.fingerprint import pdq
from pipelines.hamming import CODE_BYTES
from pipelines.known_content import KnownContentMatcher
from pipelines.robust import SWITCH_NAMES
from test_streams.images import Background
from test_streams.infra import free_port, stop_process

INPUT_VERSION = 1  # bump when the encoding settings change (the cache key)
WIDTH, HEIGHT, FPS, GOP_S = 1280, 720, 30, 2.0
BITRATE = "2500k"
X264 = ["-preset", "veryfast", "-tune", "zerolatency", "-bf", "0"]  # like test_streams.infra's publishers
BANK_SIZE = 100_000
SAMPLE_EVERY_S = 2.0  # the frame-interval sampler of the full-decode baseline
LIVE_CLIP_S, LIVE_CLIP_S_QUICK = 30, 12  # the live clip, looped by each publisher
PLANTED_AT_S = 14.0  # the clip's keyframe nearest this is in the live bank
KEPT_UP = 0.95  # a monitor kept up when it took at least this part of the keyframes' worth of samples in the window
INCIDENT_CLOSE_S = 8.0  # live: an incident closes this long after its last match (default 120): an alert per loop
TARGETS = {"throughput_media_s_per_cpu_s": 200.0, "ratio_vs_full_decode": 15.0, "engine_vs_floor": 1.5,
           "streams": 100, "alert_p95_s": 0.5, "dropped": 0, "rss_per_stream_mb": 10.0}


def _log(msg: str) -> None:
    print(f"[bench ingest] {msg}", file=sys.stderr, flush=True)


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 1)


# -- inputs ---------------------------------------------------------------------------------------------------
def cache_dir(override: Path | None = None) -> Path:
    d = override or Path(tempfile.gettempdir()) / "monitor-bench-ingest"
    d.mkdir(parents=True, exist_ok=True)
    return d


def prepare_input(folder: Path, content: str, seconds: int) -> Path:
    """A 720p30, 2 s GOP H.264 MP4 (cached). content: testsrc2 (ffmpeg) or pan (PyAV, a textured slow pan)."""
    if content == "testsrc2" and shutil.which("ffmpeg") is None:
        content = "pan"
    path = folder / f"{content}-{WIDTH}x{HEIGHT}p{FPS}-gop{GOP_S:g}-{seconds}s-v{INPUT_VERSION}.mp4"
    if path.exists() and path.stat().st_size > 0:
        return path
    part = path.with_name(path.stem + f".part{os.getpid()}.mp4")
    gop = str(round(FPS * GOP_S))
    _log(f"encoding {path.name} ...")
    t0 = time.perf_counter()
    if content == "testsrc2":
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
               "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}", "-t", str(seconds), "-c:v", "libx264", *X264,
               "-pix_fmt", "yuv420p", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
               "-b:v", BITRATE, "-maxrate", BITRATE, "-bufsize", "5000k", str(part)]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, timeout=600)
    elif content == "pan":
        bg = Background(7, WIDTH, HEIGHT)
        with av.open(str(part), "w") as out:
            s = out.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            ctx = s.codec_context
            ctx.gop_size = round(FPS * GOP_S)
            ctx.bit_rate = 2_500_000
            ctx.options = {"preset": "veryfast", "tune": "zerolatency", "bf": "0", "sc_threshold": "0",
                           "keyint_min": gop, "maxrate": BITRATE, "bufsize": "5000k"}
            for i in range(seconds * FPS):
                frame = av.VideoFrame.from_ndarray(bg.frame(i / FPS), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, FPS)
                for packet in s.encode(frame):
                    out.mux(packet)
            for packet in s.encode():
                out.mux(packet)
    else:
        raise ValueError(f"unknown content {content!r}")
    part.replace(path)
    _log(f"  {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    return path


def media_duration(path: Path) -> float:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for p in c.demux(v) if p.dts is not None)
        rate = float(v.average_rate or FPS)
    return frames / rate


def keyframe_hashes(path: Path, cfg: IngestConfig) -> list[np.ndarray]:
    return [pdq(f.rgb)[0] for f in KeyframeReader(str(path), cfg, threading.Event()).frames()]


def make_bank(known: list[np.ndarray], size: int, seed: int = 1) -> tuple[Bank, int]:
    """`size` entries: random codes plus every other keyframe hash of the input (so about half match)."""
    rng = np.random.default_rng(seed)
    planted = known[::2]
    codes = rng.integers(0, 256, (size, CODE_BYTES), dtype=np.uint8)
    pos = rng.choice(size, len(planted), replace=False)
    for p, c in zip(pos, planted, strict=True):
        codes[p] = c
    entries = [Entry(str(i)) for i in range(size)]
    return Bank("bench", "pdq", codes, entries), len(planted)


# -- 1. throughput --------------------------------------------------------------------------------------------
@dataclass
class AlertBook:
    """Alert bookkeeping, worst case: the alert dict is built for every match (no cooldown, no incidents)."""

    alerts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, findings: list[Finding]) -> None:
        now = time.time()
        built = [build_alert(f, node="bench", stream_url="bench://", observed_at=now) for f in findings]
        with self.lock:
            self.alerts += len(built)


def run_keyframe_path(path: Path, cfg: IngestConfig, matcher: KnownContentMatcher) -> dict[str, Any]:
    book = AlertBook()
    samples = matches = 0
    for f in KeyframeReader(str(path), cfg, threading.Event()).frames():
        findings = matcher.process(Sample("bench", f.media_time_s, f.received_at, f.rgb))
        samples += 1
        matches += len(findings)
        book.add(findings)
    return {"samples": samples, "matches": matches, "alerts": book.alerts}


def run_full_decode_path(path: Path, cfg: IngestConfig, matcher: KnownContentMatcher) -> dict[str, Any]:
    """What a frame-interval sampler on full decoding does: decode every frame, keep one per 2 s of media time."""
    book = AlertBook()
    samples = matches = decoded = 0
    next_t: float | None = None
    fmt = VideoReformatter()  # one per stream, as the reader's
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.codec_context.thread_count = cfg.decoder_threads
        tb = video.time_base
        for frame in container.decode(video):
            decoded += 1
            if frame.pts is None or tb is None:
                continue
            t = float(frame.pts * tb)
            if next_t is not None and t < next_t:
                continue
            next_t = (t if next_t is None else next_t) + SAMPLE_EVERY_S
            rgb = scaled_rgb(frame, cfg.scale_width, fmt)
            findings = matcher.process(Sample("bench", t, time.time(), rgb))
            samples += 1
            matches += len(findings)
            book.add(findings)
    return {"samples": samples, "matches": matches, "alerts": book.alerts, "frames_decoded": decoded}


def stage_breakdown(path: Path, cfg: IngestConfig, bank: Bank) -> dict[str, float]:
    """CPU ms per keyframe by stage, with the reader's decode (drain + flush) replicated so stages can be timed."""
    cpu = time.process_time
    totals = {"demux_and_decode": 0.0, "scale_to_rgb": 0.0, "pdq": 0.0, "bank_lookup": 0.0}
    n = 0
    fmt = VideoReformatter()
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        ctx = video.codec_context
        ctx.skip_frame = "NONKEY"
        ctx.thread_count = cfg.decoder_threads
        t = cpu()
        for packet in container.demux(video):
            if packet.dts is None or not packet.is_keyframe:
                continue
            frames = list(ctx.decode(packet)) + list(ctx.decode(None))
            ctx.flush_buffers()
            t1 = cpu()
            totals["demux_and_decode"] += t1 - t
            for frame in frames:
                rgb = scaled_rgb(frame, cfg.scale_width, fmt)
                t2 = cpu()
                code, _ = pdq(rgb)
                t3 = cpu()
                bank.lookup(code)
                t4 = cpu()
                totals["scale_to_rgb"] += t2 - t1
                totals["pdq"] += t3 - t2
                totals["bank_lookup"] += t4 - t3
                n += 1
                t1 = t4
            t = cpu()
    return {f"{k}_ms_per_keyframe": round(v / max(1, n) * 1e3, 3) for k, v in totals.items()}




def make_matcher(bank: Bank, single_probe: bool = False) -> KnownContentMatcher:
    """The matcher as the engine builds it by default, or with every robustness switch off (one probe)."""
    if not single_probe:
        return KnownContentMatcher([bank])
    return KnownContentMatcher([bank], **dict.fromkeys(SWITCH_NAMES, False))


def describe_matcher(matcher: KnownContentMatcher) -> dict[str, Any]:
    options = getattr(matcher, "options", None)
    label = options.label() if options is not None and hasattr(options, "label") else "single PDQ probe"
    stats = matcher.stats
    probes = getattr(stats, "probes", None)
    return {"options": label,
            "lookups_per_sample": round(probes / stats.samples, 2) if probes is not None and stats.samples else 1.0}


def _compare(path: Path, media_s: float, cfg: IngestConfig, bank: Bank, min_cpu_s: float,
             single_probe: bool) -> dict[str, Any]:
    matcher = make_matcher(bank, single_probe)
    run_keyframe_path(path, cfg, matcher)  # warm caches (file pages, code paths); not counted
    # (a) repeated until it has used enough CPU to be measured well
    reps, cpu_a, wall_a = 0, 0.0, 0.0
    res_a: dict[str, Any] = {}
    while reps < 1 or (cpu_a < min_cpu_s and reps < 50):
        c0, w0 = time.process_time(), time.perf_counter()
        res_a = run_keyframe_path(path, cfg, matcher)
        cpu_a += time.process_time() - c0
        wall_a += time.perf_counter() - w0
        reps += 1
    what = "single-probe matcher" if single_probe else "default matcher"
    _log(f"  keyframe path, {what}: {reps} x {media_s:.0f} media-s in {cpu_a:.2f} CPU-s")
    c0, w0 = time.process_time(), time.perf_counter()
    res_b = run_full_decode_path(path, cfg, matcher)
    cpu_b, wall_b = time.process_time() - c0, time.perf_counter() - w0
    _log(f"  full decode, {what}: {media_s:.0f} media-s in {cpu_b:.2f} CPU-s")
    a = media_s * reps / cpu_a
    b = media_s / cpu_b
    return {
        "matcher": describe_matcher(matcher),
        "keyframe_path": {
            "what": "KeyframeReader (keyframe-only, drain, libswscale scale) + KnownContentMatcher + build_alert",
            "repeats": reps,
            "cpu_s": round(cpu_a, 3),
            "wall_s": round(wall_a, 3),
            "media_s_per_cpu_s": round(a, 1),
            "samples_per_run": res_a["samples"],
            "matches_per_run": res_a["matches"],
            "alerts_per_run": res_a["alerts"],
        },
        "full_decode_path": {
            "what": f"container.decode (every frame) + one sample per {SAMPLE_EVERY_S:g} s of media time + same",
            "cpu_s": round(cpu_b, 3),
            "wall_s": round(wall_b, 3),
            "media_s_per_cpu_s": round(b, 1),
            "frames_decoded": res_b["frames_decoded"],
            "samples": res_b["samples"],
            "matches": res_b["matches"],
            "alerts": res_b["alerts"],
        },
        "ratio": round(a / b, 2),
    }


def bench_throughput(path: Path, cfg: IngestConfig, bank: Bank, planted: int, min_cpu_s: float) -> dict[str, Any]:
    """The default matcher (what `monitor run` uses) and, for comparison, the matcher with one PDQ probe."""
    media_s = media_duration(path)
    default = _compare(path, media_s, cfg, bank, min_cpu_s, single_probe=False)
    single = _compare(path, media_s, cfg, bank, min_cpu_s / 2, single_probe=True)
    return {
        "input": {"file": path.name, "media_s": round(media_s, 2), "size_mb": round(path.stat().st_size / 1e6, 2)},
        "bank_entries": len(bank),
        "bank_planted_keyframe_hashes": planted,
        **default,
        "single_probe": single,
        "keyframe_path_stages": stage_breakdown(path, cfg, bank),
        "keyframe_path_stages_note": "one PDQ probe, timed stage by stage (the default matcher adds lookups)",
    }


# -- 2. live: the real engine ---------------------------------------------------------------------------------
try:  # looked up here, not in the forked child, where loading a library could deadlock
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """Runs in the child before exec: if this benchmark is killed outright, the child gets SIGTERM."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # fields from 3 (state) on; comm may hold spaces
    except OSError:
        return None


def _proc_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes, from /proc."""
    total = 0.0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, by one scan of /proc."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            fields = _stat_fields(int(d))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_s(pid: int) -> float:
    """utime + stime of a process and its live descendants, plus what its reaped children used."""
    root = _stat_fields(pid)
    total = sum(int(x) for x in root[11:15]) / _TICK if root is not None else 0.0  # utime stime cutime cstime
    return total + _proc_cpu(descendants(pid))


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except OSError:
            pass
    return total


def _sys_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / _TICK, total / _TICK


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
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-ingest-{os.getpid()}")
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/+/alerts/#", qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("could not subscribe to the broker")
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


def _summary(values: list[float]) -> dict[str, Any]:
    return {"p50_ms": _ms(_pct(values, 50)), "p95_ms": _ms(_pct(values, 95)), "p99_ms": _ms(_pct(values, 99)),
            "max_ms": _ms(max(values) if values else None), "n": len(values)}


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
    log_file: Any

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
    root = tree if tree is not None else Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in close()
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(path)], cwd=root, env=env,
                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent)
    return MonitorRun(name, proc, port, log_path, log_file)


def _floor_main() -> int:
    """The floor (`--floor-child`): the least any live keyframe monitor must do. One process, one thread per
    stream: receive and demux every packet, decode each keyframe (drained out of the decoder at once, as the
    monitor does), nothing else: no scaling, hashing, timeouts or Python per packet beyond the loop. Streams on
    stdin (one JSON line), keyframe counts on stdout when stdin closes."""
    urls: list[tuple[str, str]] = json.loads(sys.stdin.readline())["streams"]
    stop = threading.Event()
    counts = dict.fromkeys((sid for sid, _ in urls), 0)

    def read(sid: str, url: str) -> None:
        while not stop.is_set():
            try:
                with av.open(url, options={"probesize": "65536", "analyzeduration": "1000000",
                                           "rw_timeout": "5000000"}) as c:
                    video = c.streams.video[0]
                    ctx = video.codec_context
                    ctx.thread_count = 1
                    for packet in c.demux():
                        if stop.is_set():
                            return
                        if packet.stream is not video or not packet.is_keyframe:
                            continue
                        frames = list(ctx.decode(packet))
                        with contextlib.suppress(av.error.EOFError):
                            frames += ctx.decode(None)
                        ctx.flush_buffers()
                        counts[sid] += len(frames)
            except Exception:  # reconnect, as a monitor would
                stop.wait(0.5)

    threads = [threading.Thread(target=read, args=u, daemon=True) for u in urls]
    for t in threads:
        t.start()
    sys.stdin.readline()  # EOF or a line: stop
    stop.set()
    print(json.dumps({"keyframes": counts}), flush=True)
    return 0


def start_floor(urls: list[tuple[str, str]]) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "monitor_tools.bench_ingest", "--floor-child"], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"streams": urls}) + "\n")
    proc.stdin.flush()
    return proc


def finish_floor(proc: subprocess.Popen[str]) -> dict[str, int]:
    try:
        out, _ = proc.communicate("stop\n", timeout=30)
        result: dict[str, int] = json.loads(out)["keyframes"]
        return result
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        return {}
    finally:
        stop_process(proc, 5)


@contextlib.contextmanager
def publishers(nginx: Any, names: list[str], clip: Path, duration_s: float) -> Iterator[list[Any]]:
    from test_streams.infra import ffmpeg_publish_cmd

    pubs: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            cmd = ffmpeg_publish_cmd(nginx.rtmp_url(name), duration_s=duration_s, source=str(clip))
            pubs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent))
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
                                        stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)


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
    _log(f"  streams live: {live}; measuring")
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
        "keyframe_read_to_alert_ms": {**_summary(lat), "from": "alert received_at (keyframe packet read) to its "
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

    _log(f"live: {n} streams for {seconds:g} s (floor {floor}, keyframes monitor {keyframes})")
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
            n0, p0, (busy0, all0), t0 = _proc_cpu(helpers), _proc_cpu(pub_pids), _sys_busy(), time.monotonic()
            time.sleep(seconds)
            window = time.monotonic() - t0
            cpu = {m.name: tree_cpu_s(m.proc.pid) - cpu0[m.name] for m in monitors}
            f_cpu = tree_cpu_s(floor_proc.pid) - f0 if floor_proc else 0.0
            busy1, all1 = _sys_busy()
            c_nginx, c_pub = _proc_cpu(helpers) - n0, _proc_cpu(pub_pids) - p0
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
        _log(f"  engine {engine['cpu_s_per_media_s_per_stream']} CPU-s per media-s per stream"
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


# -- main -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="monitor bench ingest", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI mode: small inputs, 4 streams for 8 s; figures only")
    ap.add_argument("--streams", type=int, help="live streams (default 100, quick 4)")
    ap.add_argument("--seconds", type=float, help="live measuring window (default 60, quick 8)")
    ap.add_argument("--skip-live", action="store_true", help="throughput only (no nginx, publishers or monitor)")
    ap.add_argument("--live-only", action="store_true", help="the live part only")
    ap.add_argument("--no-floor", action="store_true", help="live: without the floor reader alongside")
    ap.add_argument("--keyframes-monitor", action="store_true",
                    help="live: also a `sampling.mode: keyframes` monitor on the same streams (adaptive vs keyframes)")
    ap.add_argument("--compare-tree", type=Path,
                    help="live: also the `monitor run` of another checkout of this project (before/after, one run)")
    ap.add_argument("--perf", action="store_true", help="live: `perf record` each process tree during the window")
    ap.add_argument("--chunk-size", type=int, default=65536, help="live: nginx-rtmp chunk_size (default 65536)")
    ap.add_argument("--cache-dir", type=Path, help="where prepared inputs are kept (default: a temp folder)")
    ap.add_argument("--floor-child", action="store_true", help=argparse.SUPPRESS)  # the floor reader process
    args = ap.parse_args(argv)
    if args.streams is not None and args.streams < 1:
        ap.error("--streams must be >= 1")
    if args.seconds is not None and args.seconds <= 0:
        ap.error("--seconds must be > 0")
    if args.skip_live and args.live_only:
        ap.error("--skip-live and --live-only exclude each other")
    if not 128 <= args.chunk_size <= 1 << 24:
        ap.error("--chunk-size must be between 128 and 16777216")
    if args.compare_tree is not None and not (args.compare_tree / "monitor" / "__main__.py").is_file():
        ap.error("--compare-tree must be the root of a checkout of this project")
    return args


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    thr = report.get("throughput", {})
    if "keyframe_path" in thr:
        v = thr["keyframe_path"]["media_s_per_cpu_s"]
        t["throughput_media_s_per_cpu_s"] = {"target": f">= {TARGETS['throughput_media_s_per_cpu_s']:g}",
                                             "measured": v, "met": v >= TARGETS["throughput_media_s_per_cpu_s"]}
        r = thr["ratio"]
        t["ratio_vs_full_decode"] = {"target": f">= {TARGETS['ratio_vs_full_decode']:g}", "measured": r,
                                     "met": r >= TARGETS["ratio_vs_full_decode"]}
    live = report.get("live", {})
    if "engine" in live:
        e = live["engine"]
        n = live["streams"]
        at_n = n >= TARGETS["streams"]
        t["streams"] = {"target": TARGETS["streams"], "measured": n}
        if live.get("engine_vs_floor") is not None:
            r = live["engine_vs_floor"]
            t["engine_vs_floor"] = {"target": f"<= {TARGETS['engine_vs_floor']:g}", "measured": r,
                                    "engine_kept_up": e["kept_up"],
                                    "met": r <= TARGETS["engine_vs_floor"] and e["kept_up"]}
        p95 = e["keyframe_read_to_alert_ms"]["p95_ms"]
        t["alert_p95_s"] = {"target": f"<= {TARGETS['alert_p95_s']:g} at {TARGETS['streams']} streams",
                            "measured_ms": p95, "met": p95 is not None and p95 <= TARGETS["alert_p95_s"] * 1e3 and at_n}
        d = e["dropped_samples"]["total"]
        t["dropped"] = {"target": 0, "measured": d, "met": d == 0 and at_n}
        rps = e["rss_mb"]["per_stream"]
        t["rss_per_stream_mb"] = {"target": f"<= {TARGETS['rss_per_stream_mb']:g} at {TARGETS['streams']} streams",
                                  "measured": rps, "met": rps <= TARGETS["rss_per_stream_mb"] and at_n}
    elif "error" in live:
        t["live"] = {"error": live["error"]}
    return t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.floor_child:
        return _floor_main()
    quick = args.quick
    n = args.streams or (4 if quick else 100)
    seconds = args.seconds or (8.0 if quick else 60.0)
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _sigterm)
    cfg = IngestConfig(decoder_threads=1)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "ingest: keyframe path vs full decode offline, and the real engine live",
        "mode": "quick" if quick else "full",
        "command": "monitor bench ingest " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {
            "input": f"{WIDTH}x{HEIGHT} {FPS} fps H.264, GOP {GOP_S:g} s, libx264 {' '.join(X264)}, {BITRATE}",
            "decoder_threads": cfg.decoder_threads,
            "decoder_threads_note": "1 decoder thread for both offline paths, so they are comparable",
            "scale_width": cfg.scale_width,
            "bank_entries": BANK_SIZE,
            "streams": n,
            "seconds": seconds,
        },
        "environment": {
            "python": platform.python_version(),
            "av": av.__version__,
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    folder = cache_dir(args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        if not args.live_only:
            src = prepare_input(folder, "testsrc2", 12 if quick else 60)
            _log("bank: hashing the input's keyframes, building 100k entries")
            bank, planted = make_bank(keyframe_hashes(src, cfg), BANK_SIZE)
            _log("throughput")
            report["throughput"] = bench_throughput(src, cfg, bank, planted, min_cpu_s=0.5 if quick else 2.0)
            del bank
            if not quick:
                pan = prepare_input(folder, "pan", LIVE_CLIP_S)
                _log("throughput on a second content (textured slow pan)")
                pan_bank, pan_planted = make_bank(keyframe_hashes(pan, cfg), BANK_SIZE, seed=2)
                report["throughput_pan_content"] = bench_throughput(pan, cfg, pan_bank, pan_planted, min_cpu_s=2.0)
                del pan_bank
        if args.skip_live:
            report["live"] = {"skipped": "--skip-live"}
        else:
            from test_streams.infra import missing_tools

            missing_pkgs = missing_tools()
            if missing_pkgs:
                report["live"] = {"skipped": f"needs {' '.join(missing_pkgs)}"}
            else:
                clip = live_clip(folder, quick)
                report["live"] = {
                    "what": "`monitor run` (real YAML config, default sampling and matching, its worker processes) "
                            "over N RTMP streams through nginx-rtmp, ffmpeg -re -stream_loop -1 -c copy publishers "
                            "of a textured slow pan; CPU of each process tree from /proc/<pid>/stat",
                    "clip": {"file": clip.name, "media_s": round(media_duration(clip), 2),
                             "size_mb": round(clip.stat().st_size / 1e6, 2)},
                    **bench_live(n, seconds, clip, work, floor=not args.no_floor, keyframes=args.keyframes_monitor,
                                 chunk_size=args.chunk_size, compare_tree=args.compare_tree, perf=args.perf),
                }
        report["targets"] = _targets(report)
    except KeyboardInterrupt:
        _log("interrupted: helpers stopped")
        report["interrupted"] = True
        print(json.dumps(report, indent=2))
        return 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(work, ignore_errors=True)
    report["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["main"]
