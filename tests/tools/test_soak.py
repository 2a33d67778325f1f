"""The soak harness: growth arithmetic, and a short real run through the monitor."""

from __future__ import annotations

import json

import pytest

from monitor_tools.bench.soak import growth, main


def test_growth_after_warmup() -> None:
    samples = [{"t": float(t), "rss_bytes": 100.0 + (t if t >= 10 else 50), "fds": 10.0, "threads": 5.0,
                "processes": 3.0} for t in range(0, 30, 5)]
    g = growth(samples, warmup_s=10)
    assert g["samples_after_warmup"] == 4
    assert g["rss_bytes"]["first"] == 110 and g["rss_bytes"]["last"] == 125
    assert g["rss_growth_pct"] == pytest.approx(100 * 15 / 110, abs=0.01)
    assert g["fds"]["change"] == 0 and g["threads"]["slope_per_hour"] == 0


@pytest.mark.realinfra
@pytest.mark.slow
def test_quick_soak_runs_the_real_monitor(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import require_tools

    require_tools()
    assert main(["--streams", "2", "--minutes", "0.25", "--warmup", "10", "--interval", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["streams"] == 2 and report["samples_after_warmup"] >= 3
    assert report["metrics"]["monitor_samples_total"] > 0
    assert report["fds"]["last"] > 0 and report["threads"]["last"] > 0
