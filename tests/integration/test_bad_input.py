"""Bad input gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from test_streams.infra import Mosquitto, free_port
from tests.conftest import MonitorProcess, MqttCollector, run_cli

GOOD_HASH = "f" * 64


def _no_traceback(out: str) -> None:
    assert "Traceback" not in out, out


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("node: a\nstreams:\n  - id: s1\n    urll: rtmp://127.0.0.1/live/x\n")
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 2
    _no_traceback(r.stderr)
    assert f"{cfg}: streams.0.urll: unknown key" in r.stderr
    assert f"{cfg}: streams.0.url: Field required" in r.stderr


def test_bad_value_and_yaml_syntax_are_located(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("ingest:\n  read_timeout_s: -1\n")
    r = run_cli("run", "--config", str(cfg), "--validate-config")
    assert r.returncode == 2 and "ingest.read_timeout_s: Input should be greater than 0" in r.stderr
    cfg.write_text("streams: [\n  - id: x\n")
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 2
    _no_traceback(r.stderr)
    assert f"{cfg}:2:3: expected the node content" in r.stderr


def test_malformed_hash_list_line_names_file_and_line(tmp_path: Path) -> None:
    bank = tmp_path / "list.txt"
    bank.write_text(f"{GOOD_HASH}\n# a comment\nnot-a-hash\n{GOOD_HASH}\n")
    r = run_cli("run", "--bank", str(bank), "--validate-config")
    assert r.returncode == 2
    _no_traceback(r.stderr)
    assert f"{bank}:3: 'not-a-hash' is not a 64-digit hex pdq hash (nothing loaded from this file)" in r.stderr


def test_missing_bank_file(tmp_path: Path) -> None:
    r = run_cli("run", "--bank", str(tmp_path / "nope.csv"), "--validate-config")
    assert r.returncode == 2 and "nope.csv: cannot read: No such file or directory" in r.stderr


def test_valid_config_validates(tmp_path: Path) -> None:
    bank = tmp_path / "list.csv"
    bank.write_text(f"hash,indicator_id\n{GOOD_HASH},42\n")
    r = run_cli("run", "--bank", str(bank), "--stream", "rtmp://127.0.0.1:1/live/a", "--validate-config")
    assert r.returncode == 0, r.stderr
    assert "OK (1 streams, 1 banks, 1 entries)" in r.stdout


def test_broker_refusing_the_connection() -> None:
    port = free_port()  # nothing listens there
    r = run_cli("run", "--broker", f"mqtt://127.0.0.1:{port}", "--stream", "rtmp://127.0.0.1:1/live/a")
    assert r.returncode == 3
    _no_traceback(r.stderr)
    assert f"cannot connect to MQTT broker mqtt://127.0.0.1:{port}: connection refused" in r.stderr
    r = run_cli("console", "--broker", f"mqtt://127.0.0.1:{port}")
    assert r.returncode == 3 and "connection refused" in r.stderr


def test_console_rejects_a_bad_broker_url() -> None:
    r = run_cli("console", "--broker", "http://127.0.0.1:1883")
    assert r.returncode == 2 and "mqtt://HOST:PORT" in r.stderr
    _no_traceback(r.stderr)


@pytest.mark.realinfra
def test_unreachable_stream_is_retried_with_backoff_and_reported(
    mosquitto: Mosquitto,
    collector_factory: Callable[..., MqttCollector],
    monitor_factory: Callable[..., MonitorProcess],
) -> None:
    collector = collector_factory(mosquitto.port, "t/+/streams/#")
    dead = f"rtmp://127.0.0.1:{free_port()}/live/nobody"
    mon = monitor_factory({
        "node": "n1",
        "broker": {"url": mosquitto.url, "topic_prefix": "t"},
        "streams": [{"id": "dead", "url": dead}],
        "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.6, "open_timeout_s": 2},
    })
    time.sleep(6)
    assert mon.proc.poll() is None, "the monitor must keep running"
    code = mon.stop()
    log = mon.log()
    assert code == 0
    _no_traceback(log)
    states = [m.json() for m in collector.matching(lambda m: m.topic == "t/n1/streams/dead")]
    retries = [s for s in states if s["state"] == "reconnecting"]
    assert len(retries) >= 3, states
    assert all("connection refused" in s["detail"] for s in retries)
    delays = [s["retry_in_s"] for s in retries]
    # Exponential with jitter in [0.5, 1] of the base: the base doubles until the cap.
    assert delays[0] <= 0.2 and max(delays) <= 1.6 and max(delays) > delays[0]
    assert "stream dead: reconnecting (connection refused" in log
