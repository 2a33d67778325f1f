"""Shared fixtures. Real services (Mosquitto, nginx-rtmp, ffmpeg) are started on free loopback ports.

On CI (CI=true) a missing tool fails the test instead of skipping it: those tests are the point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from PIL import Image

from test_streams.images import known_image
from test_streams.infra import Mosquitto, NginxRtmp, missing_tools

REPO = Path(__file__).resolve().parent.parent


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        msg = f"needs Debian packages: {' '.join(missing)} (scripts/test installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    require_tools()
    m = Mosquitto().start()
    yield m
    m.close()


@pytest.fixture
def nginx_rtmp() -> Iterator[NginxRtmp]:
    require_tools()
    n = NginxRtmp().start()
    yield n
    n.close()


@pytest.fixture(scope="session")
def known_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("known")
    out = []
    for seed in range(3):
        p = folder / f"known-{seed}.png"
        Image.fromarray(known_image(seed)).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="session")
def bank_csv(known_pngs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from monitor.ingest.hashfiles import hash_file
    from pipelines.banks import format_bank

    hexes = [next(hash_file(p)).hex for p in known_pngs]
    path = tmp_path_factory.mktemp("bank") / "known.csv"
    path.write_text(format_bank(hexes, "csv", "pdq", [p.name for p in known_pngs]))
    return path


@dataclass
class Collected:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class MqttCollector:
    """A real MQTT subscriber (paho, its own network thread) that records everything it receives."""

    port: int
    topic: str = "#"
    messages: list[Collected] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> MqttCollector:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"collector-{time.time_ns()}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert subscribed.wait(10), "collector could not subscribe"
        return self

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Collected(msg.topic, msg.payload, bool(msg.retain)))

    def matching(self, pred: Callable[[Collected], bool]) -> list[Collected]:
        with self._lock:
            return [m for m in self.messages if pred(m)]

    def wait_for(self, pred: Callable[[Collected], bool], timeout_s: float) -> list[Collected]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.matching(pred)
            if found:
                return found
            time.sleep(0.1)
        return []

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collector_factory() -> Iterator[Callable[..., MqttCollector]]:
    made: list[MqttCollector] = []

    def make(port: int, topic: str = "#") -> MqttCollector:
        c = MqttCollector(port, topic).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@dataclass
class MonitorProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def monitor_factory(tmp_path: Path) -> Iterator[Callable[..., MonitorProcess]]:
    """Start `python -m monitor run` as a real process with a config dict."""
    made: list[MonitorProcess] = []

    def start(config: dict[str, Any], *extra: str) -> MonitorProcess:
        n = len(made)
        config = {"state_dir": str(tmp_path / "state"), **config}
        cfg_path = tmp_path / f"monitor-{n}.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        log_path = tmp_path / f"monitor-{n}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg_path), *extra],
                                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        mp = MonitorProcess(proc, log_path)
        made.append(mp)
        return mp

    yield start
    for mp in made:
        mp.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(autouse=True)
def _restore_log_handlers() -> Iterator[None]:
    """A test that sets up the monitor's logging (monitor.ops.logs.setup_logging) must not leave its handlers behind:
    a later test's log records would go to a stream pytest has closed ("--- Logging error ---" on stderr)."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("monitor")]
    saved = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    yield
    for lg, handlers, level in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
