"""Alerts are never lost: a broker outage of 30 s, and a monitor killed with SIGKILL and restarted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from test_streams.infra import Mosquitto, free_port

from .conftest import REPO, Collected, MonitorProcess, require_tools

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]


class DurableCollector:
    """A subscriber with a persistent session: the broker queues QoS 1 messages for it while it is away."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[Collected] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="durable-collector",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append(Collected(m.topic, m.payload, m.retain))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def alert_ids_by_entry(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for m in list(self.messages):
            body = m.json()
            out.setdefault(body["entry_id"], set()).add(body["alert_id"])
        return out

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def durable_broker() -> Iterator[Mosquitto]:
    require_tools()
    m = Mosquitto(persistence=True).start()
    yield m
    m.close()


def start_stream(port: int, duration: float, shows: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1", "--duration", str(duration)]
    for s in shows:
        cmd += ["--show", s]
    return subprocess.Popen(cmd, cwd=REPO)


def test_broker_down_for_30_s_every_alert_arrives_once(
    durable_broker: Mosquitto, bank_csv: Path, monitor_factory: Callable[..., MonitorProcess]
) -> None:
    port = free_port()
    # Images (bank entries 1..3 are known-0..2): one before the outage, two during it, one after.
    gen = start_stream(port, 62, ["0:4:8", "1:18:24", "2:32:38", "0:52:58"])
    collector = DurableCollector(durable_broker.port, "f/+/alerts/+")
    time.sleep(0.5)
    mon = monitor_factory({
        "node": "f1", "broker": {"url": durable_broker.url, "topic_prefix": "f"},
        "streams": [{"id": "s", "url": f"tcp://127.0.0.1:{port}"}],
        "banks": [{"name": "known", "path": str(bank_csv)}],
        "incidents": {"close_after_s": 10},  # the image shown again at 52 s is a new incident
        "ingest": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5},
    })
    try:
        time.sleep(13)
        assert collector.alert_ids_by_entry().keys() == {"1"}, mon.log()
        durable_broker.stop()
        time.sleep(30)
        durable_broker.start()
        assert gen.wait(60) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(map(len, collector.alert_ids_by_entry().values())) < 4:
            time.sleep(0.5)
    finally:
        gen.kill()
        mon.stop()
        collector.stop()
    by_entry = collector.alert_ids_by_entry()
    # entry 1 is shown twice (4-8 s and 52-58 s): two appearances, two alerts; each other image once.
    assert {k: len(v) for k, v in by_entry.items()} == {"1": 2, "2": 1, "3": 1}, mon.log()
    assert "MQTT connection lost" in mon.log()


def test_sigkill_with_alerts_pending_loses_nothing(
    durable_broker: Mosquitto, bank_csv: Path, tmp_path: Path, monitor_factory: Callable[..., MonitorProcess]
) -> None:
    port = free_port()
    gen = start_stream(port, 16, ["1:5:9"])
    collector = DurableCollector(durable_broker.port, "k/+/alerts/+")
    base = {"node": "k1", "broker": {"url": durable_broker.url, "topic_prefix": "k"},
            "banks": [{"name": "known", "path": str(bank_csv)}], "state_dir": str(tmp_path / "state")}
    time.sleep(0.5)
    mon = monitor_factory({**base, "streams": [{"id": "s", "url": f"tcp://127.0.0.1:{port}"}],
                           "ingest": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5}})
    try:
        time.sleep(3)
        durable_broker.stop()  # the alert for 5-9 s can only go to the outbox
        assert gen.wait(30) == 0
        mon.proc.send_signal(signal.SIGKILL)
        mon.proc.wait(10)
        assert collector.alert_ids_by_entry() == {}
        durable_broker.start()
        restarted = monitor_factory(base)  # same state_dir: the outbox is still there
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not collector.alert_ids_by_entry():
            time.sleep(0.3)
        time.sleep(2)  # a duplicate would arrive now
    finally:
        gen.kill()
        collector.stop()
    assert {k: len(v) for k, v in collector.alert_ids_by_entry().items()} == {"2": 1}, mon.log()
    assert "undelivered messages from an earlier run" in restarted.log()
    assert restarted.stop() == 0
