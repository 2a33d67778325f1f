"""The image benchmark's Markdown tables, for either corpus."""

from __future__ import annotations

from typing import Any

from monitor_tools.eval.images.corpus import BANK_CROPS_KEY, DEFAULT_KEY, WIDE_THRESHOLD


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _sci(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


def markdown(doc: dict[str, Any]) -> str:
    transforms = doc["transforms"]
    lines = [f"Recall (%) per transform at the threshold keeping precision >= 99.99% ({doc['images']} originals, "
             f"{len(transforms)} transforms, each also JPEG q80):", ""]
    lines.append("| hasher | threshold | overall | " + " | ".join(transforms) + " |")
    lines.append("|---" * (len(transforms) + 3) + "|")
    for key, s in doc["hashers"].items():
        cells = [_pct(s["recall"][tr]) for tr in transforms]
        lines.append(f"| {key} | {s['threshold']} | {_pct(s['recall_overall'])} | " + " | ".join(cells) + " |")
    lines += ["", "Recall (%) at the fixed default threshold (PDQ 31, pHash 40):", ""]
    lines.append("| hasher | threshold | false matches | overall | " + " | ".join(transforms) + " |")
    lines.append("|---" * (len(transforms) + 4) + "|")
    for key, s in doc["hashers"].items():
        if s.get("default_threshold") is None:
            continue
        cells = [_pct(s["recall_at_default"][tr]) for tr in transforms]
        lines.append(f"| {key} | {s['default_threshold']} | {s['false_matches_at_default']} | "
                     f"{_pct(s['recall_overall_at_default'])} | " + " | ".join(cells) + " |")
    cw, ch = doc["cost_frames"]["size"]
    lines += ["", f"Cost per sample at {cw}x{ch} (CPU ms, median; probes = lookups per bank):", "",
              "| switches | ms/sample | mean ms | probes/sample |", "|---|---|---|---|"]
    for name, c in doc["costs"].items():
        lines.append(f"| {name} | {c['ms_per_sample']} | {c['ms_mean']} | {c['probes_per_sample']} |")
    fm = doc["false_match_1m"]
    u = fm["uniform"]
    lines += ["", f"False alerts per stream-hour against a 1M bank at threshold {fm['threshold']} (1 sample / 2 s; "
              f"direct scan of 1M uniform codes: {u['direct_hits']} hits for {u['direct_probes']} probes, nearest "
              f"{u['nearest_distance']}):", "",
              "| switches | probes | uniform codes | measured pairs | min | mean | sd | normal fit | exp. tail |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, f in fm["per_switch"].items():
        lines.append(f"| {name} | {f['probes_per_sample']} | {f['alerts_per_hour_uniform']:.1e} | {f['comparisons']} | "
                     f"{f['min_distance']} | {f['mean']} | {f['sd']} | {f['alerts_per_hour_normal']:.1e} | "
                     f"{_sci(f['alerts_per_hour_exponential_tail'])} |")
    fw = doc["hashers"][DEFAULT_KEY]["false_matches_at_wide"]
    lines += ["", "Targets at the default switches, at threshold 31 and at the chosen (precision) threshold; then with "
              "a bank that also holds crop windows of each picture (`monitor hash --crops`), at 31; then at a bank "
              f"threshold of {WIDE_THRESHOLD} (matches beyond 31 confirmed by 2 of 3 samples; {fw} false matches "
              "here):", "",
              f"| transform | target | recall @31 | met | recall @chosen | met | bank with crops @31 | met | "
              f"@{WIDE_THRESHOLD} | met |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "NO"}
    for t in doc["targets"]:
        lines.append(f"| {t['transform']} | {_pct(t['target'])} | {_pct(t['recall'])} | {yes[t['met']]} | "
                     f"{_pct(t['recall_at_chosen'])} (t={t['threshold_chosen']}) | {yes[t['met_at_chosen']]} | "
                     f"{_pct(t['recall_bank_crops'])} | {yes[t['met_bank_crops']]} | "
                     f"{_pct(t['recall_at_wide'])} | {yes[t['met_at_wide']]} |")
    return "\n".join(lines) + "\n"


def markdown_natural(doc: dict[str, Any]) -> str:
    """Per split, one row per transform: recall (%) at 31 of plain PDQ, the default switches (natural and generated
    pictures) and the default switches against a bank with crop windows; then the targets and the distances."""
    transforms = doc["transforms"]
    c = doc["natural_corpus"]
    lines = [f"Natural corpus: {c['pictures']} pictures from {len(c['packages'])} packages; generated: "
             f"{doc['generated_pictures']}; threshold {doc['threshold']}; each sample also JPEG q80 and scaled to "
             f"{doc['ingest_width']} px.", ""]
    cols = [("pdq", "natural"), (DEFAULT_KEY, "natural"), (DEFAULT_KEY, "generated"), (BANK_CROPS_KEY, "natural")]
    for split_name, s in doc["splits"].items():
        p = s["pictures"]
        hs = s["hashers"]
        lines += [f"**{split_name}** ({p['natural']} natural + {p['generated']} generated pictures, {s['samples']} "
                  "samples), recall (%) at 31:", "",
                  "| transform | PDQ, natural | default, natural | default, generated | default + bank crop windows, "
                  "natural |", "|---|---|---|---|---|"]
        for tr in transforms:
            lines.append(f"| {tr} | " + " | ".join(_pct(hs[k]["recall_at_31"][cl][tr]) for k, cl in cols) + " |")
        lines.append("| **overall** | " + " | ".join(_pct(hs[k]["overall_at_31"][cl]) for k, cl in cols) + " |")
        lines.append("| false matches | " + " | ".join(str(hs[k]["false_matches_at_31"]) for k, _ in cols) + " |")
        lines.append("| nearest unrelated | " + " | ".join(str(hs[k]["min_unrelated_distance"]) for k, _ in cols)
                     + " |")
        lines.append("")
    for split_name, s in doc["splits"].items():
        sm = s.get("stream_mode")
        if not sm:
            continue
        lines += [f"**{split_name}, stream mode** (each layout fixed over {sm['content_samples']} samples of other "
                  "pictures, then the known one; natural pictures), recall (%) at 31:", "",
                  "| transform | default + layout probes | default alone (last sample) | layout found | median bits | "
                  "false matches | nearest unrelated |", "|---|---|---|---|---|---|---|"]
        for tr, t in sm["transforms"].items():
            lines.append(f"| {tr} | {_pct(t['recall_at_31'])} | {_pct(t['recall_at_31_without_layout'])} | "
                         f"{_pct(t['layout_found'])} | {t['median_distance']:.0f} | {t['false_matches_at_31']} | "
                         f"{t['min_unrelated_distance']} |")
        lines.append("")
    lines += ["Targets (held-out split, natural class, default switches, at 31, bank without crop windows):", "",
              "| what | target | measured | met |", "|---|---|---|---|"]
    for t in doc["targets_held_out"]:
        v, goal = t["recall"], t["target"]
        ratio = isinstance(goal, float) and goal <= 1
        lines.append(f"| {t['transform']} | {_pct(goal) if ratio else goal} | {_pct(v) if ratio else v} | "
                     f"{'yes' if t['met'] else 'NO'} |")
    fa = doc["false_alerts_1m"]
    lines += ["", f"Held-out samples against {fa['bank_size']} codes ({fa['real_entries']} real codes of the tuning "
              "split: originals, crop windows, probes of transformed samples; the rest uniform random): "
              f"{fa['samples']} samples ({fa['stream_hours_at_1_per_2s']} stream-hours at "
              f"one sample per 2 s), {fa['probes']} probes; samples with a match within {fa['threshold']}: "
              f"{fa['samples_with_a_hit_real']} on real codes, {fa['samples_with_a_hit_random']} on random ones; "
              f"nearest real code {fa['nearest_real_min']} bits (percentiles: {fa['nearest_real_percentiles']})."]
    cost = doc["cost"]
    lines += ["", f"Cost of the default switches: {cost['ms_per_sample_median']} ms per {cost['size'][0]}x"
              f"{cost['size'][1]} sample (median; p90 {cost['ms_per_sample_p90']}), {cost['frames']} frames."]
    return "\n".join(lines) + "\n"
