"""`monitor bench ingest --quick`: one JSON document with sane figures, helpers stopped afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monitor.bench_ingest import main
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

    (run,) = report["live"]["runs"]
    assert run["streams"] == 4 and run["streams_live_at_start"] == 4
    # sharded over reader processes as the monitor's `workers` (one per core by default)
    assert run["reader_processes"] == report["config"]["reader_processes"] == min(64, os.cpu_count() or 1)
    for name in ("lag_ms", "end_to_end_lag_ms"):
        assert run[name]["n"] > 0
        assert 0 <= run[name]["p50_ms"] <= run[name]["p95_ms"] <= run[name]["p99_ms"]
    assert len(run["per_stream"]) == 4
    assert all(s["lag_p95_ms"] is not None and s["keyframes_in_window"] > 0 for s in run["per_stream"])
    assert run["keyframes_received"] > 0 and run["rss_mb"]["at_n_streams"] > 0
    assert set(run["cpu_pct_of_one_core"]) >= {"monitor", "nginx", "publishers"}
    assert set(report["targets"]) >= {"throughput_media_s_per_cpu_s", "ratio_vs_full_decode", "lag_p95_s"}
    assert _children() <= before  # every publisher and nginx stopped


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--streams", "0"])
    with pytest.raises(SystemExit):
        main(["--reader-processes", "0"])
