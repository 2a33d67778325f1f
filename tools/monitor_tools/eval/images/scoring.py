"""The image benchmark on generated pictures: thresholds at a precision target, recall per transform, cost per switch
set, and the expected false alerts per stream-hour against a 1M-entry bank."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor_tools.eval.images.corpus import (
    BANK_CROPS_KEY,
    BANK_SIZE,
    DEFAULT_KEY,
    DEFAULT_THRESHOLDS,
    GLOBAL_HASHERS,
    HEIGHT,
    MIN_QUALITY,
    NO_MATCH,
    PRECISION_TARGET,
    SAMPLES_PER_HOUR,
    SWITCHES,
    WIDE_THRESHOLD,
    WIDTH,
    Codes,
    Image,
    bank_crops_row,
    crop_bank,
    ingest_scale,
    ingest_width,
    make_originals,
    say,
    switch_distances,
    usable_probes,
)
from monitor_tools.scans import nearest_and_within
from pipelines.detect import detect_bars
from pipelines.fingerprint import PDQ_DEFAULT_THRESHOLD
from pipelines.hamming import CODE_BYTES, hamming
from pipelines.index import LinearIndex
from pipelines.robust import (
    SWITCH_NAMES,
    Probe,
    RobustOptions,
    compute_probes,
)
from test_streams.images import Background
from test_streams.transforms import TRANSFORMS, jpeg, letterbox

# The targets at the default configuration (precision >= 99.99%): transform -> minimum recall.
TARGETS: dict[str, float] = {
    "reencode": 0.99, "blocky": 0.99, "downscale": 0.99, "gamma": 0.99, "watermark": 0.99,
    "letterbox": 0.95, "pillarbox": 0.95, "mirror": 0.95, "crop10": 0.70,
}


def _pipeline_rows(
    probes: list[Probe], bank: Codes, own: int, pair_hist: dict[str, npt.NDArray[np.int64]]
) -> dict[str, npt.NDArray[np.int32]]:
    """Per switch set: the distance to every original, min over the set's probes (views under the quality gate
    left out). Also adds every (probe, other original) distance to that set's histogram in pair_hist."""
    rows: dict[str, npt.NDArray[np.int32]] = {}
    for name, d in switch_distances(usable_probes(probes), bank, SWITCHES).items():
        key = f"pipeline/{name}"
        if d is None:
            rows[key] = np.full(len(bank), NO_MATCH, np.int32)
            continue
        rows[key] = d.min(axis=0)
        others = np.delete(d, own, axis=1).ravel()
        hist = pair_hist.setdefault(key, np.zeros(257, np.int64))
        hist += np.bincount(others, minlength=257)[:257]
    return rows


# -- thresholds and recall -------------------------------------------------------------------------------------


def choose_threshold(pos: npt.NDArray[np.int32], neg: npt.NDArray[np.int32], target: float) -> int:
    """Largest threshold t with TP / (TP + FP) >= target (matches at distance <= t); -1 if none."""
    tp = np.cumsum(np.bincount(np.minimum(pos, 256), minlength=NO_MATCH + 1))
    fp = np.cumsum(np.bincount(np.minimum(neg, 256), minlength=NO_MATCH + 1))
    best = -1
    for t in range(257):
        if tp[t] and tp[t] / (tp[t] + fp[t]) >= target:
            best = t
    return best


def recall(pos: npt.NDArray[np.int32], t: int | None) -> float | None:
    return None if t is None else round(float(np.mean(pos <= t)), 4)


def summarise(
    hasher: str, rows: list[npt.NDArray[np.int32]], transforms: list[str], n_orig: int, default_t: int | None,
) -> dict[str, Any]:
    d = np.stack(rows).reshape(len(transforms), n_orig, n_orig)  # [transform, original, bank entry]
    own = np.arange(n_orig)
    pos = d[:, own, own]  # (T, N)
    masked = d.copy()
    masked[:, own, own] = NO_MATCH + 1
    neg = masked.min(axis=2)  # nearest other original
    others = d[:, ~np.eye(n_orig, dtype=bool)]  # every non-matching comparison
    t = choose_threshold(pos.ravel(), neg.ravel(), PRECISION_TARGET)
    out: dict[str, Any] = {
        "threshold": t,
        "threshold_rule": ("precision >= 99.99%" if pos.size >= 10_000 else "no negative within (precision 100%)"),
        "positives": int(pos.size),
        "negatives": int(neg.size),
        "negative_comparisons": int(others.size),
        "min_negative_distance": int(neg.min()),
        "recall": {tr: recall(pos[i], t) for i, tr in enumerate(transforms)},
        "recall_overall": recall(pos.ravel(), t),
        "default_threshold": default_t,
    }
    if default_t is not None:
        fp = int((neg <= default_t).sum())
        tp = int((pos <= default_t).sum())
        out["recall_at_default"] = {tr: recall(pos[i], default_t) for i, tr in enumerate(transforms)}
        out["recall_overall_at_default"] = recall(pos.ravel(), default_t)
        out["false_matches_at_default"] = fp
        out["precision_at_default"] = round(tp / (tp + fp), 6) if tp + fp else None
        out["recall_at_wide"] = {tr: recall(pos[i], WIDE_THRESHOLD) for i, tr in enumerate(transforms)}
        out["false_matches_at_wide"] = int((neg <= WIDE_THRESHOLD).sum())
    return out


# -- cost ------------------------------------------------------------------------------------------------------


def measure_costs(frames: list[Image], repeats: int) -> dict[str, dict[str, float]]:
    """CPU (thread) time of compute_probes per sample, median over frames and repeats, and probes per sample."""
    out: dict[str, dict[str, float]] = {}
    for name, opts in SWITCHES.items():
        times, probes = [], []
        for _ in range(repeats):
            for f in frames:
                t0 = time.thread_time()
                ps = compute_probes(f, opts)
                times.append(time.thread_time() - t0)
                probes.append(len(ps))
        out[name] = {"ms_per_sample": round(1000 * statistics.median(times), 2),
                     "ms_mean": round(1000 * statistics.fmean(times), 2),
                     "probes_per_sample": round(statistics.fmean(probes), 2)}
    return out


# -- false matches at 1M ---------------------------------------------------------------------------------------


def _binom_tail(n: int, t: int) -> float:
    return sum(math.comb(n, k) for k in range(t + 1)) / 2.0**n


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _tail_estimates(hist: npt.NDArray[np.int64], threshold: int) -> dict[str, Any]:
    """Probability that one probe lies within threshold of one unrelated entry, from the measured distances.

    The measured tail never reaches the threshold, so it is extrapolated two ways: a normal with the measured mean
    and standard deviation (optimistic), and an exponential tail through the empirical CDF at 1% and at the
    lowest quantile with at least 10 comparisons below it (pessimistic: a normal tail falls faster).
    """
    n = int(hist.sum())
    values = np.arange(len(hist))
    mean = float((hist * values).sum() / n)
    sd = float(np.sqrt((hist * (values - mean) ** 2).sum() / n))
    cdf = np.cumsum(hist) / n
    p_normal = _normal_cdf((threshold + 0.5 - mean) / sd)
    d_hi = int(np.searchsorted(cdf, 0.01))
    d_lo = int(np.searchsorted(cdf, 10 / n))
    p_exp: float | None = None
    if d_hi > d_lo and cdf[d_lo] > 0:
        slope = (math.log10(cdf[d_hi]) - math.log10(cdf[d_lo])) / (d_hi - d_lo)  # decades per bit
        p_exp = min(1.0, 10 ** (math.log10(cdf[d_lo]) - slope * (d_lo - threshold)))
    return {"comparisons": n, "within_threshold": int(hist[: threshold + 1].sum()),
            "min_distance": int(np.argmax(hist > 0)), "mean": round(mean, 2), "sd": round(sd, 2),
            "p_normal": p_normal, "p_exponential_tail": p_exp}


def false_match_estimate(
    pair_hist: dict[str, npt.NDArray[np.int64]], costs: dict[str, dict[str, float]], frames: list[Image],
    threshold: int, direct_probes: int, seed: int,
) -> dict[str, Any]:
    """Expected false alerts per stream-hour (one sample per 2 s) against a 1M-entry bank.

    A sample with k probes matches some unrelated entry with probability <= k * 1M * p, p the chance that one probe
    lies within the threshold of one unrelated code:
    - uniform: the bank is 1M uniform random codes, p is the binomial tail; checked directly by scanning 1M such
      codes with the probes of non-matching stream frames (Background frames) with every switch on;
    - measured: p from the benchmark's own non-matching (probe, other original) distances, extrapolated (the tail
      is empty below ~90 bits at this size; see _tail_estimates).
    """
    rng = np.random.default_rng(seed)
    bank = rng.integers(0, 256, (BANK_SIZE, CODE_BYTES), dtype=np.uint8)
    codes: list[Codes] = []
    for f in frames:
        codes += [p.codes["pdq"] for p in compute_probes(f, RobustOptions.all()) if p.quality >= MIN_QUALITY]
    queries = np.stack(codes[:direct_probes])
    t0 = time.perf_counter()
    nearest, within = nearest_and_within(bank, queries, threshold)
    scan_ms = 1000 * (time.perf_counter() - t0) / len(queries)
    index = LinearIndex(bank, np.arange(BANK_SIZE, dtype=np.int64))
    t0 = time.perf_counter()
    for i in range(min(3, len(queries))):  # cross-check the fast scan against the reference index
        ids, _ = index.search(queries[i], threshold)
        if len(ids) != within[i]:
            raise AssertionError("nearest_and_within disagrees with LinearIndex")
    linear_ms = 1000 * (time.perf_counter() - t0) / min(3, len(queries))
    del index, bank
    p_uniform = _binom_tail(256, threshold)
    per_hour = SAMPLES_PER_HOUR * BANK_SIZE
    out: dict[str, Any] = {
        "threshold": threshold, "bank_size": BANK_SIZE, "samples_per_hour": SAMPLES_PER_HOUR,
        "uniform": {"p_per_comparison": p_uniform, "direct_probes": len(queries), "direct_hits": int(sum(within)),
                    "nearest_distance": min(nearest), "median_nearest_distance": float(np.median(nearest)),
                    "scan_ms_per_probe": round(scan_ms, 2), "linear_index_ms_per_probe": round(linear_ms, 2)},
        "per_switch": {},
    }
    for name in SWITCHES:
        probes = costs[name]["probes_per_sample"]
        tail = _tail_estimates(pair_hist[f"pipeline/{name}"], threshold)
        out["per_switch"][name] = {
            "probes_per_sample": probes,
            "alerts_per_hour_uniform": min(SAMPLES_PER_HOUR, per_hour * probes * p_uniform),
            **tail,
            "alerts_per_hour_normal": min(SAMPLES_PER_HOUR, per_hour * probes * tail["p_normal"]),
            "alerts_per_hour_exponential_tail": (None if tail["p_exponential_tail"] is None else
                                                 min(SAMPLES_PER_HOUR, per_hour * probes * tail["p_exponential_tail"])),
        }
    return out


def run(n_images: int, transforms: Sequence[str], cost_frames: int, cost_repeats: int, direct_probes: int,
        seed: int, stream_bgs: int = 2, stream_times: int = 5) -> dict[str, Any]:
    started = time.perf_counter()
    say(f"generating {n_images} originals")
    styles, originals = make_originals(n_images)
    scaled = [ingest_scale(o) for o in originals]
    banks = {h: np.stack([fn(s) for s in scaled]) for h, fn in GLOBAL_HASHERS.items()}
    with_crops = crop_bank(scaled)
    rows: dict[str, list[npt.NDArray[np.int32]]] = {}
    bar_hits: dict[str, int] = {}
    pair_hist: dict[str, npt.NDArray[np.int64]] = {}
    for ti, tr in enumerate(transforms):
        say(f"transform {tr} ({ti + 1}/{len(transforms)}), {time.perf_counter() - started:.0f} s")
        fn = TRANSFORMS[tr]
        bar_hits[tr] = 0
        for i, img in enumerate(originals):
            sample = ingest_scale(jpeg(fn(img, seed * 7919 + i), 80))
            for h, hfn in GLOBAL_HASHERS.items():
                rows.setdefault(h, []).append(hamming(banks[h], hfn(sample)))
            probes = compute_probes(sample, RobustOptions.all())
            bar_hits[tr] += any(p.view == "stripped" for p in probes)
            for key, row in _pipeline_rows(probes, banks["pdq"], i, pair_hist).items():
                rows.setdefault(key, []).append(row)
            rows.setdefault(BANK_CROPS_KEY, []).append(bank_crops_row(probes, with_crops, len(originals), i,
                                                                       pair_hist))
    summaries = {}
    for key, r in rows.items():
        default_t = DEFAULT_THRESHOLDS.get(key, PDQ_DEFAULT_THRESHOLD)
        summaries[key] = summarise(key, r, list(transforms), len(originals), default_t)

    say("measuring cost per switch")
    frames = [ingest_scale(o) for o in originals[:cost_frames]]
    frames = frames[: len(frames) // 2] + [ingest_scale(letterbox(o, 0)) for o in originals[len(frames) // 2 :
                                                                                            cost_frames]]
    costs = measure_costs(frames, cost_repeats)
    bars_frames = sum(bool(detect_bars(f)) for f in frames)

    say("false matches against 1M random codes")
    backgrounds = [Background(900_000 + k, ingest_width(), ingest_width() * 9 // 16) for k in range(stream_bgs)]
    stream_frames = [jpeg(b.frame(7.3 * t), 80) for b in backgrounds for t in range(stream_times)]
    fm = false_match_estimate(pair_hist, costs, stream_frames, PDQ_DEFAULT_THRESHOLD, direct_probes, seed)

    dflt = summaries[DEFAULT_KEY]
    targets = []
    for tr, goal in TARGETS.items():
        if tr not in transforms:
            continue
        at31, atc = dflt["recall_at_default"][tr], dflt["recall"][tr]
        atb = summaries[BANK_CROPS_KEY]["recall_at_default"][tr]
        atw = dflt["recall_at_wide"][tr]
        targets.append({"transform": tr, "target": goal,
                        "recall": at31, "met": at31 >= goal,
                        "threshold_chosen": dflt["threshold"], "recall_at_chosen": atc, "met_at_chosen": atc >= goal,
                        "recall_bank_crops": atb, "met_bank_crops": atb >= goal,
                        "recall_at_wide": atw, "met_at_wide": atw >= goal})
    hashers = summaries
    return {
        "benchmark": "eval_images",
        "images": len(originals),
        "styles": {s: styles.count(s) for s in sorted(set(styles))},
        "size": [WIDTH, HEIGHT],
        "ingest_width": ingest_width(),
        "transforms": list(transforms),
        "reencode_after_transform": "JPEG q80",
        "min_quality": MIN_QUALITY,
        "precision_target": PRECISION_TARGET,
        "switches": {k: {n: getattr(o, n) for n in SWITCH_NAMES} for k, o in SWITCHES.items()},
        "hashers": hashers,
        "bars_detected": bar_hits,
        "costs": costs,
        "cost_frames": {"frames": len(frames), "with_bars": bars_frames, "repeats": cost_repeats,
                        "size": list(frames[0].shape[1::-1])},
        "false_match_1m": fm,
        "targets": targets,
        "targets_met": all(t["met"] for t in targets),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
