"""`monitor eval`: scoring (pure): ground truths and received alerts in; detections, latencies and false alerts out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monitor_tools.eval.live.common import RECALL_TARGETS, iso_time, percentiles, wilson_low


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
                    "latency_from_keyframe_s": round(recv - iso_time(str(first["received_at"])), 3),
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
