"""`monitor eval`: the whole monitor against live test streams with ground truth, scored per transform.

    python -m monitor_tools.eval_live --out eval-out            # full: 4 streams x 5 min, every transform
    python -m monitor_tools.eval_live --quick --out eval-quick  # CI: 2 streams x 50 s, a few transforms

Several PyAV generators (test_streams.live, subprocesses) stream scene-cut backgrounds (test_streams.scenes) and
show known pictures at scheduled times, each under one named transform (test_streams.transforms); the monitor
pulls them, matches against a bank of the ORIGINAL pictures, and publishes alerts over MQTT; a separate subscriber
(paho, its own thread) records each alert and the wall time it arrived. With Mosquitto, nginx-rtmp and ffmpeg
installed (`test_streams.infra.missing_tools()` empty) the parts are real: Mosquitto, RTMP pushed into nginx-rtmp
and the monitor as its own process (`python -m monitor run`); otherwise embedded: amqtt in this process, the
Engine in this process, MPEG-TS over tcp (or HLS from a small HTTP server), as `monitor demo` does.

Scoring. An appearance is detected when an alert for its stream and one of its bank entries has `media_time_s`
within [start, end + one GOP]; an alert matching no appearance is a false alert. Latency from first appearance is
alert received (subscriber wall time) - the wall time the appearance's first frame was sent; from the keyframe,
alert received - the alert's `received_at` (when the monitor read the keyframe's packet). Afterwards the eval
encodes every stream again from its ground truth (x264 is deterministic), reads its keyframes with the monitor's
KeyframeReader and hashes them with the matcher's probes: the distance of each appearance to its own entry
(matches; checked against the distances in the alerts) and of every background keyframe to the bank
(non-matches). The false-alert estimate at 1M entries matches a few thousand background keyframes (the streamed
ones, and more through an H.264 intra round trip, across every kind of scene) against 1M uniform random PDQ codes
plus the known pictures.

Writes `report.md`, `results.json` and PNG plots into --out; the generators' plans, ground truths, the bank and
the logs into --out/work. Progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from monitor.common.errors import UserError
from monitor_tools.eval_images import scan_1m
from pipelines.fingerprint import DEFAULT_THRESHOLDS
from pipelines.hamming import CODE_BYTES, Codes, LinearIndex, hex_to_code
from pipelines.robust import SWITCH_NAMES, RobustOptions
from test_streams.live import (
    Appearance,
    entry_ids_by_key,
    hash_originals,
    original_file,
    original_key,
    write_bank,
)

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

REPO = Path(__file__).resolve().parent.parent
SAMPLES_PER_HOUR = 1800  # one sample every 2 s
BANK_SIZE = 1_000_000
PRECISION_TARGET = 0.9999
# The targets at the default configuration (precision >= 99.99%): transform -> minimum recall.
RECALL_TARGETS: dict[str, float] = {
    "reencode": 0.99, "downscale": 0.99, "gamma": 0.99, "watermark": 0.99,
    "letterbox": 0.95, "pillarbox": 0.95, "mirror": 0.95,
    "crop10": 0.70,
}
REPORTED_ONLY = ("pip",)
KEYFRAME_LATENCY_TARGET_S = 0.5  # p95, over RTMP
APPEARANCE_LATENCY_SLACK_S = 0.5  # p95 <= one GOP + this
FALSE_ALERT_HOURS_TARGET = 10.0  # 0 false alerts in at least this many stream-hours (1M bank, estimated)
QUICK_TRANSFORMS = ("none", "reencode", "mirror", "letterbox", "crop10")
LEAD_IN_S = {"tcp": 4.0, "rtmp": 10.0, "hls": 10.0}  # no appearance before the monitor is watching


# -- small helpers ---------------------------------------------------------------------------------------------


def _iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3), "max": round(float(a.max()), 3),
            "mean": round(float(a.mean()), 3)}


def wilson_low(k: int, n: int, z: float = 1.96) -> float | None:
    """Lower end of the 95% Wilson interval of a proportion k/n."""
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def binom_tail(n: int, t: int) -> float:
    """P(Binomial(n, 1/2) <= t): a random code within distance t of a given one."""
    return sum(math.comb(n, k) for k in range(t + 1)) / 2.0**n


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, label: str, total: float, out: TextIO | None = None, enabled: bool = True) -> None:
        self.label, self.total = label, max(total, 1e-9)
        self.out = out or sys.stderr
        self.enabled = enabled
        self.tty = self.out.isatty()
        self._last_decile = -1
        self._t0 = time.monotonic()

    def update(self, done: float, note: str = "") -> None:
        if not self.enabled:
            return
        frac = min(1.0, max(0.0, done / self.total))
        if self.tty:
            bar = "#" * int(frac * 30)
            self.out.write(f"\r{self.label:<10} [{bar:<30}] {100 * frac:5.1f}%  {note}\x1b[K")
            self.out.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.out.write(f"{self.label:<10} {100 * frac:5.1f}%  {note}\n")
                self.out.flush()

    def close(self, note: str = "") -> None:
        if not self.enabled:
            return
        self.update(self.total, note or f"done in {time.monotonic() - self._t0:.0f} s")
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _say(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[eval] {msg}", file=sys.stderr, flush=True)


# -- exact radius search at 1M codes ---------------------------------------------------------------------------


class RadiusFilter:
    """Exact count of codes within radius <= 31 of each query, fast at 1M codes.

    Pigeonhole: cut the 256 bits into 16 chunks of 16; two codes within distance 31 agree on some chunk to at most
    one bit (16 chunks with two differing bits each would make 32). So every code within 31 is among those whose
    chunk j equals the query's chunk j or one of its 16 one-bit flips, for some j: sorted chunk columns give those
    candidates, which are then verified on all 256 bits. Cross-checked against `LinearIndex` (tests and each run).
    """

    MASKS = np.array([0] + [1 << b for b in range(16)], dtype=np.uint16)

    def __init__(self, codes: Codes) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, CODE_BYTES)
        self.n = len(codes)
        self.codes64 = codes.view(np.uint64)
        chunks = codes.view(np.uint16)
        self.order = [np.argsort(chunks[:, j], kind="stable") for j in range(16)]
        self.sorted = [np.ascontiguousarray(chunks[self.order[j], j]) for j in range(16)]

    def count_within(self, queries: Codes, radius: int, batch: int = 512) -> npt.NDArray[np.int64]:
        if radius > 31:
            raise ValueError("RadiusFilter is exact up to radius 31")
        q = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, CODE_BYTES)
        counts = np.zeros(len(q), np.int64)
        for b0 in range(0, len(q), batch):
            counts[b0 : b0 + batch] = self._batch(q[b0 : b0 + batch], radius)
        return counts

    def _batch(self, q: Codes, radius: int) -> npt.NDArray[np.int64]:
        q16, q64 = q.view(np.uint16), q.view(np.uint64)
        nq, nk = len(q), len(self.MASKS)
        found: list[npt.NDArray[np.int64]] = []
        for j in range(16):
            keys = q16[:, j, None] ^ self.MASKS[None, :]
            lo = np.searchsorted(self.sorted[j], keys, "left").ravel()
            hi = np.searchsorted(self.sorted[j], keys, "right").ravel()
            lens = hi - lo
            total = int(lens.sum())
            if total == 0:
                continue
            probe = np.repeat(np.repeat(np.arange(nq, dtype=np.int64), nk), lens)
            offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
            rows = self.order[j][np.repeat(lo, lens) + offs].astype(np.int64)
            d = np.bitwise_count(self.codes64[rows] ^ q64[probe]).sum(axis=1)
            keep = d <= radius
            found.append(probe[keep] * self.n + rows[keep])
        if not found:
            return np.zeros(nq, np.int64)
        pairs = np.unique(np.concatenate(found))
        return np.bincount(pairs // self.n, minlength=nq).astype(np.int64)


def nearest_distances(bank: Codes, queries: Codes, chunk: int = 1 << 16) -> npt.NDArray[np.int32]:
    """Per query, the smallest distance to any code in the bank (the offline benchmark's full scan)."""
    nearest, _ = scan_1m(np.ascontiguousarray(bank, dtype=np.uint8).reshape(-1, CODE_BYTES),
                         np.ascontiguousarray(queries, dtype=np.uint8), 0, chunk)
    return np.asarray(nearest, dtype=np.int32)


# -- the plan --------------------------------------------------------------------------------------------------


@dataclass
class EvalOptions:
    out: Path
    quick: bool = False
    streams: int = 4
    duration_s: float = 300.0
    gop_s: float = 2.0
    fps: int = 25
    width: int = 640
    height: int = 360
    transforms: list[str] = field(default_factory=list)
    images_dir: Path | None = None
    config_path: Path | None = None
    infra: str = "auto"  # auto | real | embedded
    transport: str = "auto"  # auto | rtmp | tcp | hls
    seed: int = 1
    background_samples: int = 3000
    bank_size: int = BANK_SIZE
    nearest_probes: int = 256  # queries scanned fully against the 1M bank, for the distance histogram
    show_s: tuple[float, float] = (5.0, 8.0)
    gap_s: tuple[float, float] = (4.0, 9.0)
    progress: bool = True
    plots: bool = True
    bank_crops: bool = True  # the bank also holds crop windows of each picture (`monitor hash --crops`)


def user_pictures(folder: Path) -> list[Path]:
    from test_streams.live import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no image or video files (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                        f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    return files


def plan_streams(opts: EvalOptions, lead_in_s: float, pool: Sequence[Path] | None = None,
                 close_after_s: float = 120.0, quarantine_streams: int = 5,
                 quarantine_window_s: float = 300.0) -> tuple[list[list[Appearance]], int]:
    """Appearances per stream (seeded): shows of show_s seconds with gaps of gap_s, starting at random phases of
    the GOP, transforms spread evenly over all shows. Generated pictures are all different; with a pool of one's
    own files, a file is not shown again on a stream before its incident closed (close_after_s), nor on as many
    streams as would quarantine it; a show that cannot be given a file is dropped (counted in the result)."""
    rng = np.random.default_rng([opts.seed, 4242])
    slots: list[tuple[int, float, float]] = []
    for s in range(opts.streams):
        t = lead_in_s + float(rng.uniform(0, opts.gop_s))
        while True:
            length = float(rng.uniform(*opts.show_s))
            if t + length > opts.duration_s - 1.0:
                break
            slots.append((s, round(t, 3), round(t + length, 3)))
            t += length + float(rng.uniform(*opts.gap_s))
    names = list(opts.transforms)
    order = rng.permutation(len(slots))
    transforms = [""] * len(slots)
    for rank, i in enumerate(order):
        transforms[int(i)] = names[rank % len(names)]
    plans: list[list[Appearance]] = [[] for _ in range(opts.streams)]
    dropped = 0
    uses: dict[int, list[tuple[int, float, float]]] = {}  # pool index -> (stream, start, end)
    for k in sorted(range(len(slots)), key=lambda i: slots[i][1]):
        s, start, end = slots[k]
        tseed = 7919 * (k + 1) + opts.seed
        if pool is None:
            plans[s].append(Appearance(1000 + k + 1000 * opts.seed, start, end, transforms[k], tseed))
            continue
        best: int | None = None
        for i in sorted(range(len(pool)), key=lambda i: max((u[2] for u in uses.get(i, [])), default=-1e9)):
            past = uses.get(i, [])
            if any(u[0] == s and start - u[2] < close_after_s + 30 for u in past):
                continue
            recent = {u[0] for u in past if start - u[1] < quarantine_window_s} | {s}
            if len(recent) >= quarantine_streams:
                continue
            best = i
            break
        if best is None:
            dropped += 1
            continue
        uses.setdefault(best, []).append((s, start, end))
        plans[s].append(Appearance(-1, start, end, transforms[k], tseed, str(pool[best])))
    for p in plans:
        p.sort(key=lambda a: a.start_s)
    return plans, dropped


def _render_original(args: tuple[int, str]) -> str:
    seed, folder = args
    return str(original_file(Appearance(seed, 0.0, 1.0), Path(folder)))


@dataclass
class BankBuild:
    path: Path
    plans: list[list[Appearance]]  # with entry ids filled in (and low-quality generated pictures replaced)
    entries: list[dict[str, Any]]
    replaced_low_quality: int  # generated originals re-drawn: PDQ quality under the gate, never matchable
    low_quality_files: list[str]  # files of one's own under the gate (kept: the report names them)


def _render_all(seeds: Sequence[int], folder: Path, bar: Progress, done: int, total: int) -> int:
    workers = max(1, min(4, os.cpu_count() or 1, len(seeds)))
    args = [(s, str(folder)) for s in seeds]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_original, args):
                done += 1
                bar.update(done, f"{done}/{total} pictures")
    else:
        for a in args:
            _render_original(a)
            done += 1
            bar.update(done, f"{done}/{total} pictures")
    return done


def build_bank(plans: Sequence[Sequence[Appearance]], work: Path, progress: bool, min_quality: int = 50,
               attempts: int = 6, crops: bool = True) -> BankBuild:
    """Originals (generated ones as 1280x720 PNGs, as a platform would keep them) hashed into one CSV bank.

    A generated picture whose PDQ quality is under the matcher's gate can never match (the monitor skips such
    hashes): it is replaced by another seed, as the image benchmark does, and counted. Files of one's own are
    kept and named in the report."""
    folder = work / "originals"
    folder.mkdir(parents=True, exist_ok=True)
    current = [list(p) for p in plans]
    rows_by_key: dict[str, list[tuple[str, str, str, int]]] = {}
    replaced = 0
    n_generated = len({a.image for p in current for a in p if a.source is None})
    bar = Progress("originals", max(n_generated, 1), enabled=progress)
    done = 0
    for attempt in range(attempts):
        originals: dict[str, Path] = {}
        to_render: list[int] = []
        for plan in current:
            for a in plan:
                key = original_key(a)
                if key in originals:
                    continue
                originals[key] = Path(a.source) if a.source is not None else folder / f"known-{a.image}.png"
                if a.source is None and not originals[key].exists():
                    to_render.append(a.image)
        done = _render_all(to_render, folder, bar, done, max(n_generated, done + len(to_render)))
        for key, path in originals.items():
            if key not in rows_by_key:
                rows_by_key[key] = hash_originals([(key, path)], crops=crops)
        low = {key for key, rows in rows_by_key.items() if key in originals and key.startswith("known-")
               and max(q for _, _, _, q in rows) < min_quality}
        if not low or attempt == attempts - 1:
            break
        replaced += len(low)
        current = [[replace(a, image=a.image + 100_000) if original_key(a) in low else a for a in plan]
                   for plan in current]
    bar.close(f"{len(originals)} originals" + (f", {replaced} re-drawn (PDQ quality < {min_quality})"
                                                if replaced else ""))
    rows = [r for key in originals for r in rows_by_key[key]]
    bank = work / "bank.csv"
    write_bank(rows, bank)
    ids = entry_ids_by_key(rows)
    entries = [{"entry_id": eid, "label": label, "hash": h, "quality": q} for eid, label, h, q in rows]
    out = [[replace(a, entry_ids=ids.get(original_key(a), ())) for a in plan] for plan in current]
    low_files = sorted(str(originals[k]) for k, rs in rows_by_key.items()
                       if k in originals and not k.startswith("known-") and max(q for *_, q in rs) < min_quality)
    return BankBuild(bank, out, entries, replaced, low_files)


# -- infrastructure --------------------------------------------------------------------------------------------


class AlertSubscriber:
    """A real MQTT subscriber on its own network thread: every alert (deduplicated by alert_id) with the wall time
    it arrived, and the stream states."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.alerts: list[tuple[dict[str, Any], float]] = []
        self.states: dict[str, list[tuple[str, float]]] = {}
        self.details: dict[str, list[str]] = {}  # stream -> "state: detail" of every change but live
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._client: Any = None

    def start(self, timeout_s: float = 15.0) -> AlertSubscriber:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from monitor.contracts import topics

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"eval-{os.getpid()}-{time.time_ns()}")
        subscribed = threading.Event()

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            c.subscribe([(topics.all_alerts(self.prefix), 1), (topics.all_stream_states(self.prefix), 1)])

        client.on_connect = on_connect
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = self._on_message
        client.connect(self.host, self.port)
        client.loop_start()
        self._client = client
        if not subscribed.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"could not subscribe on {self.host}:{self.port}")
        return self

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        try:
            body = json.loads(msg.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not isinstance(body, dict):
            return
        with self._lock:
            if "/alerts/" in msg.topic:
                aid = str(body.get("alert_id"))
                if aid not in self._seen:
                    self._seen.add(aid)
                    self.alerts.append((body, now))
            elif "/streams/" in msg.topic and "state" in body:
                sid = str(body.get("stream_id"))
                self.states.setdefault(sid, []).append((str(body["state"]), now))
                if body["state"] != "live":
                    self.details.setdefault(sid, []).append(f"{body['state']}: {body.get('detail') or ''}")

    def snapshot(self) -> tuple[list[tuple[dict[str, Any], float]], dict[str, list[tuple[str, float]]]]:
        with self._lock:
            return list(self.alerts), {k: list(v) for k, v in self.states.items()}

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None


class HlsServer:
    """A tiny HTTP server for PyAV-written HLS folders (the embedded path; nginx serves them on the real one).

    Its own process (`python -m http.server`): served from a thread of this busy process (event loop, broker,
    engine), FFmpeg's HLS reader saw the live playlist end after every segment."""

    def __init__(self, root: Path) -> None:
        from test_streams.infra import free_port

        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HlsServer:
        from test_streams.infra import wait_port

        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", str(self.root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def close(self) -> None:
        from test_streams.infra import stop_process

        stop_process(self.proc)


@dataclass
class LiveRun:
    truths: dict[str, dict[str, Any]]
    alerts: list[tuple[dict[str, Any], float]]
    states: dict[str, list[tuple[str, float]]]
    details: dict[str, list[str]]
    infra: str
    transport: str
    monitor: str
    generator_rc: dict[str, int | None]
    run_s: float
    mcfg: Any  # MonitorConfig
    streams_ended_at: float  # wall time the generators had all finished


def monitor_config_data(base: dict[str, Any], *, broker_url: str, prefix: str, streams: list[dict[str, str]],
                        bank: Path, state_dir: Path) -> dict[str, Any]:
    """The eval's monitor config: the user's (matching, sampling, incidents, ingest, workers...) with the eval's
    broker, streams, bank and state; hooks, metrics and server control off (nothing else listens)."""
    data = {k: v for k, v in base.items() if k not in ("streams", "banks", "servers", "hooks", "metrics")}
    broker = {"url": broker_url, "topic_prefix": prefix}
    data["broker"] = broker
    data["node"] = "eval"
    data["streams"] = streams
    data["banks"] = [{"name": "eval-known", "path": str(bank)}]
    data["state_dir"] = str(state_dir)
    ingest = dict(base.get("ingest") or {})
    ingest.setdefault("backoff_initial_s", 0.2)  # the eval's streams exist from the start: reconnect fast
    ingest.setdefault("backoff_max_s", 1.0)
    data["ingest"] = ingest
    data.setdefault("log_level", "warning")
    return data


def _generator_cmd(output: str, plan: Path, truth: Path, opts: EvalOptions, seed: int) -> list[str]:
    return [sys.executable, "-m", "test_streams.live", output, "--plan", str(plan), "--truth", str(truth),
            "--duration", f"{opts.duration_s:g}", "--seed", str(seed), "--gop", f"{opts.gop_s:g}",
            "--fps", str(opts.fps), "--width", str(opts.width), "--height", str(opts.height), "--scenes"]


def _cwd() -> str | None:
    return str(REPO) if (REPO / "pyproject.toml").exists() else None


async def run_live(opts: EvalOptions, plans: Sequence[Sequence[Appearance]], bank: Path, work: Path,
                   base_cfg: dict[str, Any], infra: str, transport: str) -> LiveRun:
    from monitor.config.models import build_config
    from test_streams.infra import Mosquitto, NginxRtmp, free_port, stop_process

    prefix = "eval"
    sids = [f"eval-{i + 1}" for i in range(opts.streams)]
    for sid, plan in zip(sids, plans, strict=True):
        (work / f"plan-{sid}.json").write_text(json.dumps({"shows": [a.to_json() for a in plan]}, indent=1))
    async with contextlib.AsyncExitStack() as stack:
        mosq: Mosquitto | None = None
        nginx: NginxRtmp | None = None
        broker_url: str
        if infra == "real":
            mosq = Mosquitto().start()
            stack.callback(mosq.close)
            broker_url = mosq.url
            if transport in ("rtmp", "hls"):
                nginx = NginxRtmp(hls_fragment_s=max(1, round(opts.gop_s))).start()
                stack.callback(nginx.close)
        else:
            from test_streams.broker import EmbeddedBroker

            broker = await stack.enter_async_context(EmbeddedBroker())
            broker_url = broker.url
        hls_server: HlsServer | None = None
        if transport == "hls" and nginx is None:
            (work / "hls").mkdir(exist_ok=True)
            hls_server = HlsServer(work / "hls").start()
            stack.callback(hls_server.close)
        outputs: dict[str, str] = {}
        urls: dict[str, str] = {}
        for sid in sids:
            if transport == "tcp":
                port = free_port()
                outputs[sid] = f"tcp://127.0.0.1:{port}?listen=1"
                urls[sid] = f"tcp://127.0.0.1:{port}"
            elif nginx is not None:
                outputs[sid] = nginx.rtmp_url(sid)
                urls[sid] = nginx.rtmp_url(sid) if transport == "rtmp" else nginx.hls_url(sid)
            else:
                assert hls_server is not None
                outputs[sid] = str(work / "hls" / sid / "index.m3u8")
                urls[sid] = f"http://127.0.0.1:{hls_server.port}/{sid}/index.m3u8"
        data = monitor_config_data(base_cfg, broker_url=broker_url, prefix=prefix,
                                   streams=[{"id": sid, "url": urls[sid]} for sid in sids], bank=bank,
                                   state_dir=work / "state")
        mcfg = build_config(data, "eval monitor config")
        sub = AlertSubscriber("127.0.0.1", mcfg.broker.port, prefix)
        await asyncio.to_thread(sub.start)
        stack.callback(sub.stop)
        gens: dict[str, subprocess.Popen[bytes]] = {}

        def kill_generators() -> None:
            for g in gens.values():
                stop_process(g)

        stack.callback(kill_generators)
        for i, sid in enumerate(sids):
            with open(work / f"generator-{sid}.log", "wb") as glog:
                gens[sid] = subprocess.Popen(
                    _generator_cmd(outputs[sid], work / f"plan-{sid}.json", work / f"truth-{sid}.json", opts,
                                   opts.seed * 100 + i + 1),
                    stdout=subprocess.DEVNULL, stderr=glog, cwd=_cwd())
        t_start = time.monotonic()
        monitor_kind: str
        stop = asyncio.Event()
        engine_task: asyncio.Task[None] | None = None
        mon_proc: subprocess.Popen[bytes] | None = None
        if infra == "real":
            import yaml

            monitor_kind = "process (python -m monitor run)"
            cfg_path = work / "monitor.yaml"
            cfg_path.write_text(yaml.safe_dump(data))
            with open(work / "monitor.log", "wb") as mlog:
                mon_proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg_path)],
                                            stdout=mlog, stderr=subprocess.STDOUT, cwd=_cwd())
        else:
            from monitor.app.engine import Engine, load_banks

            monitor_kind = "in-process Engine"
            mon_logger = logging.getLogger("monitor")
            old_level = mon_logger.level
            mon_logger.setLevel(logging.ERROR)  # worker processes take this level too: keep stderr for the bar
            stack.callback(mon_logger.setLevel, old_level)
            engine = Engine(mcfg, load_banks(mcfg))
            engine_task = asyncio.create_task(engine.run(stop))
        bar = Progress("streams", opts.duration_s, enabled=opts.progress)
        deadline = opts.duration_s + 90.0
        while any(g.poll() is None for g in gens.values()):
            elapsed = time.monotonic() - t_start
            alerts, states = sub.snapshot()
            live = sum(1 for s in sids if states.get(s) and states[s][-1][0] == "live")
            bar.update(elapsed, f"{min(elapsed, opts.duration_s):.0f}/{opts.duration_s:.0f} s, "
                                f"{live}/{len(sids)} live, {len(alerts)} alerts")
            if engine_task is not None and engine_task.done():
                break
            if mon_proc is not None and mon_proc.poll() is not None:
                break
            if elapsed > deadline:
                break
            await asyncio.sleep(0.5)
        bar.close()
        streams_ended_at = time.time()
        # The last keyframes are still on their way (HLS: a segment or two behind).
        await asyncio.sleep(3.0 + (3 * opts.gop_s if transport == "hls" else 0.0))
        run_s = time.monotonic() - t_start
        kill_generators()
        if engine_task is not None:
            stop.set()
            await engine_task
        if mon_proc is not None:
            await asyncio.to_thread(stop_process, mon_proc, 30)
            if mon_proc.returncode not in (0, None):
                _say(f"the monitor exited with {mon_proc.returncode}; see {work / 'monitor.log'}", opts.progress)
        await asyncio.sleep(0.5)
        alerts, states = sub.snapshot()
        truths: dict[str, dict[str, Any]] = {}
        for sid in sids:
            path = work / f"truth-{sid}.json"
            if path.exists():
                truths[sid] = json.loads(path.read_text())
            else:
                _say(f"generator {sid} wrote no ground truth (exit {gens[sid].returncode}); "
                     f"see {work / f'generator-{sid}.log'}", opts.progress)
        rcs = {sid: g.returncode for sid, g in gens.items()}
    return LiveRun(truths, alerts, states, dict(sub.details), infra, transport, monitor_kind, rcs, run_s, mcfg,
                   streams_ended_at)


# -- scoring ---------------------------------------------------------------------------------------------------


def score(truths: dict[str, dict[str, Any]], alerts: Sequence[tuple[dict[str, Any], float]],
          states: dict[str, list[tuple[str, float]]] | None = None, *, strong_distance: int = 16,
          stream_hours: float | None = None) -> dict[str, Any]:
    """Appearances detected, latencies and false alerts (pure: ground truths and received alerts in)."""
    states = states or {}
    records: list[dict[str, Any]] = []
    matched: set[str] = set()
    for sid, truth in sorted(truths.items()):
        gop = float(truth["gop_s"])
        live_at = next((at for st, at in states.get(sid, []) if st == "live"), None)
        for k, a in enumerate(truth["appearances"]):
            ids = set(a.get("entry_ids") or [])
            hits = [(x, r) for x, r in alerts if x.get("stream_id") == sid and str(x.get("entry_id")) in ids
                    and a["start_s"] - 0.05 <= float(x["media_time_s"]) <= a["end_s"] + gop]
            keys = a.get("keyframes") or []
            last_key_wall = max((kf["wall"] for kf in keys if kf.get("wall") is not None), default=None)
            watched = not (live_at is not None and last_key_wall is not None and last_key_wall < live_at - 1.0)
            rec: dict[str, Any] = {
                "stream_id": sid, "index": k, "transform": a.get("transform", "none"),
                "source": a.get("source"), "image": a.get("image"), "entry_ids": sorted(ids),
                "start_s": a["start_s"], "end_s": a["end_s"], "keyframes": [kf["t"] for kf in keys],
                "watched": watched, "detected": bool(hits),
            }
            if hits:
                first, recv = min(hits, key=lambda h: h[1])
                matched.update(str(x["alert_id"]) for x, _ in hits)
                wall_start = a.get("wall_start")
                kt = float(first["media_time_s"])
                rec.update({
                    "alert_media_time_s": kt,
                    "keyframe_index": next((i for i, t in enumerate(rec["keyframes"]) if abs(t - kt) < 0.02), None),
                    "distance": first.get("distance"),
                    "strong": first.get("distance") is not None and int(first["distance"]) <= strong_distance,
                    "latency_from_appearance_s": (round(recv - float(wall_start), 3)
                                                  if wall_start is not None else None),
                    "latency_from_keyframe_s": round(recv - _iso(str(first["received_at"])), 3),
                    "alerts": len(hits),
                })
            records.append(rec)
    false = [x for x, _ in alerts if str(x.get("alert_id")) not in matched]
    if stream_hours is None:
        stream_hours = sum(float(t["duration_s"]) for t in truths.values()) / 3600
    scored = [r for r in records if r["watched"]]
    per_transform: dict[str, dict[str, Any]] = {}
    for r in scored:
        pt = per_transform.setdefault(r["transform"], {"n": 0, "detected": 0, "lat_a": [], "lat_k": []})
        pt["n"] += 1
        if r["detected"]:
            pt["detected"] += 1
            if r.get("latency_from_appearance_s") is not None:
                pt["lat_a"].append(r["latency_from_appearance_s"])
            pt["lat_k"].append(r["latency_from_keyframe_s"])
    transforms_out: dict[str, dict[str, Any]] = {}
    for name, pt in sorted(per_transform.items()):
        n, d = pt["n"], pt["detected"]
        transforms_out[name] = {
            "appearances": n, "detected": d, "recall": round(d / n, 4) if n else None,
            "recall_ci95_low": None if n == 0 else round(wilson_low(d, n) or 0.0, 4),
            "target": RECALL_TARGETS.get(name),
            "latency_from_appearance_s": percentiles(pt["lat_a"]),
            "latency_from_keyframe_s": percentiles(pt["lat_k"]),
        }
    detected = [r for r in scored if r["detected"]]
    lat_a = [r["latency_from_appearance_s"] for r in detected if r.get("latency_from_appearance_s") is not None]
    lat_k = [r["latency_from_keyframe_s"] for r in detected]
    true_alerts = len(alerts) - len(false)
    return {
        "appearances": records,
        "per_transform": transforms_out,
        "totals": {"appearances": len(scored), "detected": len(detected),
                   "not_watched": len(records) - len(scored),
                   "recall": round(len(detected) / len(scored), 4) if scored else None},
        "alerts": {"total": len(alerts), "true": true_alerts, "false": len(false),
                   "precision": round(true_alerts / len(alerts), 6) if alerts else None,
                   "stream_hours": round(stream_hours, 4),
                   "false_per_stream_hour": round(len(false) / stream_hours, 3) if stream_hours else None,
                   "false_alerts": [{k: x.get(k) for k in ("stream_id", "entry_id", "media_time_s", "distance")}
                                    for x in false]},
        "latency": {
            "from_appearance_s": percentiles(lat_a),
            "from_keyframe_s": percentiles(lat_k),
            "from_appearance_strong_s": percentiles([r["latency_from_appearance_s"] for r in detected
                                                     if r.get("strong") and r.get("latency_from_appearance_s")
                                                     is not None]),
            "from_appearance_weak_s": percentiles([r["latency_from_appearance_s"] for r in detected
                                                   if not r.get("strong") and r.get("latency_from_appearance_s")
                                                   is not None]),
            "alerting_keyframe": {str(i): sum(1 for r in detected if r.get("keyframe_index") == i)
                                  for i in sorted({int(r["keyframe_index"]) for r in detected
                                                   if r.get("keyframe_index") is not None})},
        },
    }


# -- offline hashing: match and non-match distances, the 1M estimate ------------------------------------------


def matcher_options(mcfg: Any) -> tuple[RobustOptions, int, int]:
    """The matcher's robustness switches (from `matching:` when the config has them), minimum quality, and the
    bank threshold the eval's bank gets."""
    default = RobustOptions()
    matching = mcfg.matching
    opts = RobustOptions(**{n: bool(getattr(matching, n, getattr(default, n))) for n in SWITCH_NAMES})
    threshold = next((b.threshold for b in mcfg.banks if b.threshold is not None), None)
    return opts, int(matching.min_quality), int(threshold if threshold is not None else DEFAULT_THRESHOLDS["pdq"])


def h264_roundtrip(frames: Sequence[Image], scale_width: int, fps: int = 25) -> list[Image]:
    """Each frame through an H.264 intra frame (the generators' encoder settings) and the ingest's scaling."""
    import av

    from monitor.ingest.reader import scaled_size

    if not frames:
        return []
    h, w = frames[0].shape[:2]
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    from fractions import Fraction

    enc.time_base = Fraction(1, fps)
    enc.gop_size = 1
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
    dec = av.CodecContext.create("h264", "r")
    out: list[Image] = []
    sw, sh = scaled_size(w, h, scale_width)

    def take(packets: Any) -> None:
        for p in packets:
            for f in dec.decode(p):
                out.append(np.asarray(f.to_ndarray(format="rgb24", width=sw, height=sh), dtype=np.uint8))

    for i, img in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        vf.pts = i
        take(enc.encode(vf))
    take(enc.encode(None))
    for f in dec.decode(None):
        out.append(np.asarray(f.to_ndarray(format="rgb24", width=sw, height=sh), dtype=np.uint8))
    return out


def probe_codes(rgb: Image, options: RobustOptions, min_quality: int) -> tuple[Codes, Codes | None]:
    """(usable probe codes, plain full-frame code or None when under the quality gate)."""
    from pipelines.robust import compute_probes

    probes = compute_probes(rgb, options)
    usable = [p.codes["pdq"] for p in probes if p.quality >= min_quality]
    plain = probes[0].codes["pdq"] if probes and probes[0].quality >= min_quality else None
    codes = np.stack(usable) if usable else np.empty((0, CODE_BYTES), np.uint8)
    return codes, plain


def _dist(codes: Codes, bank: Codes) -> npt.NDArray[np.int32]:
    """(len(codes), len(bank)) distances."""
    a = np.ascontiguousarray(codes).reshape(-1, CODE_BYTES).view(np.uint64)
    b = np.ascontiguousarray(bank).reshape(-1, CODE_BYTES).view(np.uint64)
    out: npt.NDArray[np.int32] = np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int32)
    return out


@dataclass(frozen=True)
class _RehashJob:
    sid: str
    truth: dict[str, Any]
    entries: list[tuple[str, str]]  # (entry id, hex)
    options: RobustOptions
    min_quality: int
    ingest: dict[str, Any]
    folder: str


def _rehash_stream(job: _RehashJob) -> dict[str, Any]:
    """Encode the stream again from its ground truth (same pictures, scenes, encoder settings: x264 output is
    deterministic) into a file, read its keyframes with the monitor's own KeyframeReader, and hash each with the
    matcher's probes: the frames the monitor saw, without the network."""
    import threading as _threading

    from monitor.config.models import IngestConfig
    from monitor.ingest.reader import KeyframeReader
    from test_streams.scenes import Scene, SceneBackground

    truth = job.truth
    apps = [Appearance.from_json(a) for a in truth["appearances"]]
    scenes = [Scene.from_json(x) for x in truth.get("scenes", [])]
    path = Path(job.folder) / f"rehash-{job.sid}.ts"
    generate_kw: dict[str, Any] = {"width": int(truth["width"]), "height": int(truth["height"]),
                                   "fps": int(truth["fps"]), "gop_s": float(truth["gop_s"]),
                                   "duration_s": float(truth["duration_s"]), "seed": int(truth.get("seed", 1))}
    from test_streams.live import generate

    generate(str(path), shows=apps, realtime=False, scenes=scenes or True, **generate_kw)
    bg = SceneBackground(generate_kw["seed"], generate_kw["width"], generate_kw["height"],
                         generate_kw["duration_s"], scenes or None)
    ids = [e for e, _ in job.entries]
    bank = np.stack([hex_to_code(h) for _, h in job.entries])
    rows_of: dict[str, list[int]] = {}  # an entry's rows: a picture and its crop windows share the id
    for i, e in enumerate(ids):
        rows_of.setdefault(e, []).append(i)
    keys: list[dict[str, Any]] = []
    bg_codes: list[Codes] = []
    bg_kinds: list[str] = []
    reader = KeyframeReader(str(path), IngestConfig.model_validate(job.ingest), _threading.Event())
    try:
        for frame in reader.frames():
            t = frame.media_time_s
            codes, plain = probe_codes(frame.rgb, job.options, job.min_quality)
            k_on = next((k for k, a in enumerate(apps) if a.start_s <= t < a.end_s), None)
            dm = _dist(codes, bank) if len(codes) else np.full((1, len(bank)), 256, np.int32)
            rec: dict[str, Any] = {"t": round(t, 3), "owner": k_on, "nearest": int(dm.min())}
            if k_on is None:
                bg_codes.append(codes)
                bg_kinds.append(bg.scene_at(t).kind)
            else:
                own = [i for e in apps[k_on].entry_ids for i in rows_of.get(e, ())]
                mine = set(own)
                others = [i for i in range(len(ids)) if i not in mine]
                rec["own"] = int(dm[:, own].min()) if own else 256
                rec["other"] = int(dm[:, others].min()) if others else 256
                rec["plain"] = (int(_dist(plain[None, :], bank[own]).min()) if plain is not None and own else 256)
            keys.append(rec)
    finally:
        path.unlink(missing_ok=True)
    return {"sid": job.sid, "keyframes": keys, "bg_codes": bg_codes, "bg_kinds": bg_kinds}


def offline_distances(run_truths: dict[str, dict[str, Any]], entries: list[dict[str, Any]], mcfg: Any,
                      opts: EvalOptions, work: Path) -> dict[str, Any]:
    """Every keyframe of every stream as the monitor saw it (`_rehash_stream`, streams in parallel): the distance
    of each appearance to its own entries per carrying keyframe (best over the matcher's probes), plain PDQ, the
    nearest other entry; each background keyframe's probe codes (for the 1M scan) and nearest distance."""
    options, min_q, threshold = matcher_options(mcfg)
    jobs = [_RehashJob(sid, truth, [(e["entry_id"], e["hash"]) for e in entries], options, min_q,
                       mcfg.ingest.model_dump(), str(work)) for sid, truth in sorted(run_truths.items())]
    bar = Progress("re-hash", max(len(jobs), 1), enabled=opts.progress)
    results: list[dict[str, Any]] = []
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(_rehash_stream, jobs):
                results.append(r)
                bar.update(len(results), f"{len(results)}/{len(jobs)} streams encoded again and re-hashed")
    else:
        for job in jobs:
            results.append(_rehash_stream(job))
            bar.update(len(results), f"{len(results)}/{len(jobs)} streams encoded again and re-hashed")
    bar.close(f"{sum(len(r['keyframes']) for r in results)} stream keyframes re-hashed")
    per_app: dict[tuple[str, int], dict[str, Any]] = {}
    bg_codes: list[Codes] = []
    bg_kinds: list[str] = []
    bg_nearest: list[int] = []
    for r in results:
        bg_codes += r["bg_codes"]
        bg_kinds += r["bg_kinds"]
        for k in r["keyframes"]:
            if k["owner"] is None:
                bg_nearest.append(k["nearest"])
                continue
            rec = per_app.setdefault((r["sid"], k["owner"]), {"keyframe_distances": [], "plain_distances": [],
                                                              "keyframe_times": [], "nearest_other": 256})
            rec["keyframe_times"].append(k["t"])
            rec["keyframe_distances"].append(k["own"])
            rec["plain_distances"].append(k["plain"])
            rec["nearest_other"] = min(rec["nearest_other"], k["other"])
    return {"per_appearance": per_app, "background_nearest": bg_nearest, "background_codes": bg_codes,
            "background_kinds": bg_kinds, "threshold": threshold, "min_quality": min_q,
            "options": options.label()}


def extra_background_codes(n: int, opts: EvalOptions, mcfg: Any) -> tuple[list[Codes], list[str]]:
    """Probe codes of n more background keyframes (new seeds, every kind of scene, one keyframe per GOP)."""
    from test_streams.scenes import SceneBackground

    options, min_q, _ = matcher_options(mcfg)
    per_stream = 100
    codes: list[Codes] = []
    kinds: list[str] = []
    bar = Progress("background", max(n, 1), enabled=opts.progress)
    j = 0
    while len(codes) < n:
        m = min(per_stream, n - len(codes))
        bg = SceneBackground(50_000 + 97 * j + opts.seed, opts.width, opts.height, m * opts.gop_s + 1)
        times = [i * opts.gop_s for i in range(m)]
        frames = h264_roundtrip([bg.frame(t) for t in times], int(mcfg.ingest.scale_width), opts.fps)
        for t, rgb in zip(times, frames, strict=True):
            c, _ = probe_codes(rgb, options, min_q)
            codes.append(c)
            kinds.append(bg.scene_at(t).kind)
        j += 1
        bar.update(len(codes), f"{len(codes)}/{n} extra background keyframes")
    bar.close(f"{len(codes)} extra background keyframes")
    return codes, kinds


def false_match_estimate(sample_codes: Sequence[Codes], known: Codes, threshold: int,
                         opts: EvalOptions) -> dict[str, Any]:
    """Background samples (each a list of probe codes) against `bank_size` uniform random codes plus the known
    pictures: observed matches, the rule-of-three bound when none, and a model estimate: the exact binomial tail
    for the random codes plus, for the known pictures, a normal fitted to the lower tail (median and 1st
    percentile) of the samples' nearest distances. Expected false alerts per stream-hour at one sample / 2 s; a
    weak match needs a second one within 3 samples to alert, so counting every match over-estimates."""
    rng = np.random.default_rng([opts.seed, 1_000_003])
    size = opts.bank_size
    bank = rng.integers(0, 256, (size, CODE_BYTES), dtype=np.uint8)
    _say(f"1M estimate: indexing {size:,} random codes", opts.progress)
    t0 = time.perf_counter()
    filt = RadiusFilter(bank)
    build_s = time.perf_counter() - t0
    lens = [len(c) for c in sample_codes]
    queries = np.concatenate([c for c in sample_codes if len(c)]) if any(lens) else np.empty((0, CODE_BYTES),
                                                                                            np.uint8)
    t0 = time.perf_counter()
    within = filt.count_within(queries, threshold) if len(queries) else np.zeros(0, np.int64)
    search_s = time.perf_counter() - t0
    # cross-check the filter against the reference index on a few probes, one of them planted within reach
    index = LinearIndex(bank, np.arange(size, dtype=np.int64))
    check_q = queries[: min(3, len(queries))]
    for i, q in enumerate(check_q):
        ids, _ = index.search(q, threshold)
        if len(ids) != int(within[i]):
            raise AssertionError("RadiusFilter disagrees with LinearIndex")
    nq = min(opts.nearest_probes, len(queries))
    sel = rng.choice(len(queries), nq, replace=False) if nq else np.empty(0, np.int64)
    t0 = time.perf_counter()
    nearest_random = nearest_distances(bank, queries[sel]) if nq else np.empty(0, np.int32)
    scan_ms = 1000 * (time.perf_counter() - t0) / max(nq, 1)
    del filt, bank, index
    known_d = _dist(queries, known).min(axis=1) if len(queries) and len(known) else np.full(len(queries), 256)
    per_sample_hits = []
    per_sample_known: list[int] = []  # nearest distance of each sample (its best probe) to the known pictures
    pos = 0
    for n in lens:
        w = within[pos : pos + n]
        kd = known_d[pos : pos + n]
        per_sample_hits.append(bool((w > 0).any() or (kd <= threshold).any()))
        per_sample_known.append(int(kd.min()) if n else 256)
        pos += n
    usable = np.asarray([d for d in per_sample_known if d < 256], np.float64)
    if len(usable) >= 20:
        med, q01 = float(np.median(usable)), float(np.percentile(usable, 1))
        sigma = max(1.0, (med - q01) / 2.326)
        p_known = 0.5 * math.erfc(-((threshold + 0.5 - med) / sigma) / math.sqrt(2))
    else:
        med = q01 = sigma = p_known = math.nan
    n_samples = len(sample_codes)
    hits = sum(per_sample_hits)
    rate = hits / n_samples if n_samples else None
    probes_per_sample = float(np.mean(lens)) if lens else 0.0
    p_uniform = binom_tail(256, threshold)
    upper = 3.0 / n_samples if n_samples and hits == 0 else None
    hours_needed = FALSE_ALERT_HOURS_TARGET
    uniform_per_hour = SAMPLES_PER_HOUR * size * probes_per_sample * p_uniform
    known_per_hour = SAMPLES_PER_HOUR * p_known
    estimate = uniform_per_hour + (0.0 if math.isnan(known_per_hour) else known_per_hour)
    return {
        "bank_size": size, "known_entries": len(known), "threshold": threshold,
        "samples": n_samples, "probes": len(queries), "probes_per_sample": round(probes_per_sample, 2),
        "samples_with_match": hits, "per_sample_rate": rate,
        "samples_per_stream_hour": SAMPLES_PER_HOUR,
        "stream_hours_covered": round(n_samples / SAMPLES_PER_HOUR, 3),
        "expected_false_alerts_per_stream_hour": None if rate is None else rate * SAMPLES_PER_HOUR,
        "rule_of_three_per_sample": upper,
        "rule_of_three_per_stream_hour": None if upper is None else upper * SAMPLES_PER_HOUR,
        "rule_of_three_in_10_stream_hours": None if upper is None else upper * SAMPLES_PER_HOUR * hours_needed,
        "samples_needed_for_10h_bound": math.ceil(3 * SAMPLES_PER_HOUR * hours_needed),
        "uniform_p_per_comparison": p_uniform,
        "uniform_expected_per_stream_hour": uniform_per_hour,
        "known_tail_fit": {"median": med, "p01": q01, "sigma": round(sigma, 2), "p_per_sample": p_known,
                           "per_stream_hour": known_per_hour},
        "estimated_false_alerts_per_stream_hour": estimate,
        "estimated_false_alerts_in_10_stream_hours": estimate * FALSE_ALERT_HOURS_TARGET,
        "nearest_known_per_sample": per_sample_known,
        "nearest_known_min": int(known_d.min()) if len(known_d) else None,
        "nearest_known_median": float(np.median(known_d)) if len(known_d) else None,
        "nearest_random_min": int(nearest_random.min()) if len(nearest_random) else None,
        "nearest_random_median": float(np.median(nearest_random)) if len(nearest_random) else None,
        "nearest_random_sample": [int(v) for v in nearest_random],
        "timing": {"index_build_s": round(build_s, 2), "radius_search_ms_per_probe":
                   round(1000 * search_s / max(len(queries), 1), 4), "full_scan_ms_per_probe": round(scan_ms, 2)},
    }


# -- report ----------------------------------------------------------------------------------------------------


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _g(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it is met (observed) at this run's sample size."""
    out: list[dict[str, Any]] = []
    pt = doc["per_transform"]
    for name, target in RECALL_TARGETS.items():
        t = pt.get(name)
        if t is None:
            out.append({"target": f"recall {name} >= {100 * target:.0f}%", "measured": "not in this run",
                        "met": None})
            continue
        out.append({"target": f"recall {name} >= {100 * target:.0f}%",
                    "measured": f"{t['detected']}/{t['appearances']} = {_pct(t['recall'])} "
                                f"(95% CI low {_pct(t['recall_ci95_low'])})",
                    "met": t["recall"] is not None and t["recall"] >= target})
    for name in REPORTED_ONLY:
        t = pt.get(name)
        out.append({"target": f"recall {name} (reported)",
                    "measured": "not in this run" if t is None else
                    f"{t['detected']}/{t['appearances']} = {_pct(t['recall'])}", "met": None})
    al = doc["alerts"]
    prec = al["precision"]
    out.append({"target": "precision >= 99.99%",
                "measured": f"{al['true']}/{al['total']} alerts true" + (f" = {_pct(prec)}" if prec is not None
                                                                         else ""),
                "met": None if prec is None else prec >= PRECISION_TARGET})
    fm = doc.get("false_match_1m")
    if fm:
        hours = fm["stream_hours_covered"]
        expected10 = fm["estimated_false_alerts_in_10_stream_hours"]
        # met: nothing observed (live and offline), and the estimate gives P(0 false alerts in 10 h) >= 95%
        met = (fm["samples_with_match"] == 0 and al["false"] == 0 and expected10 < 0.05
               and fm["bank_size"] >= BANK_SIZE)
        bound = fm["rule_of_three_in_10_stream_hours"]
        out.append({"target": "0 false alerts in >= 10 stream-hours, 1M bank (estimated)",
                    "measured": f"estimated {expected10:.2g} in 10 stream-hours; observed "
                                f"{fm['samples_with_match']} matches in {fm['samples']:,} background samples "
                                f"({hours:.2f} stream-hours) against {fm['bank_size']:,} random codes + "
                                f"{fm['known_entries']} known, live {al['false']} false in "
                                f"{al['stream_hours']:.2f} stream-hours; direct 95% bound in 10 h: {_fmt(bound)} "
                                f"(a direct bound below 1 needs {fm['samples_needed_for_10h_bound']:,} samples)",
                    "met": met if fm["bank_size"] >= BANK_SIZE else None})
    lat = doc["latency"]
    pk = lat["from_keyframe_s"]["p95"]
    rtmp = doc["setup"]["transport"] == "rtmp"
    out.append({"target": "latency from carrying keyframe p95 <= 0.5 s (RTMP)",
                "measured": f"p95 {_fmt(pk)} s, max {_fmt(lat['from_keyframe_s']['max'])} s over "
                            f"{doc['setup']['transport']}",
                "met": None if pk is None else (pk <= KEYFRAME_LATENCY_TARGET_S if rtmp else None)})
    pa = lat["from_appearance_s"]["p95"]
    limit = doc["setup"]["gop_s"] + APPEARANCE_LATENCY_SLACK_S
    out.append({"target": f"latency from first appearance <= one GOP + 0.5 s ({limit:g} s, p95)",
                "measured": f"p95 {_fmt(pa)} s, max {_fmt(lat['from_appearance_s']['max'])} s",
                "met": None if pa is None else pa <= limit})
    return out


def make_plots(doc: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files: list[str] = []
    apps = [a for a in doc["appearances"] if a["watched"] and a["detected"]]
    gop = doc["setup"]["gop_s"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    la = [a["latency_from_appearance_s"] for a in apps if a.get("latency_from_appearance_s") is not None]
    lk = [a["latency_from_keyframe_s"] for a in apps]
    axes[0].hist(la, bins=30, color="#4477aa")
    axes[0].axvline(gop + APPEARANCE_LATENCY_SLACK_S, color="red", ls="--", label=f"target {gop + 0.5:g} s")
    axes[0].set_title("from first appearance")
    axes[0].set_xlabel("seconds")
    axes[0].legend()
    axes[1].hist(lk, bins=30, color="#228833")
    axes[1].axvline(KEYFRAME_LATENCY_TARGET_S, color="red", ls="--", label="target 0.5 s")
    axes[1].set_title("from the carrying keyframe")
    axes[1].set_xlabel("seconds")
    axes[1].legend()
    fig.suptitle("Detection latency (alert received by the subscriber)")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)
    files.append("latency.png")

    pt = doc["per_transform"]
    names = sorted(pt, key=lambda n: (-(pt[n]["recall"] or 0), n))
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.bar(names, [100 * (pt[n]["recall"] or 0) for n in names], color="#66ccee")
    for i, n in enumerate(names):
        tgt = RECALL_TARGETS.get(n)
        if tgt is not None:
            ax.plot([i - 0.4, i + 0.4], [100 * tgt] * 2, color="red")
        ax.text(i, 2, f"{pt[n]['detected']}/{pt[n]['appearances']}", ha="center", fontsize=8)
    ax.set_ylabel("recall %")
    ax.set_ylim(0, 105)
    ax.set_title("Recall per transform (red: target)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out / "recall.png", dpi=90)
    plt.close(fig)
    files.append("recall.png")

    dist = doc["distances"]
    fig, ax = plt.subplots(figsize=(11, 3.8))
    bins = list(range(0, 258, 4))
    match = [d for d in dist["matches"] if d < 256]
    ax.hist(match, bins=bins, alpha=0.7, label=f"appearance keyframes vs own entry ({len(match)})",
            color="#228833")
    ax.hist([d for d in dist["non_matches"] if d < 256], bins=bins, alpha=0.6,
            label=f"background keyframes vs the known pictures ({len(dist['non_matches'])})", color="#ee6677")
    if dist.get("random_1m"):
        ax.hist(dist["random_1m"], bins=bins, alpha=0.5, label=f"background probes vs {dist['random_size']:,} "
                f"random codes ({len(dist['random_1m'])})", color="#aa3377")
    ax.axvline(dist["threshold"], color="black", ls="--", label=f"threshold {dist['threshold']}")
    ax.axvline(dist["strong"], color="grey", ls=":", label=f"strong {dist['strong']}")
    ax.set_xlabel("PDQ distance (smallest over the matcher's probes)")
    ax.set_ylabel("keyframes")
    ax.legend(fontsize=8)
    ax.set_title("Distances of matches and non-matches")
    fig.tight_layout()
    fig.savefig(out / "distances.png", dpi=90)
    plt.close(fig)
    files.append("distances.png")
    return files


def markdown(doc: dict[str, Any], plots: Sequence[str]) -> str:
    s = doc["setup"]
    lines = [
        "# Live evaluation", "",
        f"`{s['command']}`", "",
        f"{s['streams']} streams x {s['duration_s']:g} s ({doc['alerts']['stream_hours']:.2f} stream-hours), "
        f"{s['width']}x{s['height']} at {s['fps']} fps, GOP {s['gop_s']:g} s, scene-cut backgrounds; "
        f"transport {s['transport']}; {s['infra']} infrastructure ({s['broker']}, monitor {s['monitor']}); "
        f"matcher: {s['matcher']}, PDQ threshold {s['threshold']}, quality gate {s['min_quality']}; "
        f"{s['appearances_planned']} appearances of {s['originals']} originals"
        + (f" ({s['dropped_shows']} shows dropped: too few pictures)" if s.get("dropped_shows") else "") + ". "
        f"Run took {doc['runtime_s']:.0f} s; generators fell behind real time by at most "
        f"{_fmt(doc['generators']['max_lag_s'])} s.", "",
        "## Targets", "",
        "| target | measured | met |", "|---|---|---|",
    ]
    for t in doc["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += ["", "Recall targets are judged on the observed proportion; with a handful of appearances per "
              "transform the 95% lower bound (shown) is far below the target, so a `yes` says the live run is "
              "consistent with the target, not that it proves it (the offline image benchmark, "
              "`tools/monitor_tools/eval_images.py`, has the statistical power).", "",
              "## Recall per transform", "",
              "| transform | shown | detected | recall | 95% CI low | target | latency from appearance p50/p95 (s) |"
              " offline best distance (median) |",
              "|---|---|---|---|---|---|---|---|"]
    offline = doc["offline_by_transform"]
    for name, t in sorted(doc["per_transform"].items()):
        la = t["latency_from_appearance_s"]
        tgt = RECALL_TARGETS.get(name)
        lines.append(f"| {name} | {t['appearances']} | {t['detected']} | {_pct(t['recall'])} | "
                     f"{_pct(t['recall_ci95_low'])} | {'-' if tgt is None else f'{100 * tgt:.0f}%'} | "
                     f"{_fmt(la['p50'])} / {_fmt(la['p95'])} | {_fmt(offline.get(name, {}).get('median'), 0)} |")
    tot = doc["totals"]
    chk = doc.get("offline_check") or {}
    lines += ["", f"All: {tot['detected']}/{tot['appearances']} appearances detected"
              + (f" ({tot['not_watched']} not counted: shown before the monitor was watching)"
                 if tot["not_watched"] else "") + ". "
              + (f"Offline distances come from the streams encoded again and read by the monitor's reader; at the "
                 f"alerting keyframe they equal the alert's distance for {chk['same_distance']} of "
                 f"{chk['alerts_compared']} alerts." if chk.get("alerts_compared") else ""), ""]
    if s.get("originals_redrawn_low_quality"):
        lines += [f"{s['originals_redrawn_low_quality']} generated originals had a PDQ quality under the gate "
                  f"({s['min_quality']}; the monitor never matches such a hash) and were replaced by other seeds.",
                  ""]
    if s.get("low_quality_files"):
        lines += ["Files under the quality gate (never matchable): " + ", ".join(s["low_quality_files"]), ""]
    lat = doc["latency"]
    lines += ["## Latency", "",
              "| measured from | n | p50 (s) | p95 (s) | max (s) |", "|---|---|---|---|---|"]
    for key, label in (("from_appearance_s", "first appearance (all)"),
                       ("from_appearance_strong_s", "first appearance, strong match (alert at once)"),
                       ("from_appearance_weak_s", "first appearance, weak match (2 of 3 samples)"),
                       ("from_keyframe_s", "the carrying keyframe")):
        p = lat[key]
        lines.append(f"| {label} | {p['n']} | {_fmt(p['p50'])} | {_fmt(p['p95'])} | {_fmt(p['max'])} |")
    lines += ["", "Alerting keyframe (0 = the first keyframe that carried the picture): "
              + ", ".join(f"#{k}: {v}" for k, v in lat["alerting_keyframe"].items()), ""]
    al = doc["alerts"]
    lines += ["## False alerts", "",
              f"Live: {al['false']} false alerts of {al['total']} in {al['stream_hours']:.2f} stream-hours "
              f"({_fmt(al['false_per_stream_hour'])} per stream-hour); precision {_pct(al['precision'])}.", ""]
    for x in al["false_alerts"][:20]:
        lines.append(f"- {x['stream_id']} entry {x['entry_id']} at {x['media_time_s']} s, distance {x['distance']}")
    fm = doc.get("false_match_1m")
    if fm:
        kf = fm["known_tail_fit"]
        kinds = ", ".join(f"{k} {v}" for k, v in fm["samples_by_scene_kind"].items())
        lines += ["", f"Against a {fm['bank_size']:,}-entry bank (uniform random PDQ codes) plus the "
                  f"{fm['known_entries']} known pictures: {fm['samples']:,} background keyframes, the streamed ones "
                  f"and more across every kind of scene ({kinds}), "
                  f"{fm['probes']:,} probes ({fm['probes_per_sample']} per sample, the matcher's views and "
                  f"variants above the quality gate), threshold {fm['threshold']}:", "",
                  f"- observed: {fm['samples_with_match']} samples with any probe within the threshold "
                  f"({fm['stream_hours_covered']:.2f} stream-hours of samples at one per 2 s);"]
        if fm["samples_with_match"] == 0:
            lines.append(f"- rule of three (none observed): 95% upper bound {_fmt(fm['rule_of_three_per_sample'], 6)} "
                         f"per sample = {_fmt(fm['rule_of_three_per_stream_hour'], 3)} per stream-hour = "
                         f"{_fmt(fm['rule_of_three_in_10_stream_hours'], 2)} in 10 stream-hours; a direct bound "
                         f"below one in 10 stream-hours needs {fm['samples_needed_for_10h_bound']:,} samples;")
        else:
            lines.append(f"- rate {_fmt(fm['per_sample_rate'], 6)} per sample = "
                         f"{_fmt(fm['expected_false_alerts_per_stream_hour'], 3)} per stream-hour;")
        lines += [f"- model, random codes: P(distance <= {fm['threshold']}) = {fm['uniform_p_per_comparison']:.3g} "
                  f"per comparison (binomial), x {fm['bank_size']:,} codes x {fm['probes_per_sample']} probes x "
                  f"1800 samples = {fm['uniform_expected_per_stream_hour']:.3g} per stream-hour;",
                  f"- model, known pictures: the samples' nearest distances (median {_fmt(kf['median'], 0)}, 1st "
                  f"percentile {_fmt(kf['p01'], 0)}) with a normal lower tail give "
                  f"{_g(kf['p_per_sample'])} per sample (indicative: an extrapolation far beyond the data);",
                  f"- estimate: {fm['estimated_false_alerts_per_stream_hour']:.3g} false alerts per stream-hour, "
                  f"{fm['estimated_false_alerts_in_10_stream_hours']:.3g} in 10 stream-hours;",
                  f"- nearest distances seen: to the known pictures {fm['nearest_known_min']}, to the random codes "
                  f"{fm['nearest_random_min']} (median {_fmt(fm['nearest_random_median'], 0)}, a sample of "
                  f"{len(fm['nearest_random_sample'])} probes scanned in full); exact radius search "
                  f"{fm['timing']['radius_search_ms_per_probe']} ms per probe.", ""]
    states = doc.get("stream_states") or {}
    if states:
        lines += ["## Streams", "", "| stream | state changes | reconnects while streaming | reasons |",
                  "|---|---|---|---|"]
        for sid, st in states.items():
            reasons = "; ".join(f"{k} ({v})" for k, v in st["details"].items())
            lines.append(f"| {sid} | {st['changes']} | {st['reconnects_while_streaming']} | {reasons} |")
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "## Appearances missed", ""]
    missed = [a for a in doc["appearances"] if a["watched"] and not a["detected"]]
    if not missed:
        lines.append("None.")
    for a in missed:
        lines.append(f"- {a['stream_id']} #{a['index']}: {a['transform']} ({', '.join(a['entry_ids'][:2])}), "
                     f"{a['start_s']:.1f}-{a['end_s']:.1f} s, keyframes {a['keyframes']}, offline best distance "
                     f"{a.get('offline_distance')} (plain PDQ {a.get('offline_plain_distance')})")
    lines.append("")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------------


def _choose(infra: str, transport: str) -> tuple[str, str]:
    from test_streams.infra import missing_tools

    missing = missing_tools()
    if infra == "auto":
        infra = "real" if not missing else "embedded"
    if infra == "real" and missing:
        raise UserError(f"--infra real needs Debian packages: {' '.join(missing)}")
    if transport == "auto":
        transport = "rtmp" if infra == "real" else "tcp"
    if transport == "rtmp" and infra != "real":
        raise UserError("--transport rtmp needs nginx-rtmp (--infra real)")
    return infra, transport


def parse_args(argv: list[str] | None) -> tuple[EvalOptions, list[str]]:
    p = argparse.ArgumentParser(prog="monitor eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("eval-live"), help="report folder (default eval-live)")
    p.add_argument("--quick", action="store_true", help="CI mode: 2 streams x 50 s, a few transforms")
    p.add_argument("--streams", type=int, help="parallel streams (default 4; quick 2)")
    p.add_argument("--duration", type=float, help="seconds per stream (default 300; quick 50)")
    p.add_argument("--transforms", help="comma-separated names (default: none and every transform)")
    p.add_argument("--images", type=Path, help="show your own images and videos from this folder instead")
    p.add_argument("--config", type=Path, help="monitor config (matching, sampling, incidents...); the eval "
                   "sets broker, streams, bank and state_dir")
    p.add_argument("--infra", choices=["auto", "real", "embedded"], default="auto",
                   help="real: Mosquitto, nginx-rtmp, the monitor as a process; embedded: in this process")
    p.add_argument("--transport", choices=["auto", "rtmp", "tcp", "hls"], default="auto",
                   help="default: rtmp with real infrastructure, tcp (MPEG-TS) embedded")
    p.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--background-samples", type=int, help="extra background keyframes for the 1M estimate "
                   "(default 3000; quick 300)")
    p.add_argument("--bank-size", type=int, default=BANK_SIZE, help="random codes in the false-match bank")
    p.add_argument("--no-bank-crops", action="store_true",
                   help="bank of the plain pictures only (default: also their crop windows, `monitor hash --crops`)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from test_streams.transforms import TRANSFORMS

    names = ["none", *TRANSFORMS]
    if args.transforms:
        chosen = [t.strip() for t in args.transforms.split(",") if t.strip()]
        unknown = [t for t in chosen if t not in names]
        if unknown:
            p.error(f"unknown transform(s) {', '.join(unknown)} (known: {', '.join(names)})")
    else:
        chosen = list(QUICK_TRANSFORMS) if args.quick else names
    opts = EvalOptions(
        out=args.out, quick=args.quick,
        streams=args.streams or (2 if args.quick else 4),
        duration_s=args.duration or (50.0 if args.quick else 300.0),
        gop_s=args.gop, fps=args.fps, transforms=chosen, images_dir=args.images, config_path=args.config,
        infra=args.infra, transport=args.transport, seed=args.seed,
        background_samples=(args.background_samples if args.background_samples is not None
                            else (300 if args.quick else 3000)),
        bank_size=args.bank_size, progress=not args.no_progress, plots=not args.no_plots,
        bank_crops=not args.no_bank_crops,
    )
    if args.quick:
        opts.show_s, opts.gap_s = (5.0, 7.0), (3.0, 5.0)
    if opts.streams < 1 or opts.duration_s < 15:
        p.error("need at least one stream and 15 s")
    return opts, list(sys.argv[1:] if argv is None else argv)


def evaluate(opts: EvalOptions, argv: Sequence[str]) -> dict[str, Any]:
    from monitor.config.models import build_config, load_config

    t_begin = time.monotonic()
    infra, transport = _choose(opts.infra, opts.transport)
    base_cfg: dict[str, Any] = load_config(opts.config_path) if opts.config_path else {}
    if base_cfg.get("banks"):
        _say("the config's banks are not used: the eval matches against its own bank", opts.progress)
    probe_cfg = build_config({k: v for k, v in base_cfg.items() if k not in ("streams", "banks")}, "config")
    work = opts.out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pool = user_pictures(opts.images_dir) if opts.images_dir else None
    inc = probe_cfg.incidents
    plans, dropped = plan_streams(opts, LEAD_IN_S[transport], pool, inc.close_after_s, inc.quarantine_streams,
                                  inc.quarantine_window_s)
    n_apps = sum(len(p) for p in plans)
    if n_apps == 0:
        raise UserError(f"{opts.duration_s:g} s streams leave no room for an appearance after the "
                        f"{LEAD_IN_S[transport]:g} s lead-in: use a longer --duration")
    _say(f"{infra} infrastructure, {transport}; {opts.streams} streams x {opts.duration_s:g} s, {n_apps} "
         f"appearances over {len(opts.transforms)} transforms", opts.progress)
    built = build_bank(plans, work, opts.progress, probe_cfg.matching.min_quality, crops=opts.bank_crops)
    bank, plans, entries = built.path, built.plans, built.entries
    run = asyncio.run(run_live(opts, plans, bank, work, base_cfg, infra, transport))
    strong = int(run.mcfg.incidents.strong_distance)
    hours = opts.streams * opts.duration_s / 3600
    doc: dict[str, Any] = score(run.truths, run.alerts, run.states, strong_distance=strong, stream_hours=hours)
    options, min_q, threshold = matcher_options(run.mcfg)
    off = offline_distances(run.truths, entries, run.mcfg, opts, work)
    agree = compared = 0
    for a in doc["appearances"]:
        rec = off["per_appearance"].get((a["stream_id"], a["index"]))
        if rec:
            a["offline_keyframe_distances"] = rec["keyframe_distances"]
            if a.get("alert_media_time_s") is not None and a.get("distance") is not None:
                at = [d for t, d in zip(rec["keyframe_times"], rec["keyframe_distances"], strict=True)
                      if abs(t - a["alert_media_time_s"]) < 0.02]
                if at:
                    compared += 1
                    agree += int(at[0] == a["distance"])
            a["offline_distance"] = min(rec["keyframe_distances"], default=256)
            a["offline_plain_distance"] = min(rec["plain_distances"], default=256)
            a["offline_nearest_other"] = rec["nearest_other"]
    doc["offline_check"] = {"alerts_compared": compared, "same_distance": agree}
    by_t: dict[str, list[int]] = {}
    for a in doc["appearances"]:
        if "offline_distance" in a:
            by_t.setdefault(a["transform"], []).append(a["offline_distance"])
    doc["offline_by_transform"] = {
        k: {"median": float(np.median(v)), "max": int(max(v)),
            "within_threshold": sum(1 for d in v if d <= threshold), "n": len(v)} for k, v in by_t.items()}
    extra_codes, extra_kinds = extra_background_codes(opts.background_samples, opts, run.mcfg)
    samples = list(off["background_codes"]) + extra_codes
    known = np.stack([hex_to_code(e["hash"]) for e in entries])
    fm = false_match_estimate(samples, known, threshold, opts)
    kinds = off["background_kinds"] + extra_kinds
    fm["samples_by_scene_kind"] = {k: kinds.count(k) for k in sorted(set(kinds))}
    doc["false_match_1m"] = fm
    doc["distances"] = {
        "threshold": threshold, "strong": strong,
        "matches": [d for a in doc["appearances"] for d in a.get("offline_keyframe_distances", [])],
        "non_matches": fm["nearest_known_per_sample"],
        "random_1m": fm["nearest_random_sample"], "random_size": fm["bank_size"],
    }
    lags = [float(t.get("max_lag_s") or 0.0) for t in run.truths.values()]
    doc["generators"] = {"exit_codes": run.generator_rc, "max_lag_s": max(lags, default=None)}
    doc["stream_states"] = {
        sid: {"changes": len(v),
              "reconnects_while_streaming": sum(
                  1 for st, at in v if st in ("reconnecting", "stalled")
                  and next((a for s2, a in v if s2 == "live"), math.inf) < at < _stream_end(run, sid)),
              "details": dict(Counter(_shorten(d) for d in run.details.get(sid, [])).most_common(8))}
        for sid, v in sorted(run.states.items())}
    doc["setup"] = {
        "command": "monitor eval " + " ".join(argv), "mode": "quick" if opts.quick else "full",
        "streams": opts.streams, "duration_s": opts.duration_s, "gop_s": opts.gop_s, "fps": opts.fps,
        "width": opts.width, "height": opts.height, "transforms": opts.transforms, "infra": run.infra,
        "transport": run.transport, "monitor": run.monitor,
        "broker": "Mosquitto" if run.infra == "real" else "embedded amqtt",
        "matcher": options.label(), "min_quality": min_q, "threshold": threshold, "strong_distance": strong,
        "sampling_min_interval_s": float(run.mcfg.sampling.min_interval_s),
        "workers": run.mcfg.workers, "config": str(opts.config_path) if opts.config_path else None,
        "images": str(opts.images_dir) if opts.images_dir else None,
        "appearances_planned": n_apps, "dropped_shows": dropped,
        "originals_redrawn_low_quality": built.replaced_low_quality, "low_quality_files": built.low_quality_files,
        "originals": len({e["entry_id"].split("@")[0] for e in entries}),
        "seed": opts.seed, "cpus": os.cpu_count(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    doc["runtime_s"] = round(time.monotonic() - t_begin, 1)
    doc["targets"] = targets(doc)
    return doc


def _stream_end(run: LiveRun, sid: str) -> float:
    """Wall time a stream's last frame was sent (about): its start plus its length plus how late it ran."""
    t = run.truths.get(sid)
    if t is None:
        return run.streams_ended_at
    return float(t["wall_start"]) + float(t["duration_s"]) + float(t.get("max_lag_s") or 0.0)


def _shorten(detail: str) -> str:
    """A state detail without its retry delay, so that equal reasons count together."""
    return detail.split("; retry in", 1)[0][:160]


def write_outputs(doc: dict[str, Any], opts: EvalOptions) -> None:
    plots = make_plots(doc, opts.out) if opts.plots else []
    (opts.out / "report.md").write_text(markdown(doc, plots))
    slim = dict(doc)
    (opts.out / "results.json").write_text(json.dumps(slim, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def main(argv: list[str] | None = None) -> int:
    """`monitor eval`. Exit 0 when the run completed (targets met or not: the report says), 1 when detection
    broke outright (nothing detected, or a generator or the monitor failed), 2 for bad input."""
    opts, args = parse_args(argv)
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
        doc = evaluate(opts, args)
    except UserError as exc:
        print(f"monitor eval: {exc}", file=sys.stderr)
        return 2
    write_outputs(doc, opts)
    tot, al = doc["totals"], doc["alerts"]
    print(f"{tot['detected']}/{tot['appearances']} appearances detected, {al['false']} false alerts in "
          f"{al['stream_hours']:.2f} stream-hours; latency p95 from appearance "
          f"{_fmt(doc['latency']['from_appearance_s']['p95'])} s, from keyframe "
          f"{_fmt(doc['latency']['from_keyframe_s']['p95'])} s; report: {opts.out / 'report.md'}")
    for t in doc["targets"]:
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        print(f"  [{met:>7}] {t['target']}: {t['measured']}")
    broken = tot["detected"] == 0 or any(rc not in (0, None) for rc in doc["generators"]["exit_codes"].values())
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
