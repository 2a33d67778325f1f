"""`monitor bench ingest`: options, the targets, and the report of both parts."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from monitor.config.models import IngestConfig
from monitor_tools.bench import ingest
from monitor_tools.bench.harness import loadavg, run_report
from monitor_tools.bench.ingest.floor import floor_main
from monitor_tools.bench.ingest.inputs import (
    BANK_SIZE,
    BITRATE,
    FPS,
    GOP_S,
    HEIGHT,
    LIVE_CLIP_S,
    TARGETS,
    WIDTH,
    X264,
    cache_dir,
    keyframe_hashes,
    make_bank,
    media_duration,
    prepare_input,
    say,
)
from monitor_tools.bench.ingest.live import bench_live, live_clip
from monitor_tools.bench.ingest.offline import bench_throughput

DESCRIPTION = (ingest.__doc__ or "").split("\n")[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="monitor bench ingest", description=DESCRIPTION)
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
        return floor_main()
    quick = args.quick
    n = args.streams or (4 if quick else 100)
    seconds = args.seconds or (8.0 if quick else 60.0)
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
            "loadavg_at_start": loadavg(),
        },
    }
    folder = cache_dir(args.cache_dir)

    def body(work: Path) -> None:
        if not args.live_only:
            src = prepare_input(folder, "testsrc2", 12 if quick else 60)
            say("bank: hashing the input's keyframes, building 100k entries")
            bank, planted = make_bank(keyframe_hashes(src, cfg), BANK_SIZE)
            say("throughput")
            report["throughput"] = bench_throughput(src, cfg, bank, planted, min_cpu_s=0.5 if quick else 2.0)
            del bank
            if not quick:
                pan = prepare_input(folder, "pan", LIVE_CLIP_S)
                say("throughput on a second content (textured slow pan)")
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

    return run_report(report, body, started=started, work_prefix="bench-ingest-", log=say)
