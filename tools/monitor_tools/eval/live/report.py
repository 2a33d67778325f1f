"""`monitor eval`: the targets, the PNG plots and report.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor_tools.eval.live.common import (
    APPEARANCE_LATENCY_SLACK_S,
    BANK_SIZE,
    KEYFRAME_LATENCY_TARGET_S,
    PRECISION_TARGET,
    RECALL_TARGETS,
    REPORTED_ONLY,
)


def fmt(v: Any, nd: int = 2) -> str:
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
                                f"{al['stream_hours']:.2f} stream-hours; direct 95% bound in 10 h: {fmt(bound)} "
                                f"(a direct bound below 1 needs {fm['samples_needed_for_10h_bound']:,} samples)",
                    "met": met if fm["bank_size"] >= BANK_SIZE else None})
    lat = doc["latency"]
    pk = lat["from_keyframe_s"]["p95"]
    rtmp = doc["setup"]["transport"] == "rtmp"
    out.append({"target": "latency from carrying keyframe p95 <= 0.5 s (RTMP)",
                "measured": f"p95 {fmt(pk)} s, max {fmt(lat['from_keyframe_s']['max'])} s over "
                            f"{doc['setup']['transport']}",
                "met": None if pk is None else (pk <= KEYFRAME_LATENCY_TARGET_S if rtmp else None)})
    pa = lat["from_appearance_s"]["p95"]
    limit = doc["setup"]["gop_s"] + APPEARANCE_LATENCY_SLACK_S
    out.append({"target": f"latency from first appearance <= one GOP + 0.5 s ({limit:g} s, p95)",
                "measured": f"p95 {fmt(pa)} s, max {fmt(lat['from_appearance_s']['max'])} s",
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
        f"{fmt(doc['generators']['max_lag_s'])} s.", "",
        "## Targets", "",
        "| target | measured | met |", "|---|---|---|",
    ]
    for t in doc["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += ["", "Recall targets are judged on the observed proportion; with a handful of appearances per "
              "transform the 95% lower bound (shown) is far below the target, so a `yes` says the live run is "
              "consistent with the target, not that it proves it (the offline image benchmark, "
              "`tools/monitor_tools/eval/images/`, has the statistical power).", "",
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
                     f"{fmt(la['p50'])} / {fmt(la['p95'])} | {fmt(offline.get(name, {}).get('median'), 0)} |")
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
        lines.append(f"| {label} | {p['n']} | {fmt(p['p50'])} | {fmt(p['p95'])} | {fmt(p['max'])} |")
    lines += ["", "Alerting keyframe (0 = the first keyframe that carried the picture): "
              + ", ".join(f"#{k}: {v}" for k, v in lat["alerting_keyframe"].items()), ""]
    al = doc["alerts"]
    lines += ["## False alerts", "",
              f"Live: {al['false']} false alerts of {al['total']} in {al['stream_hours']:.2f} stream-hours "
              f"({fmt(al['false_per_stream_hour'])} per stream-hour); precision {_pct(al['precision'])}.", ""]
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
            lines.append(f"- rule of three (none observed): 95% upper bound {fmt(fm['rule_of_three_per_sample'], 6)} "
                         f"per sample = {fmt(fm['rule_of_three_per_stream_hour'], 3)} per stream-hour = "
                         f"{fmt(fm['rule_of_three_in_10_stream_hours'], 2)} in 10 stream-hours; a direct bound "
                         f"below one in 10 stream-hours needs {fm['samples_needed_for_10h_bound']:,} samples;")
        else:
            lines.append(f"- rate {fmt(fm['per_sample_rate'], 6)} per sample = "
                         f"{fmt(fm['expected_false_alerts_per_stream_hour'], 3)} per stream-hour;")
        lines += [f"- model, random codes: P(distance <= {fm['threshold']}) = {fm['uniform_p_per_comparison']:.3g} "
                  f"per comparison (binomial), x {fm['bank_size']:,} codes x {fm['probes_per_sample']} probes x "
                  f"1800 samples = {fm['uniform_expected_per_stream_hour']:.3g} per stream-hour;",
                  f"- model, known pictures: the samples' nearest distances (median {fmt(kf['median'], 0)}, 1st "
                  f"percentile {fmt(kf['p01'], 0)}) with a normal lower tail give "
                  f"{_g(kf['p_per_sample'])} per sample (indicative: an extrapolation far beyond the data);",
                  f"- estimate: {fm['estimated_false_alerts_per_stream_hour']:.3g} false alerts per stream-hour, "
                  f"{fm['estimated_false_alerts_in_10_stream_hours']:.3g} in 10 stream-hours;",
                  f"- nearest distances seen: to the known pictures {fm['nearest_known_min']}, to the random codes "
                  f"{fm['nearest_random_min']} (median {fmt(fm['nearest_random_median'], 0)}, a sample of "
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
