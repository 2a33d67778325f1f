"""A stream whose input crashes its worker process is quarantined; the other streams of that worker carry on.

Crashes are injected (monitor/ingest/crashguard.py): MONITOR_FAULT_CRASH_STREAM=<id> makes a worker process kill itself
with SIGSEGV, delivered to the thread of that stream, at the stream's first FFmpeg decode call. The first tests
check the attribution on bare child processes (who is blamed when several threads are inside FFmpeg, or none);
the last ones run real worker processes and a real `monitor run` on live RTMP streams.
The end-to-end test checks that the crash happened where it should: inside the reader's own decode call.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.config.models import IngestConfig, MatchingConfig, SamplingConfig, StreamConfig
from monitor.ingest import crashguard
from monitor.ingest.crashguard import CrashTable, native_iter, native_section
from monitor.runtime.messages import SampleReport, SampleTiming, StateChange, StreamState
from monitor.runtime.workers import ShardedSupervisor
from pipelines.base import Finding
from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, free_port, stop_process
from tests.conftest import Collected, MonitorProcess, MqttCollector

# --------------------------------------------------------------------------------------------------------------
# Attribution, on bare child processes: threads that sit in marked calls, one of them (or none) faults
# --------------------------------------------------------------------------------------------------------------


def _sit(stream_id: str, kind: str, entered: Any) -> None:
    with native_section(kind, stream_id):
        entered.release()
        time.sleep(60)


def _child(table: CrashTable, dump: str | None, sitters: list[tuple[str, str]], culprit: str | None,
           entered: Any) -> None:
    """Threads sit in marked calls; then `culprit` enters a decode call (and the fault injection fires), or,
    without a culprit, the main thread faults outside any marked call."""
    crashguard.install(table, Path(dump) if dump else None)
    for sid, kind in sitters:
        threading.Thread(target=_sit, args=(sid, kind, entered), daemon=True).start()
    for _ in sitters:
        entered.acquire()
    if culprit is None:
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    crashguard.bind_stream(culprit.removeprefix("null-write:"))
    with native_section("decode"):
        if culprit.startswith("null-write:"):
            # A real fault in C code that runs without the GIL, as FFmpeg's does under PyAV.
            ctypes.CDLL(None).memset(ctypes.c_void_p(0), 0, 16)
        time.sleep(60)  # not reached with the fault injection on


def crash_child(tmp_path: Path, sitters: list[tuple[str, str]], culprit: str | None,
                dump: bool = True) -> crashguard.Suspects:
    ctx = mp.get_context("spawn")
    table = CrashTable(ctx, slots=8)
    dump_path = tmp_path / "dump.txt" if dump else None
    entered = ctx.Semaphore(0)
    proc = ctx.Process(target=_child, args=(table, str(dump_path) if dump_path else None, sitters, culprit, entered))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGSEGV, proc.exitcode
    return crashguard.read_suspects(table, dump_path)


def blamed(s: crashguard.Suspects) -> set[str]:
    return {c.stream_id for c in s.blamed}


def test_only_the_faulting_stream_is_blamed_while_others_decode_and_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(crashguard.FAULT_CRASH_ENV, "bad")
    s = crash_child(tmp_path, [("waiting", "demux"), ("decoding", "decode"), ("scaling", "scale")], "bad")
    assert s.precise and blamed(s) == {"bad"}, s
    assert {c.stream_id for c in s.in_native} == {"waiting", "decoding", "scaling", "bad"}
    assert [c.kind for c in s.blamed] == ["decode"]
    assert "_crash_for_tests" in s.traceback, s.traceback
    assert "blamed: bad (the faulting thread: FFmpeg decode since" in s.describe()


def test_a_real_segfault_in_c_code_without_the_gil_is_attributed_the_same_way(tmp_path: Path) -> None:
    s = crash_child(tmp_path, [("waiting", "demux"), ("decoding", "decode")], "null-write:bad")
    assert s.precise and blamed(s) == {"bad"}, s


def test_a_crash_outside_ffmpeg_calls_blames_nobody(tmp_path: Path) -> None:
    s = crash_child(tmp_path, [("decoding", "decode"), ("waiting", "demux")], None)
    assert s.faulting_thread is not None and not s.blamed, s
    assert len(s.in_native) == 2
    assert s.describe().startswith("nobody blamed (the faulting thread 0x"), s.describe()


def test_without_the_faulting_thread_the_decoding_streams_are_blamed_not_the_waiting_ones(tmp_path: Path) -> None:
    s = crash_child(tmp_path, [("decoding", "decode"), ("scaling", "scale"), ("waiting", "demux"),
                               ("opening", "open")], None, dump=False)
    assert not s.precise and blamed(s) == {"decoding", "scaling"}, s
    s = crash_child(tmp_path, [("waiting", "demux")], None, dump=False)
    assert not s.blamed and s.describe().startswith("nobody blamed (the faulting thread is unknown"), s


def test_the_guard_is_a_no_op_until_installed() -> None:
    assert not crashguard.installed()
    with native_section("decode", "x"):
        pass
    assert list(native_iter(iter([1, 2, 3]))) == [1, 2, 3]


def test_marks_are_cleared_after_each_call_and_nest(monkeypatch: pytest.MonkeyPatch) -> None:
    table = CrashTable(mp.get_context("spawn"), slots=4)
    monkeypatch.setattr(crashguard, "_guard", None)
    monkeypatch.setattr(crashguard, "_local", threading.local())
    crashguard.install(table, None)
    try:
        crashguard.bind_stream("s1")
        assert table.calls() == []
        with native_section("demux"):
            with native_section("decode"):
                assert [(c.stream_id, c.kind) for c in table.calls()] == [("s1", "demux")]
            assert len(table.calls()) == 1
        assert table.calls() == []
        seen = []
        for _ in native_iter(iter(range(3))):
            seen.append(table.calls())  # the loop body is not inside the call
        assert seen == [[], [], []]
        with pytest.raises(ValueError), native_section("decode"):
            raise ValueError("an FFmpeg error is an exception, not a crash")
        assert table.calls() == []
    finally:
        monkeypatch.setattr(crashguard, "_guard", None)


# --------------------------------------------------------------------------------------------------------------
# Real worker processes and the real reader
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_flv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of a small moving test pattern, 10 fps, a keyframe every second (cheap to serve, decode and loop)."""
    if subprocess.run(["which", "ffmpeg"], capture_output=True).returncode:
        pytest.skip("needs ffmpeg")
    out = tmp_path_factory.mktemp("media") / "tiny.flv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=10", "-t", "10", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", "10", "-keyint_min", "10", "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p",
                    "-f", "flv", str(out)], check=True, timeout=120)
    return out


class Recorder:
    def __init__(self) -> None:
        self.states: list[StateChange] = []
        self.samples: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def on_state(self, change: StateChange) -> None:
        with self.lock:
            self.states.append(change)

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        with self.lock:
            self.samples.append((sample.stream_id, time.monotonic()))

    def of(self, sid: str) -> list[StateChange]:
        with self.lock:
            return [c for c in self.states if c.stream_id == sid]

    def wait(self, pred: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.1)
        return False


def ended_after(rec: Recorder, sid: str, t: float) -> bool:
    return any(c.state == StreamState.ENDED and c.detail == "end of file" and c.at > t for c in rec.of(sid))


def quarantined(rec: Recorder, sid: str) -> list[StateChange]:
    return [c for c in rec.of(sid) if c.state == StreamState.FAILED and c.detail.startswith("quarantined:")]


@pytest.fixture
def sharded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[ShardedSupervisor, Recorder]]]:
    made: list[ShardedSupervisor] = []

    def make(cooldown_s: float) -> tuple[ShardedSupervisor, Recorder]:
        for k, v in {crashguard.FAULT_CRASH_ENV: "bad"}.items():
            monkeypatch.setenv(k, v)
        rec = Recorder()
        sup = ShardedSupervisor(1, IngestConfig(backoff_initial_s=0.2, backoff_max_s=0.5), SamplingConfig(),
                                [], MatchingConfig(), rec, quarantine_cooldown_s=cooldown_s)
        sup.start()
        made.append(sup)
        return sup, rec

    yield make
    for sup in made:
        sup.stop_all()


@pytest.mark.slow
def test_a_quarantined_stream_is_refused_until_its_cool_down_and_keeps_its_strikes(
        sharded: Callable[..., tuple[ShardedSupervisor, Recorder]], tiny_flv: Path) -> None:
    sup, rec = sharded(cooldown_s=8.0)
    bad = StreamConfig(id="bad", url=str(tiny_flv))
    sup.add_stream(bad)
    sup.add_stream(StreamConfig(id="good", url=str(tiny_flv)))
    assert rec.wait(lambda: bool(quarantined(rec, "bad")), 90), rec.states
    assert sup.restarts == 2 and sup.quarantined_total == 1
    first = quarantined(rec, "bad")[0]
    assert first.detail.startswith("quarantined: its input crashed the worker process 2 times within 10 min "
                                   "(last: killed by SIGSEGV in FFmpeg decode); not restarted"), first.detail
    # The neighbour came back with the restarted worker and read its file to the end.
    assert rec.wait(lambda: ended_after(rec, "good", first.at), 60), rec.of("good")
    assert sup.has_stream("bad") and "bad" in sup.dead_streams() and "bad" in sup.stream_ids()

    # A new publish, as the engine handles it: the dead stream is removed, then added again; still refused.
    sup.remove_stream("bad")
    assert rec.wait(lambda: rec.of("bad")[-1].state == StreamState.ENDED, 5)
    sup.add_stream(bad)
    assert rec.wait(lambda: len(quarantined(rec, "bad")) == 2, 5)
    assert sup.restarts == 2 and sup.has_stream("bad")

    # After the cool-down it starts afresh, and its strikes (within the window) are still counted: one more crash.
    time.sleep(max(0.0, first.at + 8.5 - time.time()))
    sup.remove_stream("bad")
    sup.add_stream(bad)
    assert rec.wait(lambda: len(quarantined(rec, "bad")) == 3, 60), rec.of("bad")
    assert sup.restarts == 3 and sup.quarantined_total == 2
    last = quarantined(rec, "bad")[-1]
    assert "crashed the worker process 3 times" in last.detail, last.detail
    assert rec.wait(lambda: ended_after(rec, "good", last.at), 60), rec.of("good")


# --------------------------------------------------------------------------------------------------------------
# End to end: `monitor run` with one worker process for three live RTMP streams, one of them hostile
# --------------------------------------------------------------------------------------------------------------


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples_of(metrics: str, sid: str) -> float:
    m = re.search(rf'^monitor_samples_total{{stream="{sid}"}} ([0-9.e+]+)$', metrics, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


@pytest.mark.realinfra
@pytest.mark.slow
def test_the_culprit_is_quarantined_after_two_crashes_and_its_neighbours_keep_sampling(
    mosquitto: Mosquitto, nginx_rtmp: NginxRtmp, tiny_flv: Path, monkeypatch: pytest.MonkeyPatch,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    for k, v in {crashguard.FAULT_CRASH_ENV: "bad"}.items():
        monkeypatch.setenv(k, v)  # the monitor and its worker processes inherit these
    names = ("bad", "a", "b")
    collector = collector_factory(mosquitto.port, "q/#")
    pubs = [subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url(n), duration_s=300, source=str(tiny_flv)))
            for n in names]
    metrics_port = free_port()
    mon = monitor_factory({"node": "q", "broker": {"url": mosquitto.url, "topic_prefix": "q"}, "workers": 1,
                           "streams": [{"id": n, "url": nginx_rtmp.rtmp_url(n)} for n in names], "banks": [],
                           "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
                           "metrics": {"enabled": True, "port": metrics_port}})
    try:
        def failed(m: Collected) -> bool:
            return m.topic == "q/q/streams/bad" and m.json()["state"] == "failed"

        found = collector.wait_for(failed, 120)
        assert found, mon.log()
        detail = found[0].json()["detail"]
        assert detail.startswith("quarantined: its input crashed the worker process 2 times within 10 min (last: "
                                 "killed by SIGSEGV in FFmpeg decode); not restarted"), detail
        for n in ("a", "b"):  # live again in the worker started after the second crash
            assert collector.wait_for(lambda m, n=n: m.topic == f"q/q/streams/{n}" and m.json()["state"] == "live"
                                      and m.json()["at"] > found[0].json()["at"], 30), n
        _, before = scrape(metrics_port)
        time.sleep(8)
        _, after = scrape(metrics_port)
        for n in ("a", "b"):
            assert samples_of(after, n) >= samples_of(before, n) + 3, (n, samples_of(before, n), samples_of(after, n))
        assert samples_of(after, "bad") == 0
        assert "monitor_streams_quarantined_total 1.0" in after
        assert 'monitor_streams{state="failed"} 1.0' in after
        status, health = scrape(metrics_port, "/healthz")
        assert status == 200, health  # a quarantined stream is a settled failure, not a dead worker
        assert mon.proc.poll() is None
        assert len(collector.matching(failed)) == 1  # and no third crash
    finally:
        for p in pubs:
            stop_process(p, 2)
        mon.stop()
    log = mon.log()
    died = re.findall(r"worker process 0 died \(killed by SIGSEGV\); blamed: bad \(the faulting thread: FFmpeg "
                      r"decode since [0-9:]+\); restarting it with its (\d) streams", log)
    assert died == ["3", "2"], log  # the second restart leaves the culprit out
    assert "(1 quarantined: bad)" in log
    assert "stream bad quarantined: its input crashed the worker process 2 times" in log
    # Where the fault was: inside the reader's own decode call.
    # (the text log escapes the stack's line breaks: one log line each)
    stacks = re.findall(r"the faulting thread was at:(.*)$", log, re.MULTILINE)
    assert len(stacks) == 2, log
    for stack in stacks:
        assert "monitor/ingest/reader.py" in stack and "in decode" in stack, stack
