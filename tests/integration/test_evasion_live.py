"""Issue 12 on real parts: adversarial encodings that hide a known picture from keyframe-only sampling.

First each recorded encoding is shown to do what it claims (`test_streams.evasion.check_recording`): keyframes
never come within 31 bits of the bank entry where the encoding says so, a full decode finds the picture for about
its time on screen. Then every recording is published at once through nginx-rtmp (`-c copy`, `-re`: the bytes
checked are the bytes on the wire) to two real `monitor run` processes sharing one Mosquitto: one at the default
sampling config, one with `sampling.mode: keyframes`. The default one must alert on every stream and keep each
stream's blind interval (`monitor_stream_blind_interval_seconds`) within 2.5 s; the keyframe-only one must miss
every encoding that is blind by construction (so the live test can fail) and still catch the control stream.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_streams import evasion
from test_streams.infra import Mosquitto, NginxRtmp, free_port, stop_process
from tests.conftest import REPO, Collected, MonitorProcess, MqttCollector, require_tools

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]

LAYOUT = evasion.Layout()  # 640x360p30, the picture from 4 s to 8 s, 11 s in all
ENCODINGS = evasion.encodings(LAYOUT)
NAMES = [e.name for e in ENCODINGS]
BLIND = [e.name for e in ENCODINGS if e.old_sampler_blind]
SEEN_BY_KEYFRAMES = [e.name for e in ENCODINGS if not e.old_sampler_blind]
MAX_BLIND_S = 2.5


@pytest.fixture(scope="module")
def recordings(known_pngs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_tools()
    folder = tmp_path_factory.mktemp("evasion")
    return {e.name: evasion.record(e, folder, known_pngs[0], LAYOUT) for e in ENCODINGS}


@pytest.fixture(scope="module")
def entry_hex(bank_csv: Path) -> str:
    return next(line for line in bank_csv.read_text().splitlines() if line and not line.startswith(("#", "hash")))\
        .split(",")[0]


@pytest.mark.parametrize("name", NAMES)
def test_recording_does_what_it_claims(name: str, recordings: dict[str, Path], entry_hex: str) -> None:
    enc = evasion.by_name(LAYOUT)[name]
    check = evasion.check_recording(recordings[name], entry_hex)
    assert evasion.problems(enc, check, LAYOUT) == [], check.summary()


def test_live_and_recorded_commands_encode_the_same_stream(known_pngs: list[Path], tmp_path: Path) -> None:
    """What the checker examines (recorded) is what a live publisher sends: only -re and the output differ."""
    for e in ENCODINGS:
        live_cmd = evasion.publish_cmd(e, "rtmp://127.0.0.1:1935/live/x", known_pngs[0], LAYOUT)
        rec_cmd = evasion.record_cmd(e, tmp_path / "x.flv", known_pngs[0], LAYOUT)
        assert live_cmd[-3:] == ["-f", "flv", "rtmp://127.0.0.1:1935/live/x"]
        assert [a for a in live_cmd[:-3] if a != "-re"] == rec_cmd[:-4], e.name
        assert live_cmd.index("-re") < live_cmd.index("-i")  # an input option: paced by the graph's timestamps


# -- the live run -----------------------------------------------------------------------------------------------
def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def samples_of(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of metric `name`: sorted label pairs -> value."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{([^}}]*)\}})? (\S+)$", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
            out[labels] = float(m.group(2))
    return out


def stream_value(text: str, name: str, stream: str, **labels: str) -> float | None:
    want = {"stream": stream, **labels}
    found = [v for k, v in samples_of(text, name).items() if all(dict(k).get(a) == b for a, b in want.items())]
    return sum(found) if found else None


@dataclass
class Node:
    name: str
    mon: MonitorProcess
    metrics_port: int
    blind_s: dict[str, float] = field(default_factory=dict)  # the largest value scraped while running
    last_metrics: str = ""
    exit_code: int | None = None


@dataclass
class LiveRun:
    nodes: dict[str, Node]
    messages: list[Collected]
    publisher_codes: dict[str, int]

    @property
    def alerts(self) -> list[Collected]:
        return [m for m in self.messages if "/alerts/" in m.topic]

    def states(self, node: str, stream: str) -> list[str]:
        topic = f"ev/{node}/streams/{stream}"
        return [m.json()["state"] for m in self.messages if m.topic == topic and m.payload]

    def alerts_for(self, node: str, stream: str) -> list[dict[str, Any]]:
        return [a.json() for a in self.alerts if a.topic == f"ev/{node}/alerts/{stream}"]

    def log(self, node: str) -> str:
        return self.nodes[node].mon.log()[-6000:]


def _start_monitor(folder: Path, node: str, nginx: NginxRtmp, broker: Mosquitto, bank: Path,
                   sampling: dict[str, Any]) -> Node:
    port = free_port()
    config: dict[str, Any] = {
        "node": node, "state_dir": str(folder / f"state-{node}"),
        "broker": {"url": broker.url, "topic_prefix": "ev"},
        "streams": [{"id": e.name, "url": nginx.rtmp_url(e.name)} for e in ENCODINGS],
        "banks": [{"name": "known", "path": str(bank)}],
        "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "metrics": {"enabled": True, "port": port},
        # Every stream shows the same entry: not a noisy list entry to quarantine after 5 streams.
        "incidents": {"quarantine_streams": 100},
    }
    if sampling:
        config["sampling"] = sampling
    cfg = folder / f"{node}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log_path = folder / f"{node}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    return Node(node, MonitorProcess(proc, log_path), port)


@pytest.fixture(scope="module")
def live(recordings: dict[str, Path], bank_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    """One nginx, one Mosquitto, two monitors (default sampling, keyframes only), every encoding at once."""
    folder = tmp_path_factory.mktemp("evasion-live")
    broker = Mosquitto().start()
    nginx = NginxRtmp().start()
    collector = MqttCollector(broker.port, "ev/#").start()
    nodes: dict[str, Node] = {}
    publishers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        nodes["adaptive"] = _start_monitor(folder, "adaptive", nginx, broker, bank_csv, {})
        nodes["keyframes"] = _start_monitor(folder, "keyframes", nginx, broker, bank_csv, {"mode": "keyframes"})
        def online(node: str) -> bool:
            return bool(collector.matching(lambda m: m.topic == f"ev/{node}/status" and b"online" in m.payload))

        deadline = time.monotonic() + 30
        for n in nodes.values():  # online, or exited (a config it refuses): the other one still runs
            while time.monotonic() < deadline and n.mon.proc.poll() is None and not online(n.name):
                time.sleep(0.1)
        time.sleep(1.5)  # the readers are connected to the idle streams (or about to retry)
        for e in ENCODINGS:
            publishers[e.name] = subprocess.Popen(evasion.copy_publish_cmd(recordings[e.name],
                                                                           nginx.rtmp_url(e.name)),
                                                  stdin=subprocess.DEVNULL)
        done = threading.Event()

        def poll_metrics() -> None:
            while not done.is_set():
                for n in nodes.values():
                    if n.mon.proc.poll() is not None:
                        continue
                    try:
                        text = scrape(n.metrics_port)
                    except OSError:
                        continue
                    n.last_metrics = text
                    for e in ENCODINGS:
                        v = stream_value(text, "monitor_stream_blind_interval_seconds", e.name)
                        if v is not None:
                            n.blind_s[e.name] = max(v, n.blind_s.get(e.name, 0.0))
                done.wait(1.0)

        poller = threading.Thread(target=poll_metrics, daemon=True)
        poller.start()
        codes = {name: p.wait(LAYOUT.duration_s + 60) for name, p in publishers.items()}
        time.sleep(3.0)  # the last samples are analysed and their alerts delivered
        done.set()
        poller.join(10)
        for n in nodes.values():
            n.exit_code = n.mon.stop()
            (folder / f"{n.name}.metrics").write_text(n.last_metrics)
        time.sleep(0.5)
        yield LiveRun(nodes, collector.matching(lambda m: True), codes)
    finally:
        for p in publishers.values():
            stop_process(p)
        for n in nodes.values():
            n.mon.stop()
        collector.stop()
        nginx.close()
        broker.close()


def test_publishers_and_monitors_ran(live: LiveRun) -> None:
    assert set(live.publisher_codes.values()) == {0}, live.publisher_codes
    node = live.nodes["adaptive"]
    assert node.exit_code == 0, live.log("adaptive")
    assert "Traceback" not in node.mon.log()


@pytest.mark.parametrize("name", NAMES)
def test_default_sampling_alerts_on_every_encoding(live: LiveRun, name: str) -> None:
    alerts = live.alerts_for("adaptive", name)
    assert alerts, f"no alert on {name}; log:\n{live.log('adaptive')}"
    first = min(a["media_time_s"] for a in alerts)
    assert LAYOUT.show_at_s - 0.1 <= first <= LAYOUT.show_at_s + LAYOUT.show_s + 0.5, alerts[0]
    assert {a["entry_id"] for a in alerts} == {"1"} and all(a["distance"] <= 31 for a in alerts)


@pytest.mark.parametrize("name", NAMES)
def test_default_sampling_blind_interval_is_short(live: LiveRun, name: str) -> None:
    node = live.nodes["adaptive"]
    tail = node.last_metrics[-3000:]
    assert name in node.blind_s, f"monitor_stream_blind_interval_seconds of {name} never scraped; metrics:\n{tail}"
    assert node.blind_s[name] <= MAX_BLIND_S, node.blind_s


@pytest.mark.parametrize("name", BLIND)
def test_keyframe_only_sampling_misses_the_blind_encodings(live: LiveRun, name: str) -> None:
    node = live.nodes["keyframes"]
    # The mode must have been accepted and the stream received: otherwise "no alert" would prove nothing.
    assert node.exit_code == 0, live.log("keyframes")
    states = live.states("keyframes", name)
    if name == "intra_refresh":
        # Its one IDR is the stream's first frame: a keyframe-only reader that joins after it never gets a
        # picture, so it may never be `live`; connected and not failed is what shows it received the stream.
        assert "connecting" in states and "failed" not in states, live.log("keyframes")
    else:
        assert "live" in states, live.log("keyframes")
    assert live.alerts_for("keyframes", name) == [], live.alerts_for("keyframes", name)


@pytest.mark.parametrize("name", SEEN_BY_KEYFRAMES)
def test_keyframe_only_sampling_still_sees_the_plain_encodings(live: LiveRun, name: str) -> None:
    assert live.nodes["keyframes"].exit_code == 0, live.log("keyframes")
    assert live.alerts_for("keyframes", name), live.log("keyframes")


def test_forward_decoding_shows_in_the_metrics(live: LiveRun) -> None:
    """The default sampler decoded forward on the adversarial streams (the counter the bench reads too)."""
    text = live.nodes["adaptive"].last_metrics
    forward = {e.name: stream_value(text, "monitor_decoded_frames_total", e.name, kind="forward") for e in ENCODINGS}
    assert any(v is not None for v in forward.values()), text[-3000:]
    assert all((forward[n] or 0) > 0 for n in ("forced_keyframes", "gop30", "bframes_only")), forward


