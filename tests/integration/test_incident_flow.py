"""Incidents end to end: an alert opens one, moderators act on it over MQTT, and the evidence log holds it all."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from test_streams.infra import Mosquitto, free_port
from tests.conftest import REPO, MonitorProcess, MqttCollector, run_cli

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]


def command(incident: dict[str, object], action: str, moderator: str, reason: str = "") -> str:
    return json.dumps({"schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()), "action": action,
                       "incident_id": incident["incident_id"], "stream_id": incident["stream_id"],
                       "moderator": moderator, "reason": reason, "at": "2026-11-28T00:00:00Z"})


def test_incident_commands_and_evidence(
    mosquitto: Mosquitto, bank_csv: Path, tmp_path: Path,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    port = free_port()
    gen = subprocess.Popen([sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
                            "--duration", "24", "--show", "2:2:20"], cwd=REPO)
    collector = collector_factory(mosquitto.port, "i/#")
    time.sleep(0.5)
    state = tmp_path / "state"
    mon = monitor_factory({"node": "n", "broker": {"url": mosquitto.url, "topic_prefix": "i"},
                           "streams": [{"id": "cam", "url": f"tcp://127.0.0.1:{port}"}],
                           "banks": [{"name": "known", "path": str(bank_csv), "severity": "medium"}],
                           "incidents": {"update_interval_s": 1}, "state_dir": str(state)})
    try:
        alerts = collector.wait_for(lambda m: m.topic == "i/n/alerts/cam", 20)
        assert alerts, mon.log()
        alert = alerts[0].json()
        incident_topic = f"i/n/incidents/{alert['incident_id']}"
        opened = collector.wait_for(lambda m: m.topic == incident_topic, 5)[0].json()
        assert opened["status"] == "open" and opened["severity"] == "medium" and opened["entry_id"] == "3"
        assert opened["alert_ids"] == [alert["alert_id"]]

        mqtt_publish.single("i/n/commands", command(opened, "acknowledge", "alice"), qos=1, hostname="127.0.0.1",
                            port=mosquitto.port)
        acked = collector.wait_for(lambda m: m.topic == incident_topic and m.json()["status"] == "acknowledged", 10)
        assert acked and acked[0].json()["history"][-1]["moderator"] == "alice"
        # A malformed command is refused with a reason in the log, and nothing changes.
        mqtt_publish.single("i/n/commands", json.dumps({"action": "dismiss"}), qos=1, hostname="127.0.0.1",
                            port=mosquitto.port)
        mqtt_publish.single("i/n/commands", command(opened, "dismiss", "bob", "a benign test card"), qos=1,
                            hostname="127.0.0.1", port=mosquitto.port)
        dismissed = collector.wait_for(lambda m: m.topic == incident_topic and m.json()["status"] == "dismissed", 10)
        assert dismissed, mon.log()
        time.sleep(3)  # the image stays on screen: no new alert after a dismissal
        assert len(collector.matching(lambda m: m.topic == "i/n/alerts/cam")) == 1
        assert gen.wait(40) == 0
    finally:
        gen.kill()
        assert mon.stop() == 0
    log = mon.log()
    assert "refused a console command" in log and "Traceback" not in log
    proposal = json.loads((state / "negative-proposals.jsonl").read_text().splitlines()[0])
    assert proposal["entry_id"] == "3" and proposal["moderator"] == "bob"

    evidence = state / "evidence.sqlite"
    verify = run_cli("evidence", "verify", str(evidence))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report_path = tmp_path / "report.json"
    export = run_cli("evidence", "export", str(evidence), alert["incident_id"], "--out", str(report_path))
    assert export.returncode == 0, export.stderr
    report = report_path.read_text()
    assert alert["alert_id"] in report and "alice" in report and "bob" in report
    assert alert["sample_hash"] in report
    # The incident's matches are in its report: each match record names the incident it opened or joined.
    matches = json.loads(report)["matches"]
    assert matches and all(m["entry_id"] == alert["entry_id"] for m in matches), matches
