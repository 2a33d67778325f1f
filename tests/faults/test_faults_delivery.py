"""Alerts are never lost: a broker outage of 30 s, a monitor killed with SIGKILL and restarted, and SIGTERM with
alerts waiting (delivered before exit when the broker is back, kept on disk for the restart when it is not)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from test_streams.infra import Mosquitto, free_port
from tests.conftest import REPO, Collected, MonitorProcess, MqttCollector, require_tools

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
    m = Mosquitto(persistence=True).start()  # sessions survive its restarts (infra hands it its folder)
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
    # Images (bank entries 1..3 are known-0..2): one before the outage, two during it, one after (the broker is
    # back by stream time 44 at the latest: stopped 13.5 s after the monitor's start, for 30 s).
    gen = start_stream(port, 56, ["0:4:8", "1:18:24", "2:32:38", "0:46:52"])
    collector = DurableCollector(durable_broker.port, "f/+/alerts/+")
    time.sleep(0.5)
    mon = monitor_factory({
        "node": "f1", "broker": {"url": durable_broker.url, "topic_prefix": "f"},
        "streams": [{"id": "s", "url": f"tcp://127.0.0.1:{port}"}],
        "banks": [{"name": "known", "path": str(bank_csv)}],
        "incidents": {"close_after_s": 10},  # the image shown again at 46 s is a new incident
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
    # entry 1 is shown twice (4-8 s and 46-52 s): two appearances, two alerts; each other image once.
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


def _alerts_pending(state_dir: Path) -> list[str]:
    """Topics of the messages a stopped monitor left undelivered in its outbox."""
    from monitor.delivery.outbox import Outbox

    with Outbox(state_dir / "outbox.sqlite") as box:
        return [m.topic for m in box.pending(limit=1000)]


def _retained_status(port: int, topic: str) -> str:
    collector = MqttCollector(port, topic).start()
    try:
        got = collector.wait_for(lambda m: m.retain, 10)
    finally:
        collector.stop()
    assert got, f"no retained message on {topic}"
    return str(got[-1].json()["state"])


def _start_and_detect_while_broker_down(
    broker: Mosquitto, bank_csv: Path, state: Path, monitor_factory: Callable[..., MonitorProcess], prefix: str
) -> tuple[MonitorProcess, subprocess.Popen[bytes], dict[str, object]]:
    """A monitor that saw entries 2 and 3 while the broker was down: two alerts and their incidents wait."""
    port = free_port()
    gen = start_stream(port, 20, ["1:3:7", "2:9:13"])
    time.sleep(0.5)
    base: dict[str, object] = {"node": "t1", "broker": {"url": broker.url, "topic_prefix": prefix},
                               "banks": [{"name": "known", "path": str(bank_csv)}], "state_dir": str(state)}
    mon = monitor_factory({**base, "streams": [{"id": "s", "url": f"tcp://127.0.0.1:{port}"}],
                           "ingest": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5}})
    deadline = time.monotonic() + 30
    while "connected to MQTT broker" not in mon.log():
        assert time.monotonic() < deadline and mon.proc.poll() is None, mon.log()
        time.sleep(0.1)
    broker.stop()
    while mon.log().count("ALERT stream=s") < 2:
        assert time.monotonic() < deadline + 30, mon.log()
        time.sleep(0.2)
    time.sleep(1.0)  # the incident updates follow their alerts into the outbox
    return mon, gen, base


def _await_long_mqtt_retry(mon: MonitorProcess, at_least_s: float = 2.0) -> None:
    """Waits for a new 'retry in X s' line from the MQTT client with X >= at_least_s: its next try is that far off."""
    pattern = re.compile(r"MQTT connection lost or refused .*; retry in (\d+(?:\.\d+)?) s")
    seen = len(pattern.findall(mon.log()))
    deadline = time.monotonic() + 60
    while True:
        delays = [float(d) for d in pattern.findall(mon.log())]
        if len(delays) > seen:
            if delays[-1] >= at_least_s:
                return
            seen = len(delays)
        assert time.monotonic() < deadline and mon.proc.poll() is None, mon.log()
        time.sleep(0.05)


def test_sigterm_just_after_the_broker_returns_delivers_what_waits_before_exit(
    durable_broker: Mosquitto, bank_csv: Path, tmp_path: Path, monitor_factory: Callable[..., MonitorProcess]
) -> None:
    state = tmp_path / "state"
    collector = DurableCollector(durable_broker.port, "t/+/alerts/+")
    mon, gen, _ = _start_and_detect_while_broker_down(durable_broker, bank_csv, state, monitor_factory, "t")
    try:
        assert collector.alert_ids_by_entry() == {}
        _await_long_mqtt_retry(mon)  # so the broker is back, and the monitor not yet reconnected, at SIGTERM
        durable_broker.start()
        t0 = time.monotonic()
        mon.proc.send_signal(signal.SIGTERM)
        code = mon.proc.wait(30)
        took = time.monotonic() - t0
        pending_after_exit = _alerts_pending(state)
        time.sleep(2)  # anything the broker still had queued for the collector
    finally:
        gen.kill()
        collector.stop()
    log = mon.log()
    print(f"SIGTERM to exit, broker back: {took:.1f} s")  # shown with -s (docs/fault-cases.md)
    assert code == 0 and took < 15, (code, took, log)
    # Delivered by the process that stopped (nothing else ran): its outbox is empty, each alert arrived once.
    assert pending_after_exit == [], log
    assert {k: len(v) for k, v in collector.alert_ids_by_entry().items()} == {"2": 1, "3": 1}, log
    assert re.search(r"shutting down: delivering \d+ alerts and incident updates that wait", log), log
    assert "shutdown: outbox flushed, every alert and incident update was delivered" in log, log
    assert "node status 'offline' published" in log and "stopped: 2 alerts sent" in log, log
    assert "Traceback" not in log, log
    assert _retained_status(durable_broker.port, "t/t1/status") == "offline"


def test_sigterm_while_the_broker_is_down_keeps_what_waits_for_the_restart(
    durable_broker: Mosquitto, bank_csv: Path, tmp_path: Path, monitor_factory: Callable[..., MonitorProcess]
) -> None:
    state = tmp_path / "state"
    collector = DurableCollector(durable_broker.port, "u/+/alerts/+")
    mon, gen, base = _start_and_detect_while_broker_down(durable_broker, bank_csv, state, monitor_factory, "u")
    try:
        t0 = time.monotonic()
        mon.proc.send_signal(signal.SIGTERM)
        code = mon.proc.wait(30)
        took = time.monotonic() - t0
        left = _alerts_pending(state)
        durable_broker.start()
        restarted = monitor_factory(base)  # same state_dir, no streams: only the outbox to deliver
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(map(len, collector.alert_ids_by_entry().values())) < 2:
            time.sleep(0.3)
        time.sleep(2)  # a duplicate would arrive now
        restarted_code = restarted.stop()
    finally:
        gen.kill()
        collector.stop()
    log = mon.log()
    print(f"SIGTERM to exit, broker unreachable: {took:.1f} s")  # shown with -s (docs/fault-cases.md)
    # The broker was unreachable for the whole shutdown: a bounded wait, then exit 0 with everything on disk.
    assert code == 0 and took < 15, (code, took, log)
    assert sum("/alerts/" in t for t in left) == 2 and sum("/incidents/" in t for t in left) >= 2, left
    assert re.search(r"shutdown: \d+ alerts and incident updates not delivered within 5 s \(broker unreachable\): "
                     r"\d+ stay in the outbox .*outbox\.sqlite and are sent after a restart, 0 held in memory",
                     log), log
    assert "stopped: 2 alerts sent" in log and "Traceback" not in log, log
    assert {k: len(v) for k, v in collector.alert_ids_by_entry().items()} == {"2": 1, "3": 1}, restarted.log()
    assert "undelivered messages from an earlier run" in restarted.log()
    assert restarted_code == 0 and _alerts_pending(state) == []
    assert "shutdown: outbox flushed" in restarted.log()
    assert _retained_status(durable_broker.port, "u/t1/status") == "offline"
