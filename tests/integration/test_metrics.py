"""Prometheus metrics and /healthz of a running monitor; JSON logs with stream ids."""

from __future__ import annotations

import contextlib
import hashlib
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


@pytest.mark.slow
def test_classifier_metrics_of_a_running_monitor(
    mosquitto: Mosquitto, tmp_path: Path, monitor_factory: Callable[..., MonitorProcess]
) -> None:
    """A worker process runs the demonstration model and a service adapter whose endpoint refuses connections; the
    parent's /metrics shows what both did (monitor/ops/classifier_metrics.py), from the worker's stats reports."""
    from prometheus_client.parser import text_string_to_metric_families

    from monitor_tools.classifier_models import build_testcard_model

    model = build_testcard_model(tmp_path / "testcard.onnx")
    port, mport, closed = free_port(), free_port(), free_port()
    gen = subprocess.Popen([sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
                            "--duration", "40"], cwd=REPO)
    time.sleep(0.5)
    labels = [{"name": "testcard", "threshold": 0.6}, {"name": "other", "threshold": None}]
    mon = monitor_factory({
        "node": "m", "broker": {"url": mosquitto.url}, "workers": 1,
        "streams": [{"id": "cam", "url": f"tcp://127.0.0.1:{port}"}],
        "analyses": [{"kind": "known_content"},
                     {"kind": "onnx_classifier", "name": "testcard", "model": str(model), "input_size": [64, 64],
                      "providers": "cpu", "labels": labels, "sampling": {"every_k": 1, "batch_wait_ms": 20}},
                     {"kind": "service_classifier", "name": "vendor", "url": f"https://127.0.0.1:{closed}/v1",
                      "model_id": "vendor-v1", "timeout_s": 1, "breaker_failures": 2, "breaker_reset_s": 600,
                      "labels": labels, "sampling": {"every_k": 1}}],
        "metrics": {"enabled": True, "port": mport},
    })

    def values() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = _get(f"http://127.0.0.1:{mport}/metrics")
        if status != 200:
            return {}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def v(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **lbl: str) -> float:
        return got.get((name, tuple(sorted(lbl.items()))), 0.0)

    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    try:
        deadline = time.monotonic() + 35
        while time.monotonic() < deadline:
            time.sleep(1.0)
            with contextlib.suppress(OSError):
                got = values()
            if (v(got, "monitor_classifier_inferences_total", analysis="testcard", outcome="below_threshold") >= 3
                    and v(got, "monitor_classifier_circuit", analysis="vendor", state="open") == 1):
                break
    finally:
        gen.kill()
        mon.stop()
    assert v(got, "monitor_classifier_inferences_total", analysis="testcard", outcome="below_threshold") >= 3, (
        {k: x for k, x in got.items() if "classifier" in k[0]}, mon.log())
    assert v(got, "monitor_classifier_inferences_total", analysis="testcard", outcome="over_threshold") == 0
    assert v(got, "monitor_classifier_batch_size_count", analysis="testcard") >= 1
    assert v(got, "monitor_classifier_inference_seconds_count", analysis="testcard") >= 1
    assert 0 < v(got, "monitor_classifier_max_score", analysis="testcard", label="other") <= 1
    assert v(got, "monitor_classifier_info", analysis="testcard", model_id="sha256:" + hashlib.sha256(
        model.read_bytes()).hexdigest(), providers="CPUExecutionProvider") == 1
    # the service: connections refused, counted by kind; two in a row opened the circuit
    assert v(got, "monitor_classifier_circuit", analysis="vendor", state="open") == 1
    assert v(got, "monitor_classifier_circuit", analysis="vendor", state="closed") == 0
    assert v(got, "monitor_classifier_circuit_opened_total", analysis="vendor") == 1
    # (requests of one batch already allowed when the circuit opened still go out and fail)
    assert v(got, "monitor_classifier_service_errors_total", analysis="vendor", kind="connect") >= 2
    assert v(got, "monitor_classifier_inferences_total", analysis="vendor", outcome="failed") >= 2
    assert v(got, "monitor_classifier_skipped_total", analysis="testcard") == 0  # every_k 1
    assert "Traceback" not in mon.log()
