"""Prometheus metrics and /healthz of a running monitor; JSON logs with stream ids."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.ops.metrics import HealthInput, HealthRules, health
from test_streams.infra import Mosquitto, free_port
from tests.conftest import REPO, MonitorProcess

pytestmark = pytest.mark.realinfra


def test_health_rules() -> None:
    rules = HealthRules(stale_sample_s=10, max_outbox_age_s=60)
    assert health(HealthInput({"a": 95.0, "b": None}), rules, now=100) == (True, [])
    ok, problems = health(HealthInput({"a": 80.0}, ["c"], False, 61.0), rules, now=100)
    assert not ok
    assert problems == ["stream c: worker thread is gone", "stream a: live but no sample for 20 s",
                        "outbox: oldest undelivered message is 61 s old (broker disconnected)"]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow
def test_metrics_endpoint_and_json_logs(
    mosquitto: Mosquitto, bank_csv: Path, monitor_factory: Callable[..., MonitorProcess]
) -> None:
    port, mport = free_port(), free_port()
    gen = subprocess.Popen([sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
                            "--duration", "12", "--show", "0:2:6"], cwd=REPO)
    time.sleep(0.5)
    mon = monitor_factory({
        "node": "m", "broker": {"url": mosquitto.url},
        "streams": [{"id": "cam", "url": f"tcp://127.0.0.1:{port}?user=x&token=hunter2"}],
        "banks": [{"name": "known", "path": str(bank_csv)}],
        "metrics": {"enabled": True, "port": mport}, "log_format": "json",
    })
    try:
        time.sleep(9)
        status, text = _get(f"http://127.0.0.1:{mport}/metrics")
        hstatus, htext = _get(f"http://127.0.0.1:{mport}/healthz")
        gen.wait(20)
    finally:
        gen.kill()
        mon.stop()
    assert status == 200
    assert 'monitor_samples_total{stream="cam"}' in text
    assert 'monitor_streams{state="live"} 1.0' in text
    assert 'monitor_alerts_total{bank="known"} 1.0' in text
    assert 'monitor_incidents_total{bank="known",severity="high"} 1.0' in text
    assert "monitor_sample_lag_seconds_bucket" in text and 'stage="known_content"' in text
    assert "monitor_mqtt_connected 1.0" in text
    assert "hunter2" not in text
    assert hstatus == 200 and json.loads(htext) == {"ok": True, "problems": []}
    lines = [json.loads(ln) for ln in mon.log().splitlines() if ln.startswith("{")]
    assert any(ln.get("stream_id") == "cam" and "live" in ln["msg"] for ln in lines)
    alert_lines = [ln for ln in lines if ln["msg"].startswith("ALERT")]
    assert alert_lines and alert_lines[0]["stream_id"] == "cam" and alert_lines[0]["incident_id"]
    assert "hunter2" not in mon.log()  # secrets in stream URLs never reach the logs
