"""nginx-rtmp tells the monitor about a publish; the monitor attaches, alerts, terminates, and the ban holds."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, free_port

from .conftest import MonitorProcess, MqttCollector, require_tools

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]

SECRET = "test-hook-secret-0123456789"


@pytest.fixture
def hooked_nginx() -> Iterator[tuple[NginxRtmp, int]]:
    require_tools()
    hook_port = free_port()
    base = f"http://127.0.0.1:{hook_port}/hooks/nginx-rtmp?token={SECRET}"
    n = NginxRtmp(notify=f"on_publish {base}; on_publish_done {base}; notify_method post;").start()
    yield n, hook_port
    n.close()


def test_publish_hook_attach_alert_terminate_and_ban(
    mosquitto: Mosquitto,
    hooked_nginx: tuple[NginxRtmp, int],
    known_pngs: list[Path],
    bank_csv: Path,
    collector_factory: Callable[..., MqttCollector],
    monitor_factory: Callable[..., MonitorProcess],
) -> None:
    nginx, hook_port = hooked_nginx
    collector = collector_factory(mosquitto.port)
    mon = monitor_factory({
        "node": "hooked",
        "broker": {"url": mosquitto.url, "topic_prefix": "h"},
        "banks": [{"name": "known", "path": str(bank_csv), "severity": "high"}],
        "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "hooks": {"enabled": True, "port": hook_port, "secret": SECRET,
                  "pull_url_templates": {"nginx-rtmp": f"rtmp://127.0.0.1:{nginx.rtmp_port}/{{app}}/{{name}}"}},
        "servers": [{"kind": "nginx-rtmp", "api_url": nginx.http_base}],
    })
    assert collector.wait_for(lambda m: m.topic == "h/hooked/status" and m.json()["state"] == "online", 20)
    time.sleep(1.0)  # the hook server starts right after the broker connection
    url = nginx.rtmp_url("secret-key-1")
    pub = subprocess.Popen(ffmpeg_publish_cmd(url, duration_s=120, known_png=known_pngs[0], show=(4.0, 120.0)),
                           stderr=subprocess.PIPE)
    try:
        alerts = collector.wait_for(lambda m: "/alerts/" in m.topic, 40)
        assert alerts, mon.log()
        alert = alerts[0].json()
        stream_id = alert["stream_id"]
        assert stream_id == "nginx-rtmp-live-secret-key-1"
        assert alert["entry_id"] == "1" and "secret-key-1" in alert["stream_url"]

        command = {"schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()), "action": "terminate",
                   "incident_id": alert.get("incident_id"), "stream_id": stream_id, "moderator": "alice",
                   "reason": "known content", "at": "2026-01-01T00:00:00Z"}
        mqtt_publish.single("h/hooked/commands", json.dumps(command), qos=1, hostname="127.0.0.1",
                            port=mosquitto.port)
        pub.wait(20)  # the server dropped the publisher
        assert pub.returncode != 0
    finally:
        pub.kill()
        pub.wait()
        assert pub.stderr is not None
        pub.stderr.close()

    # The publishing software comes back under the same key: refused by the publish hook.
    again = subprocess.run(ffmpeg_publish_cmd(url, duration_s=5), capture_output=True, text=True, timeout=30)
    assert again.returncode != 0
    log = mon.log()
    assert "terminate stream nginx-rtmp-live-secret-key-1 by alice: done" in log, log
    assert "publish refused" in log
    assert "secret-key-1" not in log.split("publish refused")[1].splitlines()[0]  # the key is not logged
    code = mon.stop()
    assert code == 0 and "Traceback" not in mon.log()

    # The ban is on disk with its reason and author.
    bans = json.loads((Path(mon.log_path).parent / "state" / "bans.json").read_text())
    text = json.dumps(bans)
    assert "secret-key-1" in text and "alice" in text and "known content" in text


def test_discovery_polls_nginx_stat_and_reconciles(
    mosquitto: Mosquitto,
    nginx_rtmp: NginxRtmp,
    collector_factory: Callable[..., MqttCollector],
    monitor_factory: Callable[..., MonitorProcess],
) -> None:
    collector = collector_factory(mosquitto.port, "d/+/streams/#")
    mon = monitor_factory({
        "node": "disc",
        "broker": {"url": mosquitto.url, "topic_prefix": "d"},
        "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "servers": [{"kind": "nginx-rtmp", "api_url": nginx_rtmp.http_base, "discover": True,
                     "poll_interval_s": 1.0,
                     "pull_url_template": f"rtmp://127.0.0.1:{nginx_rtmp.rtmp_port}/{{app}}/{{name}}"}],
    })
    pub = subprocess.run(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("found"), duration_s=8), timeout=60)
    assert pub.returncode == 0
    topic = "d/disc/streams/nginx-rtmp-live-found"
    ended = collector.wait_for(lambda m: m.topic == topic and bool(m.payload) and m.json()["state"] == "ended", 15)
    cleared = collector.wait_for(lambda m: m.topic == topic and m.payload == b"", 5)
    assert mon.stop() == 0
    states = [m.json()["state"] for m in collector.matching(lambda m: m.topic == topic and bool(m.payload))]
    assert "live" in states, mon.log()
    assert ended and ended[-1].json()["detail"] == "removed"
    assert cleared, "a removed stream's retained state is deleted from the broker"
    assert "discovery: nginx-rtmp lists new stream nginx-rtmp-live-found" in mon.log()
