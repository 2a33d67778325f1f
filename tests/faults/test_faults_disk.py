"""The outbox's disk fills up under a running monitor: nothing is lost, sampling goes on, and it says so.

The monitor's state_dir (outbox, evidence log) is a small tmpfs; a filler file takes every free byte while known
images are shown on one stream and a control stream runs beside it. Needs root (mount); outside CI it skips
without, with CI=true it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from test_streams.infra import Mosquitto, free_port
from tests.conftest import REPO, MonitorProcess, MqttCollector, require_tools, run_cli

from .test_faults_delivery import DurableCollector

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]


def _unavailable(msg: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that can be filled in a moment and freed again. Always unmounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _unavailable("needs root and mount(8): the outbox's disk is a tmpfs the test fills")
    where = tmp_path / "small-disk"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)  # busy: detach it anyway


def fill(where: Path) -> Path:
    """Take every free byte of the file system at where; returns the filler file."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:
        block = b"\0" * 65536
        while True:
            try:
                f.write(block)
            except OSError:
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    assert shutil.disk_usage(where).free < 4096
    return filler


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in the metrics"
    return float(m.group(1))


class Clock:
    """Stream time of the live sources, from the moment their common start was observed."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log()}"
        time.sleep(0.2)


def test_outbox_disk_full_nothing_lost_sampling_goes_on_and_it_says_so(
    small_tmpfs: Path, bank_csv: Path, monitor_factory: Callable[..., MonitorProcess],
    collector_factory: Callable[..., MqttCollector],
) -> None:
    require_tools()
    broker = Mosquitto(persistence=True).start()  # keeps the durable subscriber's queue across its restart
    pk, pc, mport = free_port(), free_port(), free_port()
    state = small_tmpfs / "state"
    # Known images on stream "k" (bank entries 1..3 are known-0..2), in stream seconds: entry 1 before the disk
    # fills, entry 2 while it is full (broker up), entry 3 while it is full and the broker is down, entry 1 again
    # after space is freed. Stream "c" never shows one: the control whose sampling must not change.
    shows = ["0:3:7", "1:12:16", "2:21:25", "0:35:39"]
    gens = [subprocess.Popen([sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
                              "--duration", "44", "--fps", "10", *[a for s in show for a in ("--show", s)]],
                             cwd=REPO)
            for port, show in ((pk, shows), (pc, []))]
    alerts = DurableCollector(broker.port, "d/+/alerts/+")
    watch = collector_factory(broker.port, "d/#")
    time.sleep(0.5)
    mon = monitor_factory({
        "node": "n1", "broker": {"url": broker.url, "topic_prefix": "d"}, "state_dir": str(state),
        "streams": [{"id": "k", "url": f"tcp://127.0.0.1:{pk}"}, {"id": "c", "url": f"tcp://127.0.0.1:{pc}"}],
        "banks": [{"name": "known", "path": str(bank_csv)}],
        "incidents": {"close_after_s": 8},  # entry 1 shown again at 35 s is a new incident, a new alert
        "ingest": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5},
        "delivery": {"health_interval_s": 1},
        "metrics": {"enabled": True, "port": mport},
    })
    filler: Path | None = None
    scrapes: dict[str, tuple[float, str]] = {}

    def scrape(label: str) -> str:
        scrapes[label] = (time.monotonic(), get(f"http://127.0.0.1:{mport}/metrics")[1])
        return scrapes[label][1]

    def entries() -> dict[str, int]:
        return {k: len(v) for k, v in alerts.alert_ids_by_entry().items()}

    def states(stream: str) -> list[str]:
        return [m.json()["state"] for m in watch.matching(lambda m: m.topic == f"d/n1/streams/{stream}")]

    def health() -> list[dict[str, object]]:
        return [m.json() for m in watch.matching(lambda m: m.topic == "d/n1/health" and bool(m.payload))]

    try:
        wait_until(lambda: states("k")[-1:] == ["live"] and states("c")[-1:] == ["live"], 30, "both streams live",
                   mon.log)
        clock = Clock()  # the sources start when the monitor connects: stream time is about this clock
        wait_until(lambda: entries() == {"1": 1}, 15, "the alert of entry 1 (stored as usual)", mon.log)

        clock.sleep_until(9)
        scrape("filled")
        filler = fill(small_tmpfs)
        wait_until(lambda: entries() == {"1": 1, "2": 1}, 15, "entry 2, published directly", mon.log)
        wait_until(lambda: any(h["outbox_writable"] is False for h in health()), 5,
                   "a health message saying the outbox cannot be written", mon.log)
        full_healthz = get(f"http://127.0.0.1:{mport}/healthz")
        full = scrape("full, broker up")

        clock.sleep_until(18)
        broker.stop()
        clock.sleep_until(27)  # entry 3 (21-25 s) has been seen: held in memory, neither stored nor deliverable
        held = scrape("full, broker down")
        filler.unlink()
        filler = None
        wait_until(lambda: metric(scrape("freed"), "monitor_outbox_held_in_memory") == 0
                   and metric(scrapes["freed"][1], "monitor_outbox_writable") == 1, 10,
                   "the held messages stored once there is space", mon.log)
        stored = scrapes["freed"][1]

        clock.sleep_until(30)
        broker.start()
        clock.sleep_until(40)  # entry 1 shown again (35-39 s) was seen: stored as usual; the sources end at 44 s
        scrape("after")
        recovered_healthz = get(f"http://127.0.0.1:{mport}/healthz")
        live_states = {s: states(s) for s in ("k", "c")}
        # The monitor's reconnect backoff grew during the 12 s outage: it may take up to 16 s more to connect.
        wait_until(lambda: entries() == {"1": 2, "2": 1, "3": 1}, 40, "entries 3 and 1, delivered from the outbox",
                   lambda: f"{mon.log()}\nreceived: {entries()}")
        time.sleep(1.5)  # a duplicate would arrive now
        assert mon.proc.poll() is None, mon.log()
        assert all(g.wait(30) == 0 for g in gens)
    finally:
        if filler is not None:
            filler.unlink()
        for g in gens:
            g.kill()
        exit_code = mon.stop()
        alerts.stop()
        broker.close()

    log = mon.log()
    # Every alert arrived, each once: one alert id per appearance (a re-send would repeat an id, not add one).
    assert entries() == {"1": 2, "2": 1, "3": 1}, log

    # The failure was visible where an operator looks, and so was its end: a log line naming the file and the
    # cause, /healthz, the metrics and the node's health message.
    outbox_path = re.escape(str(state / "outbox.sqlite"))
    assert re.search(rf"outbox {outbox_path}: put failed: database or disk is full \(disk full\?", log), log
    assert "held in memory and published directly" in log and "can be written again" in log, log
    assert full_healthz[0] == 503 and "database or disk is full" in full_healthz[1], full_healthz
    assert recovered_healthz == (200, json.dumps({"ok": True, "problems": []})), recovered_healthz
    assert metric(full, "monitor_outbox_writable") == 0 and metric(full, "monitor_outbox_held_total") >= 1
    assert metric(held, "monitor_outbox_held_in_memory") >= 1  # entry 3's alert (and its incident update)
    assert metric(stored, "monitor_outbox_depth") >= 1
    assert metric(scrapes["after"][1], "monitor_outbox_writable") == 1
    assert metric(scrapes["after"][1], "monitor_outbox_dropped_total") == 0
    unwritable = [h for h in health() if h["outbox_writable"] is False]
    assert unwritable and "disk is full" in str(unwritable[0]["outbox_error"]), unwritable[:1]
    assert health()[-1]["outbox_writable"] is True and health()[-1]["held_in_memory"] == 0

    # Both streams kept their sampling rate (every keyframe, one each 2 s) while the disk was full and after,
    # and stayed live.
    for stream in ("k", "c"):
        name = f'monitor_samples_total{{stream="{stream}"}}'
        for a, b in (("filled", "freed"), ("freed", "after")):
            (ta, ma), (tb, mb) = scrapes[a], scrapes[b]
            expected = (tb - ta) / 2
            got = metric(mb, name) - metric(ma, name)
            print(f"stream {stream}, {a} -> {b}: {got:.0f} samples in {tb - ta:.1f} s")  # shown with -s
            assert got >= expected - 1.5, f"stream {stream} from {a} to {b}: {got} samples in {tb - ta:.1f} s"
        assert set(live_states[stream]) == {"connecting", "live"}, live_states
    # Not one reconnect or stall: the states above may miss a change made while the broker was down, the counter
    # does not.
    assert "monitor_reconnects_total{" not in scrapes["after"][1]
    assert exit_code == 0, log
    assert "Traceback" not in log, log

    # The evidence log lost the records it could not write while full, but its chain is intact.
    done = run_cli("evidence", "verify", str(state / "evidence.sqlite"))
    assert done.returncode == 0, done.stdout + done.stderr
