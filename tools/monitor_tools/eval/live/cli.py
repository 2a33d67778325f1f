"""`monitor eval`: the whole monitor against live test streams with ground truth, scored per transform.

Options, the run from plan to report, and the exit code; the method is in monitor_tools/eval/live/__init__.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitor.common.errors import UserError
from monitor_tools.eval.live.common import BANK_SIZE, LEAD_IN_S, QUICK_TRANSFORMS, say
from monitor_tools.eval.live.offline import (
    extra_background_codes,
    false_match_estimate,
    matcher_options,
    offline_distances,
)
from monitor_tools.eval.live.plan import EvalOptions, build_bank, plan_streams, user_pictures
from monitor_tools.eval.live.report import fmt, make_plots, markdown, targets
from monitor_tools.eval.live.run import LiveRun, run_live
from monitor_tools.eval.live.score import score
from pipelines.hamming import hex_to_code


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
        say("the config's banks are not used: the eval matches against its own bank", opts.progress)
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
    say(f"{infra} infrastructure, {transport}; {opts.streams} streams x {opts.duration_s:g} s, {n_apps} "
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
          f"{fmt(doc['latency']['from_appearance_s']['p95'])} s, from keyframe "
          f"{fmt(doc['latency']['from_keyframe_s']['p95'])} s; report: {opts.out / 'report.md'}")
    for t in doc["targets"]:
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        print(f"  [{met:>7}] {t['target']}: {t['measured']}")
    broken = tot["detected"] == 0 or any(rc not in (0, None) for rc in doc["generators"]["exit_codes"].values())
    return 1 if broken else 0
