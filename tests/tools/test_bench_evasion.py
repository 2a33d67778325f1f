"""`monitor bench evasion --quick`: one JSON document of the expected shape (figures only, no thresholds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monitor_tools.bench.evasion import QUICK, main
from tests.conftest import require_tools


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            out.add(int(d.name))
    return out


def _number_or_none(v: object) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0)


@pytest.mark.realinfra
@pytest.mark.slow
def test_quick_bench_prints_one_document_of_the_right_shape(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    require_tools()
    before = _children()
    assert main(["--quick", "--cache-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)  # exactly one document

    assert report["mode"] == "quick"
    assert report["config"]["encodings"] == list(QUICK.encodings or ())
    assert set(report["idle_cpu_s_per_s"]) == {"keyframes", "default"}
    assert report["monitor_exit"] == {"keyframes": 0, "default": 0}
    rows = report["encodings"]
    assert [r["name"] for r in rows] == report["config"]["encodings"]
    for row in rows:
        assert row["publisher_exit"] == 0 and row["media_s"] > 0
        assert _number_or_none(row["ratio_default_vs_keyframes"]) and _number_or_none(row["ratio_net_of_idle"])
        for mode in ("keyframes", "default"):
            m = row[mode]
            assert m["cpu_s"] >= 0 and m["cpu_s_per_media_s"] >= 0 and m["cpu_s_per_media_s_net_of_idle"] >= 0
            assert isinstance(m["detected"], bool) and m["alerts"] >= 0
            for k in ("first_alert_media_s", "best_distance", "blind_interval_s", "samples", "escalated"):
                assert _number_or_none(m[k]), (row["name"], mode, k, m[k])
            for k in ("decoded_frames", "evasion_signals"):
                assert m[k] is None or all(_number_or_none(v) for v in m[k].values()), (k, m[k])
    t = report["targets"]
    assert t["control_cost_ratio"]["target"] == "<= 1.3" and "measured" in t["control_cost_ratio"]
    assert set(t["detected_by_default"]) == set(t["detected_by_keyframes"]) == {r["name"] for r in rows}
    assert _children() <= before  # monitors, publishers, nginx and Mosquitto stopped


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--seconds", "3"])
    with pytest.raises(SystemExit):
        main(["--encodings", "no-such-encoding", "--seconds", "9"])
