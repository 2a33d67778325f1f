"""Benchmark: what the monitor's sampling costs, and what it sees, on the adversarial encodings of issue 12.

    monitor bench evasion [--quick] [--seconds S] [--encodings a,b,...]   (also python -m monitor_tools.bench.evasion)

The real engine is measured: two `monitor run` processes (real config files, default worker processes), one with
`sampling.mode: keyframes` (keyframe-only sampling, the old behaviour) and one at the default sampling config, pull
the same streams from nginx-rtmp at the same time, with Mosquitto carrying their alerts. The encodings are those of
`test_streams.evasion` at 720p30 (quick: 360p) over a textured, camera-like background (a slow pan over the
generated texture of `test_streams.images.Background`, not testsrc2, which costs almost nothing to decode),
libx264 veryfast at 2500 kbit/s; each is recorded once (cached) and published with `ffmpeg -re -c copy`, one
encoding at a time for its fixed length, so each monitor's CPU over that window belongs to that encoding.

Reported per encoding and sampling mode: CPU seconds of the whole monitor process tree (the process and its
worker processes, from /proc/<pid>/stat, reaped children included) per media second of the stream, also with the
idle cost of the monitor (measured before the first stream) taken off; the ratio default / keyframes; whether
the known picture was alerted on (MQTT) and at what media time; from the metrics: the stream's blind interval
(`monitor_stream_blind_interval_seconds`), decoded frames by kind (`monitor_decoded_frames_total`), samples,
escalation and evasion signals. A metric the engine does not export is reported as null. The target of the issue
(ordinary 2 s GOP stream: default at most 1.3x keyframe-only) is reported against the control stream.

One JSON document goes to stdout, progress to stderr; --quick (CI) takes about a minute and only prints figures.
Every process started here is stopped, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import yaml
from PIL import Image

from monitor_tools.bench.harness import loadavg, run_report, start_alert_subscriber, tree_cpu_s
from test_streams import evasion
from test_streams.images import Background, known_image
from test_streams.infra import Mosquitto, NginxRtmp, free_port, missing_tools, stop_process

INPUT_VERSION = 1  # bump when the background or the encodings' settings change (cache key)


@dataclass(frozen=True)
class Preset:
    width: int
    height: int
    seconds: float
    encodings: tuple[str, ...] | None = None  # None: all


FULL = Preset(1280, 720, 20.0)
QUICK = Preset(640, 360, 8.0, ("control", "forced_keyframes", "intra_refresh", "bframes_only"))
FPS = 30
BITRATE_K = 2500
PRESET = "veryfast"
SHOW_AT_S, SHOW_S = 4.0, 4.0
TARGET_CONTROL_RATIO = 1.3
MODES = {"keyframes": {"mode": "keyframes"}, "default": {}}  # the `sampling:` section of each monitor
SETTLE_S = 2.0  # after a stream ends: its last samples are analysed and alerted


def _log(msg: str) -> None:
    print(f"[bench evasion] {msg}", file=sys.stderr, flush=True)


# -- inputs -----------------------------------------------------------------------------------------------------
def background_file(folder: Path, width: int, height: int, seconds: int = 12) -> Path:
    """A slow pan over a generated texture (camera-like detail and motion), high quality, cached."""
    path = folder / f"pan-{width}x{height}p{FPS}-{seconds}s-v{INPUT_VERSION}.mp4"
    if path.exists() and path.stat().st_size > 0:
        return path
    part = path.with_name(f"{path.stem}.part{os.getpid()}.mp4")
    _log(f"making the background {path.name}")
    bg = Background(7, width, height)
    with av.open(str(part), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.options = {"preset": "ultrafast", "crf": "16"}
        for i in range(seconds * FPS):
            frame = av.VideoFrame.from_ndarray(bg.frame(i / FPS), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for packet in s.encode(frame):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    part.replace(path)
    return path


def known_picture(folder: Path) -> Path:
    path = folder / "known-0.png"
    if not path.exists():
        Image.fromarray(known_image(0)).save(path)
    return path


def bank_file(folder: Path, picture: Path) -> Path:
    from monitor.ingest.hashfiles import hash_file
    from pipelines.banks import format_bank

    hexv = next(hash_file(picture)).hex
    path = folder / "bank.csv"
    path.write_text(format_bank([hexv], "csv", "pdq", [picture.name]))
    return path


def layout_for(width: int, height: int, seconds: float, background: Path) -> evasion.Layout:
    return evasion.Layout(width=width, height=height, fps=FPS, show_at_s=SHOW_AT_S, show_s=SHOW_S,
                          tail_s=max(0.5, seconds - SHOW_AT_S - SHOW_S), preset=PRESET, bitrate_k=BITRATE_K,
                          background=background)


# -- measuring the monitor --------------------------------------------------------------------------------------
def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text
    except OSError:
        return ""


def metric_values(text: str, name: str, stream: str) -> dict[str, float]:
    """Samples of `name` for one stream: the other labels (joined) -> value; {} when the engine has none."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"{name}\{{([^}}]*)\}} (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.pop("stream", None) != stream:
            continue
        out[",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"] = float(m.group(2))
    return out


def metric_one(text: str, name: str, stream: str) -> float | None:
    vals = metric_values(text, name, stream)
    return sum(vals.values()) if vals else None


@dataclass
class Alerts:
    """A paho subscriber on the alert topics of every node."""

    port: int
    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Alerts:
        self.client = start_alert_subscriber(self.port, "bench-evasion", self._message)
        return self

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        with contextlib.suppress(ValueError):
            body = json.loads(msg.payload)
            with self.lock:
                self.got.append((msg.topic, body))

    def for_stream(self, node: str, stream: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for t, b in self.got if t == f"bench/{node}/alerts/{stream}"]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path


def start_node(folder: Path, name: str, sampling: dict[str, Any], streams: list[tuple[str, str]], bank: Path,
               broker: Mosquitto) -> Node:
    port = free_port()
    config: dict[str, Any] = {
        "node": name,
        "state_dir": str(folder / f"state-{name}"),
        "broker": {"url": broker.url, "topic_prefix": "bench"},
        "streams": [{"id": sid, "url": url} for sid, url in streams],
        "banks": [{"name": "known", "path": str(bank)}],
        "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "metrics": {"enabled": True, "port": port},
        "incidents": {"quarantine_streams": 1000},  # the same entry on every stream is the point here
        "log_level": "warning",
    }
    if sampling:
        config["sampling"] = sampling
    cfg = folder / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log_path = folder / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return Node(name, proc, port, log_path)


def _wait_metrics(node: Node, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            return False
        if scrape(node.metrics_port):
            return True
        time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 8) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def measure(node: Node, stream: str, media_s: float, cpu_s: float, idle_cpu_per_s: float, wall_s: float,
            alerts: Alerts) -> dict[str, Any]:
    text = scrape(node.metrics_port)
    got = alerts.for_stream(node.name, stream)
    net = max(0.0, cpu_s - idle_cpu_per_s * wall_s)
    decoded = metric_values(text, "monitor_decoded_frames_total", stream)
    return {
        "cpu_s": round(cpu_s, 3),
        "cpu_s_per_media_s": round(cpu_s / media_s, 4),
        "cpu_s_per_media_s_net_of_idle": round(net / media_s, 4),
        "detected": bool(got),
        "alerts": len(got),
        "first_alert_media_s": min((a.get("media_time_s", 0.0) for a in got), default=None),
        "best_distance": min((a.get("distance", 256) for a in got), default=None),
        "blind_interval_s": metric_one(text, "monitor_stream_blind_interval_seconds", stream),
        "decoded_frames": {k.removeprefix("kind="): v for k, v in decoded.items()} if decoded else None,
        "samples": metric_one(text, "monitor_samples_total", stream),
        "escalated": metric_one(text, "monitor_stream_escalated", stream),
        "evasion_signals": {k.removeprefix("signal="): v for k, v in
                            metric_values(text, "monitor_evasion_signals_total", stream).items()} or None,
    }


@contextlib.contextmanager
def services() -> Iterator[tuple[Mosquitto, NginxRtmp]]:
    broker = Mosquitto().start()
    try:
        nginx = NginxRtmp().start()
        try:
            yield broker, nginx
        finally:
            nginx.close()
    finally:
        broker.close()


def run(encs: list[evasion.Encoding], files: dict[str, Path], layout: evasion.Layout, bank: Path,
        folder: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    nodes: list[Node] = []
    with services() as (broker, nginx):
        alerts = Alerts(broker.port).start()
        try:
            streams = [(e.name, nginx.rtmp_url(e.name)) for e in encs]
            nodes = [start_node(folder, name, sampling, streams, bank, broker) for name, sampling in MODES.items()]
            for n in nodes:
                if not _wait_metrics(n, 60):
                    raise RuntimeError(f"monitor {n.name} did not start (exit {n.proc.poll()}): "
                                       + " | ".join(_tail(n.log_path)))
            time.sleep(2.0)  # readers attached to the idle streams (or retrying)
            idle_s = 4.0
            c0 = {n.name: tree_cpu_s(n.proc.pid) for n in nodes}
            time.sleep(idle_s)
            idle = {n.name: (tree_cpu_s(n.proc.pid) - c0[n.name]) / idle_s for n in nodes}
            results["idle_cpu_s_per_s"] = {k: round(v, 4) for k, v in idle.items()}
            per: list[dict[str, Any]] = []
            for e in encs:
                _log(f"publishing {e.name} ({layout.duration_s:g} s)")
                c0 = {n.name: tree_cpu_s(n.proc.pid) for n in nodes}
                t0 = time.monotonic()
                pub = subprocess.Popen(evasion.copy_publish_cmd(files[e.name], nginx.rtmp_url(e.name)),
                                       stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    _, err = pub.communicate(timeout=layout.duration_s + 60)
                finally:
                    stop_process(pub)
                time.sleep(SETTLE_S)
                wall = time.monotonic() - t0
                row: dict[str, Any] = {"name": e.name, "letter": e.letter, "summary": e.summary,
                                       "old_sampler_blind_by_construction": e.old_sampler_blind,
                                       "media_s": layout.duration_s, "publisher_exit": pub.returncode}
                if pub.returncode:
                    row["publisher_error"] = err.decode(errors="replace")[-300:]
                for n in nodes:
                    alive = n.proc.poll() is None
                    cpu = tree_cpu_s(n.proc.pid) - c0[n.name] if alive else 0.0
                    row[n.name] = (measure(n, e.name, layout.duration_s, cpu, idle[n.name], wall, alerts) if alive
                                   else {"error": f"monitor exited with {n.proc.returncode}"})
                k, d = row["keyframes"], row["default"]
                row["ratio_default_vs_keyframes"] = (round(d["cpu_s_per_media_s"] / k["cpu_s_per_media_s"], 3)
                                                     if "cpu_s" in k and "cpu_s" in d and k["cpu_s"] > 0 else None)
                row["ratio_net_of_idle"] = (
                    round(d["cpu_s_per_media_s_net_of_idle"] / k["cpu_s_per_media_s_net_of_idle"], 3)
                    if "cpu_s" in k and "cpu_s" in d and k["cpu_s_per_media_s_net_of_idle"] > 0 else None)
                per.append(row)
            results["encodings"] = per
        finally:
            for n in nodes:
                stop_process(n.proc, 20)
            for n in nodes:
                results.setdefault("monitor_exit", {})[n.name] = n.proc.returncode
                if n.proc.returncode not in (0, None):
                    results.setdefault("monitor_log_tail", {})[n.name] = _tail(n.log_path)
            alerts.stop()
    return results


# -- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="monitor bench evasion", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI mode: 360p, 4 encodings of 8 s; figures only")
    ap.add_argument("--seconds", type=float, help="media seconds per encoding (default 20, quick 8; at least 9 "
                                                  "leaves background after the picture)")
    ap.add_argument("--encodings", help="comma-separated names or letters (default: all; quick: 4)")
    ap.add_argument("--cache-dir", type=Path, help="where recorded encodings are kept (default: a temp folder)")
    args = ap.parse_args(argv)
    if args.seconds is not None and args.seconds < SHOW_AT_S + SHOW_S:
        ap.error(f"--seconds must be at least {SHOW_AT_S + SHOW_S:g} (the picture is on screen {SHOW_AT_S:g}-"
                 f"{SHOW_AT_S + SHOW_S:g} s)")
    return args


def pick(names: str | None, quick: bool, layout: evasion.Layout) -> list[evasion.Encoding]:
    all_encs = evasion.encodings(layout)
    if names is None:
        wanted = list(QUICK.encodings or ()) if quick else [e.name for e in all_encs]
    else:
        wanted = [w.strip() for w in names.split(",") if w.strip()]
    out = [e for e in all_encs if e.name in wanted or e.letter in wanted]
    unknown = set(wanted) - {e.name for e in out} - {e.letter for e in out}
    if unknown or not out:
        known = ", ".join(f"{e.name} ({e.letter})" for e in all_encs)
        raise SystemExit(f"monitor bench evasion: unknown encoding(s) {sorted(unknown)}; known: {known}")
    return out


def _targets(per: list[dict[str, Any]]) -> dict[str, Any]:
    control = next((r for r in per if r["name"] == "control"), None)
    t: dict[str, Any] = {"control_cost_ratio": {"target": f"<= {TARGET_CONTROL_RATIO:g}"}}
    if control is not None:
        r = control.get("ratio_default_vs_keyframes")
        t["control_cost_ratio"].update(measured=r, measured_net_of_idle=control.get("ratio_net_of_idle"),
                                       met=None if r is None else r <= TARGET_CONTROL_RATIO)
    t["detected_by_default"] = {r["name"]: r.get("default", {}).get("detected") for r in per}
    t["detected_by_keyframes"] = {r["name"]: r.get("keyframes", {}).get("detected") for r in per}
    return t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    preset = QUICK if quick else FULL
    width, height = preset.width, preset.height
    seconds = float(args.seconds or preset.seconds)
    names = [e.name for e in pick(args.encodings, quick, evasion.Layout())]  # refuses unknown names at once
    missing = missing_tools()
    if missing:
        print(f"monitor bench evasion: needs {' '.join(missing)} (scripts/test installs them)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    folder = args.cache_dir or Path(tempfile.gettempdir()) / "monitor-bench-evasion"
    folder.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "evasion: sampling cost and detection on adversarial encodings, keyframes vs default",
        "mode": "quick" if quick else "full",
        "environment": {"cpu_count": os.cpu_count(), "loadavg_at_start": loadavg(), "av": av.__version__},
    }

    def body(work: Path) -> None:
        picture = known_picture(folder)
        background = background_file(folder, width, height)
        layout = layout_for(width, height, seconds, background)
        encs = [e for e in evasion.encodings(layout) if e.name in names]
        report["config"] = {
            "size": layout.size, "fps": FPS, "media_s_per_encoding": layout.duration_s,
            "picture_on_screen_s": [SHOW_AT_S, SHOW_AT_S + SHOW_S],
            "x264": f"{PRESET}, {BITRATE_K} kbit/s", "background": "slow pan over a generated texture",
            "publish": "ffmpeg -re -c copy of the recorded encoding, one encoding at a time",
            "monitors": {k: {"sampling": v} for k, v in MODES.items()},
            "cpu": "monitor process tree (workers included), /proc/<pid>/stat utime+stime",
            "encodings": [e.name for e in encs],
        }
        bank = bank_file(work, picture)
        files: dict[str, Path] = {}
        recorded = folder / f"{layout.size}-{layout.duration_s:g}s-v{INPUT_VERSION}"
        recorded.mkdir(exist_ok=True)
        for e in encs:
            _log(f"recording {e.name}")
            files[e.name] = evasion.record(e, recorded, picture, layout, timeout_s=900)
        results = run(encs, files, layout, bank, work)
        report.update(results)
        report["targets"] = _targets(results.get("encodings", []))

    return run_report(report, body, started=started, work_prefix="bench-evasion-", log=_log)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["main"]
