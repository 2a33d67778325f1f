"""`monitor bench soak`: N live streams for T minutes through the real monitor; resource growth reported.

nginx-rtmp and N `ffmpeg -re -stream_loop -1 -c copy` publishers of a prepared file feed `monitor run` (a
real process, with its worker processes); a broker takes its messages (Mosquitto when installed, else the
embedded one). Every few seconds the monitor's process tree is sampled: RSS, open file descriptors, threads.
After a warm-up, growth is reported as first-to-last change and as a least-squares slope per hour. One JSON
document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from monitor_tools.bench.harness import descendants
from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, free_port, missing_tools


def _log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def _is_helper(pid: int) -> bool:
    """multiprocessing's resource tracker belongs to the monitor's tree but not to its workload."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def sample_tree(pid: int) -> dict[str, float]:
    rss = fds = threads = 0
    procs = [p for p in (pid, *descendants(pid)) if not _is_helper(p)]
    for p in procs:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss += int(fields["VmRSS"].split()[0]) * 1024
            threads += int(fields["Threads"])
            fds += len(list(Path(f"/proc/{p}/fd").iterdir()))
    return {"t": time.time(), "rss_bytes": rss, "fds": fds, "threads": threads, "processes": len(procs)}


def _slope_per_hour(ts: list[float], ys: list[float]) -> float:
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den * 3600


def growth(samples: list[dict[str, float]], warmup_s: float) -> dict[str, Any]:
    t0 = samples[0]["t"]
    steady = [s for s in samples if s["t"] - t0 >= warmup_s] or samples[-2:]
    first, last = steady[0], steady[-1]
    ts = [s["t"] for s in steady]
    out: dict[str, Any] = {"samples_after_warmup": len(steady), "seconds_after_warmup": round(last["t"] - first["t"])}
    for key in ("rss_bytes", "fds", "threads", "processes"):
        ys = [s[key] for s in steady]
        out[key] = {"first": first[key], "last": last[key], "min": min(ys), "max": max(ys),
                    "change": last[key] - first[key], "slope_per_hour": round(_slope_per_hour(ts, ys), 1)}
    out["rss_growth_pct"] = round(100 * (last["rss_bytes"] - first["rss_bytes"]) / first["rss_bytes"], 2)
    return out


def run_soak(streams: int, minutes: float, warmup_s: float, interval_s: float, folder: Path) -> dict[str, Any]:
    from test_streams.live import generate

    source = folder / "source.flv"
    _log("preparing a 640x360 source file (30 s, 2 s GOP)")
    generate(str(source), width=640, height=360, fps=25, duration_s=30, realtime=False)
    nginx = NginxRtmp().start()
    broker_proc: Mosquitto | None = None
    embedded_stop = threading.Event()
    if shutil.which("mosquitto"):
        broker_proc = Mosquitto().start()
        broker_url = broker_proc.url
    else:
        broker_url = _embedded_broker(embedded_stop)
    pubs: list[subprocess.Popen[bytes]] = []
    mon: subprocess.Popen[bytes] | None = None
    try:
        duration = minutes * 60 + warmup_s + 60
        for i in range(streams):
            pubs.append(subprocess.Popen(ffmpeg_publish_cmd(nginx.rtmp_url(f"s{i}"), duration_s=duration,
                                                            source=str(source)),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL))
        cfg = {"node": "soak", "broker": {"url": broker_url}, "state_dir": str(folder / "state"),
               "streams": [{"id": f"s{i}", "url": nginx.rtmp_url(f"s{i}")} for i in range(streams)],
               "metrics": {"enabled": True, "port": free_port()}, "log_level": "warning"}
        (folder / "monitor.yaml").write_text(yaml.safe_dump(cfg))
        log = open(folder / "monitor.log", "wb")  # noqa: SIM115 - closed below
        mon = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(folder / "monitor.yaml")],
                               stdout=log, stderr=subprocess.STDOUT)
        _log(f"{streams} streams, warm-up {warmup_s:.0f} s, then {minutes:g} min sampled every {interval_s:g} s")
        samples: list[dict[str, float]] = []
        end = time.time() + warmup_s + minutes * 60
        while time.time() < end:
            if mon.poll() is not None:
                raise RuntimeError(f"the monitor exited with {mon.returncode}: see {folder / 'monitor.log'}")
            samples.append(sample_tree(mon.pid))
            time.sleep(interval_s)
        samples.append(sample_tree(mon.pid))
        metrics = _scrape(cfg["metrics"]["port"])  # type: ignore[index]
    finally:
        if mon is not None and mon.poll() is None:
            mon.send_signal(signal.SIGTERM)
            try:
                mon.wait(30)
            except subprocess.TimeoutExpired:
                mon.kill()
        for p in pubs:
            p.kill()
            p.wait()
        nginx.close()
        if broker_proc is not None:
            broker_proc.close()
        embedded_stop.set()
    report = growth(samples, warmup_s)
    report.update({"streams": streams, "minutes": minutes, "warmup_s": warmup_s, "metrics": metrics,
                   "rss_total_per_stream_bytes": round(samples[-1]["rss_bytes"] / max(1, streams)),
                   "targets": {"rss_growth_pct_below": 5, "fds_and_threads_no_growth": True}})
    report["targets_met"] = {
        "rss_growth_below_5pct": report["rss_growth_pct"] < 5,
        "no_fd_growth": report["fds"]["change"] <= 0,
        "no_thread_growth": report["threads"]["change"] <= 0,
    }
    return report


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    wanted = ("monitor_samples_total", "monitor_dropped_samples_total", "monitor_reconnects_total",
              "monitor_streams{state=\"live\"}")
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            for w in wanted:
                if line.startswith(w):
                    key = w.split("{")[0] if "{" not in w else w
                    out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _embedded_broker(stop: threading.Event) -> str:
    from test_streams.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    ready = threading.Event()

    async def serve() -> None:
        async with broker:
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.2)

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait(10)
    return broker.url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="monitor bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--minutes", type=float, default=10.0, help="measured time after the warm-up")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before growth is measured")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between resource samples")
    p.add_argument("--quick", action="store_true", help="CI mode: 4 streams, 20 s warm-up, 1 minute")
    args = p.parse_args(argv)
    if args.quick:
        args.streams, args.minutes, args.warmup, args.interval = 4, 1.0, 20.0, 5.0
    missing = missing_tools()
    if missing:
        print(f"monitor bench soak: needs Debian packages: {' '.join(missing)}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="monitor-soak-"))
    try:
        report = run_soak(args.streams, args.minutes, args.warmup, args.interval, folder)
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
