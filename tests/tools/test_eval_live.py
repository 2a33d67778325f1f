"""`monitor eval` (tools/monitor_tools/eval/live/) and its test streams (tools/test_streams/scenes.py,
tools/test_streams/live.py).

The fast tests check the parts (the full Hamming scan, scoring, planning, scenes, ground truth); the slow one runs a
short evaluation on the embedded path (amqtt, in-process Engine, MPEG-TS over tcp: deterministic, no services)
and fails if detection breaks.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from monitor_tools.eval.live.common import binom_tail, wilson_low
from monitor_tools.eval.live.plan import EvalOptions, plan_streams
from monitor_tools.eval.live.score import score
from monitor_tools.scans import nearest_and_within, nearest_distances
from pipelines.index import LinearIndex
from test_streams.live import Appearance, generate, keyframe_times
from test_streams.scenes import SCENE_KINDS, SceneBackground, make_schedule

REPO = Path(__file__).resolve().parents[2]


def _flip(code: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[rng.choice(256, n, replace=False)] ^= 1
    return np.packbits(bits)


def test_the_full_scan_finds_exactly_what_a_linear_index_finds() -> None:
    rng = np.random.default_rng(7)
    bank = rng.integers(0, 256, (50_000, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (80, 32), dtype=np.uint8)
    for i in range(40):  # neighbours planted at distances 0..39, two of them for some queries
        bank[100 + i] = _flip(queries[i], i, rng)
        if i % 5 == 0 and i <= 30:
            bank[200 + i] = _flip(queries[i], 31 - i, rng)
    index = LinearIndex(bank, np.arange(len(bank), dtype=np.int64))
    for radius in (31, 40):
        _, counts = nearest_and_within(bank, queries, radius)
        assert counts == [len(index.search(q, radius)[0]) for q in queries]
    _, counts = nearest_and_within(bank, queries, 31)
    assert min(counts[:32]) >= 1 and counts[35] == 0
    nearest = nearest_distances(bank, queries[:40])
    assert nearest.tolist() == [min(i, 31 - i) if i % 5 == 0 and i <= 31 else i for i in range(40)]


def test_statistics_helpers() -> None:
    assert binom_tail(256, 256) == pytest.approx(1.0) and binom_tail(256, 128) == pytest.approx(0.5, abs=0.03)
    assert 1e-39 < binom_tail(256, 31) < 1e-36
    low = wilson_low(5, 5)
    assert low is not None and 0.5 < low < 0.6
    assert wilson_low(0, 0) is None


def _truth(appearances: list[dict[str, Any]], duration: float = 60.0) -> dict[str, Any]:
    return {"gop_s": 2.0, "fps": 25, "duration_s": duration, "wall_start": 1000.0, "appearances": appearances}


def _alert(aid: str, sid: str, entry: str, t: float, received_at: float, distance: int = 5) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"alert_id": aid, "stream_id": sid, "entry_id": entry, "media_time_s": t, "distance": distance,
            "received_at": datetime.fromtimestamp(received_at, UTC).isoformat()}


def test_score_windows_latencies_and_false_alerts() -> None:
    a1 = {"image": 1, "start_s": 10.5, "end_s": 16.0, "transform": "none", "entry_ids": ["known-1"],
          "wall_start": 1010.5, "keyframes": [{"t": 12.0, "wall": 1012.0}, {"t": 14.0, "wall": 1014.0}]}
    a2 = {"image": 2, "start_s": 30.2, "end_s": 35.0, "transform": "mirror", "entry_ids": ["known-2"],
          "wall_start": 1030.2, "keyframes": [{"t": 32.0, "wall": 1032.0}, {"t": 34.0, "wall": 1034.0}]}
    truths = {"s1": _truth([a1, a2]), "s2": _truth([])}
    alerts = [
        (_alert("a", "s1", "known-1", 12.0, 1012.02), 1012.10),  # detected at the first keyframe
        (_alert("b", "s1", "known-2", 20.0, 1020.0), 1020.1),  # right entry, outside the window: false
        (_alert("c", "s2", "known-1", 12.0, 1012.0), 1012.1),  # right time, wrong stream: false
        (_alert("d", "s1", "known-2", 36.0, 1036.0, 25), 1036.3),  # within end + one GOP: detects a2
    ]
    doc = score(truths, alerts, strong_distance=16)
    recs = {r["index"]: r for r in doc["appearances"] if r["stream_id"] == "s1"}
    assert recs[0]["detected"] and recs[0]["keyframe_index"] == 0 and recs[0]["strong"]
    assert recs[0]["latency_from_appearance_s"] == pytest.approx(1.6, abs=1e-3)
    assert recs[0]["latency_from_keyframe_s"] == pytest.approx(0.08, abs=1e-3)
    assert recs[1]["detected"] and not recs[1]["strong"] and recs[1]["keyframe_index"] is None
    assert doc["alerts"]["false"] == 2 and doc["alerts"]["true"] == 2
    assert doc["alerts"]["stream_hours"] == pytest.approx(120 / 3600, abs=1e-4)
    assert doc["per_transform"]["none"]["recall"] == 1.0
    assert doc["totals"] == {"appearances": 2, "detected": 2, "not_watched": 0, "recall": 1.0}
    missed = score(truths, alerts[1:3])
    assert missed["totals"]["detected"] == 0 and missed["alerts"]["false"] == 2


def test_plans_spread_transforms_and_respect_incident_rules(tmp_path: Path) -> None:
    opts = EvalOptions(out=tmp_path, streams=3, duration_s=200.0, transforms=["none", "mirror", "crop10"])
    plans, dropped = plan_streams(opts, 10.0)
    apps = [a for p in plans for a in p]
    counts = {t: sum(1 for a in apps if a.transform == t) for t in opts.transforms}
    assert dropped == 0 and max(counts.values()) - min(counts.values()) <= 1
    assert len({a.image for a in apps}) == len(apps)  # every generated appearance is a different picture
    for p in plans:
        assert all(a.start_s >= 10.0 and a.end_s <= 199.0 for a in p)
        assert all(b.start_s - a.end_s >= 3.99 for a, b in itertools.pairwise(p))
        assert all(any(a.start_s <= k < a.end_s for k in range(0, 200, 2)) for a in p)  # a keyframe carries it
    pool = [tmp_path / f"p{i}.png" for i in range(2)]
    plans, dropped = plan_streams(opts, 10.0, pool, close_after_s=120.0, quarantine_streams=5)
    assert dropped > 0  # two files cannot fill three streams without re-showing one within 150 s
    for p in plans:
        for a, b in itertools.pairwise(p):
            assert a.source != b.source or b.start_s - a.end_s >= 150.0


def test_scenes_are_deterministic_and_varied() -> None:
    sched = make_schedule(3, 120.0)
    assert sched == make_schedule(3, 120.0) and sched != make_schedule(4, 120.0)
    assert {s.kind for s in sched} == set(SCENE_KINDS)
    assert all(3.0 <= s.end_s - s.start_s <= 9.0 for s in sched)
    assert all(a.kind != b.kind and a.end_s == b.start_s for a, b in itertools.pairwise(sched))
    bg1, bg2 = SceneBackground(3, 320, 180, 120.0), SceneBackground(3, 320, 180, 120.0, sched)
    for sc in sched[:6]:
        f = bg1.frame(sc.start_s + 0.5)
        assert f.shape == (180, 320, 3) and f.dtype == np.uint8
        assert np.array_equal(f, bg2.frame(sc.start_s + 0.5))
        moved = np.abs(bg1.frame(sc.start_s + 1.0).astype(int) - f.astype(int)).mean()
        if sc.kind == "talking_head":
            assert moved < 3  # mostly static: only the head moves
        elif sc.kind == "game":
            assert moved > 10  # fast scrolling under a fixed HUD


def test_generator_truth_bank_and_keyframes(tmp_path: Path) -> None:
    shows = [Appearance(5, 2.5, 7.0, "mirror", 11), Appearance(6, 8.0, 11.0, "none", 12)]
    out = tmp_path / "s.ts"
    truth = generate(str(out), width=320, height=180, fps=10, duration_s=12, shows=shows, realtime=False,
                     truth_path=tmp_path / "truth.json", scenes=True, bank_path=tmp_path / "bank.csv")
    assert json.loads((tmp_path / "truth.json").read_text()) == json.loads(json.dumps(truth))
    apps = json.loads(json.dumps(truth))["appearances"]
    assert [a["entry_ids"] for a in apps] == [["known-5"], ["known-6"]]
    assert [[k["t"] for k in a["keyframes"]] for a in apps] == [[4.0, 6.0], [8.0, 10.0]]
    assert apps[0]["transform"] == "mirror" and apps[0]["wall_start"] is not None
    bank = (tmp_path / "bank.csv").read_text().splitlines()
    assert bank[0].startswith("hash,") and [line.split(",")[1] for line in bank[1:]] == ["known-5", "known-6"]
    assert (tmp_path / "originals" / "known-5.png").exists()
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        keys = [float(p.pts * v.time_base) for p in c.demux(v) if p.is_keyframe and p.pts is not None]
    assert keys == keyframe_times(12, 10, 2.0)


@pytest.mark.slow
def test_quick_eval_on_the_embedded_path_detects_plain_and_reencoded_pictures(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "monitor_tools.eval.live", "--quick", "--infra", "embedded", "--streams", "2",
           "--duration", "40", "--transforms", "none,reencode,mirror", "--background-samples", "100",
           "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["setup"]["infra"] == "embedded" and doc["setup"]["transport"] == "tcp"
    pt = doc["per_transform"]
    assert pt["none"]["appearances"] >= 1 and pt["none"]["recall"] == 1.0
    assert pt["reencode"]["appearances"] >= 1 and pt["reencode"]["recall"] == 1.0
    assert doc["totals"]["not_watched"] == 0
    assert doc["alerts"]["false"] == 0 and doc["alerts"]["total"] >= 2
    for a in doc["appearances"]:
        if a["detected"]:
            assert 0 <= a["latency_from_keyframe_s"] < 2.0
            assert a["start_s"] - 0.05 <= a["alert_media_time_s"] <= a["end_s"] + 2.0
    fm = doc["false_match_1m"]
    assert fm["bank_size"] == 1_000_000 and fm["samples"] >= 100 and fm["samples_with_match"] == 0
    for name in ("report.md", "latency.png", "recall.png", "distances.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "| reencode |" in report
