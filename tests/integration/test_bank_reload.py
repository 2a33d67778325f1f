"""Banks change while the monitor runs: reloaded from disk without a restart; negative banks suppress alerts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from test_streams.infra import Mosquitto, free_port
from tests.conftest import REPO, MonitorProcess, MqttCollector

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]


def gen(port: int, show: str, duration: int = 30) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
                             "--duration", str(duration), "--show", show], cwd=REPO)


def replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: the watcher never reads half a file


def test_hot_reload_and_negative_bank(
    mosquitto: Mosquitto, bank_csv: Path, tmp_path: Path,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    rows = bank_csv.read_text().splitlines()  # header, known-0, known-1, known-2
    live_bank = tmp_path / "live.csv"
    live_bank.write_text(rows[0] + "\n")  # empty at start
    benign = tmp_path / "benign.csv"
    benign.write_text("\n".join([rows[0], rows[2]]) + "\n")  # known-1 is declared benign
    positive = tmp_path / "positive.csv"
    positive.write_text("\n".join([rows[0], rows[2]]) + "\n")  # ... and is also on a positive list
    p1, p2 = free_port(), free_port()
    gens = [gen(p1, "0:2:60", 60), gen(p2, "1:2:60", 60)]  # long enough for a loaded machine: killed at the end
    collector = collector_factory(mosquitto.port, "r/#")
    time.sleep(0.5)
    mon = monitor_factory({
        "node": "r", "broker": {"url": mosquitto.url, "topic_prefix": "r"},
        "streams": [{"id": "reloaded", "url": f"tcp://127.0.0.1:{p1}"}, {"id": "benign", "url": f"tcp://127.0.0.1:{p2}"}],
        "banks": [{"name": "live", "path": str(live_bank)}, {"name": "positive", "path": str(positive)},
                  {"name": "benign", "path": str(benign), "negative": True}],
        "bank_reload": {"interval_s": 0.5},
    })
    try:
        assert collector.wait_for(lambda m: m.topic == "r/r/streams/reloaded" and m.json()["state"] == "live", 20)
        time.sleep(3)
        assert not collector.matching(lambda m: "/alerts/" in m.topic)
        replace(live_bank, rows[0] + "\nnot-a-hash,1,,,\n")  # a broken edit: refused, old bank kept
        time.sleep(2)
        replace(live_bank, "\n".join(rows[:2]) + "\n")  # now with known-0
        alerts = collector.wait_for(lambda m: m.topic == "r/r/alerts/reloaded", 15)
        assert alerts and alerts[0].json()["bank"] == "live"
        time.sleep(3)
    finally:
        for g in gens:
            g.kill()
        mon.stop()
    log = mon.log()
    assert "bank reload refused, the loaded banks stay in use" in log and "live.csv:2:" in log
    assert "banks reloaded" in log
    assert not collector.matching(lambda m: m.topic == "r/r/alerts/benign"), "negative bank must suppress"
