"""Worker processes: streams are spread over them, and a worker that dies comes back with its streams."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd
from tests.conftest import MonitorProcess, MqttCollector

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_a_killed_worker_process_is_restarted_with_its_streams(
    mosquitto: Mosquitto, nginx_rtmp: NginxRtmp, known_pngs: list[Path], bank_csv: Path,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    collector = collector_factory(mosquitto.port, "w/#")
    pubs = [subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url(name), duration_s=40, known_png=known_pngs[0],
                                                show=(28.0, 40.0)))
            for name in ("a", "b")]
    mon = monitor_factory({"node": "w", "broker": {"url": mosquitto.url, "topic_prefix": "w"}, "workers": 2,
                           "streams": [{"id": n, "url": nginx_rtmp.rtmp_url(n)} for n in ("a", "b")],
                           "banks": [{"name": "known", "path": str(bank_csv)}],
                           "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0}})
    try:
        for n in ("a", "b"):
            assert collector.wait_for(lambda m, n=n: m.topic == f"w/w/streams/{n}" and m.json()["state"] == "live", 30)
        workers = [p for p in children(mon.proc.pid) if "spawn_main" in cmdline(p)]
        assert len(workers) == 2, [cmdline(p) for p in children(mon.proc.pid)]
        os.kill(workers[0], signal.SIGKILL)  # as if FFmpeg had crashed inside it
        time.sleep(6)
        assert mon.proc.poll() is None
        # Both streams are alerted when the known image appears at 28 s, the restarted worker's included.
        for n in ("a", "b"):
            assert collector.wait_for(lambda m, n=n: m.topic == f"w/w/alerts/{n}", 30), mon.log()
    finally:
        for p in pubs:
            p.kill()
            p.wait()
        mon.stop()
    log = mon.log()
    assert "worker process 0 died" in log or "worker process 1 died" in log
    # A kill from outside blames no stream (only a process's own fault does: tests/faults/test_faults_quarantine.py).
    assert "died (killed by SIGKILL); restarting it with its 1 streams" in log, log
    assert "quarantined" not in log


def test_a_worker_reports_its_bank_reload_to_the_main_process(bank_csv: Path, tmp_path: Path) -> None:
    """Issue 19: a worker's reload failure used to be logged only in that worker. Now each worker sends its result
    back: the engine logs it where the operator looks."""
    import threading

    from monitor.config.models import BankConfig, IngestConfig, MatchingConfig, SamplingConfig
    from monitor.runtime.bank_reload import ReloadResult
    from monitor.runtime.workers import ShardedSupervisor

    class Sink:
        def __init__(self) -> None:
            self.results: list[ReloadResult] = []
            self.got = threading.Event()

        def on_state(self, change: object) -> None:
            pass

        def on_sample(self, *args: object) -> None:
            pass

        def on_bank_reload(self, result: ReloadResult) -> None:
            self.results.append(result)
            self.got.set()

    good = BankConfig(name="known", path=bank_csv)
    sink = Sink()
    sup = ShardedSupervisor(1, IngestConfig(), SamplingConfig(), [good], MatchingConfig(), sink)  # type: ignore[arg-type]
    sup.start()
    try:
        broken = tmp_path / "broken.csv"
        broken.write_text(bank_csv.read_text() + "not-a-hash,x\n")  # changed again after the engine validated it
        sup.reload_banks([BankConfig(name="known", path=broken)])
        assert sink.got.wait(60), "no reload result reached the main process"
        result = sink.results[-1]
        assert not result.ok and result.worker == 0 and "broken.csv" in result.detail, result
    finally:
        sup.stop_all()
