"""`monitor bench ingest --quick`: one JSON document with sane figures from the offline paths and from the real
engine live next to the floor; every helper (nginx, Mosquitto, publishers, monitor, floor) stopped afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monitor_tools.bench.ingest.cli import main
from tests.conftest import require_tools


def _children() -> set[int]:
    """Pids of this process's live children (ffmpeg publishers, nginx) from /proc."""
    me = str(os.getpid())
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            out.add(int(d.name))
    return out


@pytest.mark.realinfra
@pytest.mark.slow
def test_quick_bench_prints_one_sane_json_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_tools()
    before = _children()
    assert main(["--quick", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # exactly one document: json.loads rejects trailing data

    assert report["mode"] == "quick"
    assert report["config"]["decoder_threads"] == 1
    thr = report["throughput"]
    key, full = thr["keyframe_path"], thr["full_decode_path"]
    assert key["media_s_per_cpu_s"] > 0 and full["media_s_per_cpu_s"] > 0
    assert thr["ratio"] > 1
    assert key["samples_per_run"] == full["samples"] > 0
    assert key["matches_per_run"] > 0 and key["alerts_per_run"] == key["matches_per_run"]
    assert full["frames_decoded"] > 10 * full["samples"]
    assert thr["matcher"]["lookups_per_sample"] >= 1
    single = thr["single_probe"]
    assert single["matcher"]["lookups_per_sample"] == 1
    assert single["ratio"] > 1 and single["keyframe_path"]["media_s_per_cpu_s"] > 0
    assert all(v >= 0 for v in thr["keyframe_path_stages"].values())

    live = report["live"]
    assert live["streams"] == 4 and live["streams_live_at_start"] == {"engine": 4}
    engine, floor = live["engine"], live["floor"]
    # the real engine: a `monitor run` process tree, measured from /proc, next to the floor on the same streams
    assert engine["process_exit"] is None and engine["cpu_s"] > 0 and floor["cpu_s"] > 0
    assert live["engine_vs_floor"] == pytest.approx(
        engine["cpu_s_per_media_s_per_stream"] / floor["cpu_s_per_media_s_per_stream"], abs=0.02)
    assert floor["streams_reporting"] == 4 and floor["keyframes_decoded"] > 0
    assert engine["keyframes_decoded_in_window"] > 0 and engine["samples_in_window"] > 0
    lag = engine["sample_lag_ms"]
    assert lag["n"] > 0 and lag["p50_ms"] <= lag["p95_ms"] <= lag["p99_ms"]
    alert = engine["keyframe_read_to_alert_ms"]  # the bank holds a keyframe of the clip: every stream alerts
    assert alert["n"] >= 4 and 0 < alert["p50_ms"] <= alert["p95_ms"] <= alert["p99_ms"]
    assert engine["rss_mb"]["at_n_streams"] > engine["rss_mb"]["idle"] > 0
    assert engine["dropped_samples"]["total"] >= 0 and engine["reconnects"] >= 0
    assert live["machine"]["publishers_exited_early"] == 0
    assert set(report["targets"]) >= {"throughput_media_s_per_cpu_s", "ratio_vs_full_decode", "engine_vs_floor",
                                      "alert_p95_s", "dropped", "rss_per_stream_mb"}
    assert not report["targets"]["alert_p95_s"]["met"]  # 4 streams say nothing of the 100-stream target
    assert _children() <= before  # every publisher and nginx stopped


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--streams", "0"])
    with pytest.raises(SystemExit):
        main(["--skip-live", "--live-only"])
    with pytest.raises(SystemExit):
        main(["--chunk-size", "0"])
