"""`monitor eval`: offline hashing of what the monitor saw (match and non-match distances) and the 1M false-alert
estimate."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config.models import MonitorConfig
from monitor_tools.eval.live.common import FALSE_ALERT_HOURS_TARGET, SAMPLES_PER_HOUR, Image, Progress, binom_tail, say
from monitor_tools.eval.live.plan import EvalOptions
from monitor_tools.scans import distances, nearest_distances
from pipelines.fingerprint import DEFAULT_THRESHOLDS
from pipelines.hamming import CODE_BYTES, Codes, hex_to_code
from pipelines.index import LinearIndex
from pipelines.mih import MultiIndexHashIndex
from pipelines.robust import SWITCH_NAMES, RobustOptions
from test_streams.live import (
    Appearance,
)


def matcher_options(mcfg: MonitorConfig) -> tuple[RobustOptions, int, int]:
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
            dm = distances(codes, bank) if len(codes) else np.full((1, len(bank)), 256, np.int32)
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
                rec["plain"] = (int(distances(plain, bank[own]).min()) if plain is not None and own else 256)
            keys.append(rec)
    finally:
        path.unlink(missing_ok=True)
    return {"sid": job.sid, "keyframes": keys, "bg_codes": bg_codes, "bg_kinds": bg_kinds}


def offline_distances(run_truths: dict[str, dict[str, Any]], entries: list[dict[str, Any]], mcfg: MonitorConfig,
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


def extra_background_codes(n: int, opts: EvalOptions, mcfg: MonitorConfig) -> tuple[list[Codes], list[str]]:
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
    say(f"1M estimate: indexing {size:,} random codes", opts.progress)
    t0 = time.perf_counter()
    index = MultiIndexHashIndex(bank, np.arange(size, dtype=np.int64))
    build_s = time.perf_counter() - t0
    lens = [len(c) for c in sample_codes]
    queries = np.concatenate([c for c in sample_codes if len(c)]) if any(lens) else np.empty((0, CODE_BYTES),
                                                                                            np.uint8)
    t0 = time.perf_counter()
    within = (np.array([len(ids) for ids, _ in index.search_batch(queries, threshold)], np.int64) if len(queries)
              else np.zeros(0, np.int64))
    search_s = time.perf_counter() - t0
    # cross-check the index against the reference one on a few probes
    linear = LinearIndex(bank, np.arange(size, dtype=np.int64))
    check_q = queries[: min(3, len(queries))]
    for i, q in enumerate(check_q):
        ids, _ = linear.search(q, threshold)
        if len(ids) != int(within[i]):
            raise AssertionError("MultiIndexHashIndex disagrees with LinearIndex")
    nq = min(opts.nearest_probes, len(queries))
    sel = rng.choice(len(queries), nq, replace=False) if nq else np.empty(0, np.int64)
    t0 = time.perf_counter()
    nearest_random = nearest_distances(bank, queries[sel]) if nq else np.empty(0, np.int32)
    scan_ms = 1000 * (time.perf_counter() - t0) / max(nq, 1)
    del index, bank, linear
    known_d = (distances(queries, known).min(axis=1) if len(queries) and len(known)
               else np.full(len(queries), 256))
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
