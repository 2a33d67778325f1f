"""Broken streams on real parts: the monitor process survives, says what happened, and keeps watching the rest.

Each scenario is ONE real monitor process watching several streams at once (one or more of them faulty, one
clean "control" stream with a known image at a known time), fed by real servers: nginx-rtmp with ffmpeg
publishers, a TCP fault proxy (tools/test_streams/proxy.py), a live MPEG-TS server, an HLS server under our control.
Each scenario runs once per module (a fixture; the four run at the same time, each on its own streams) and records
every MQTT message; the tests below each check one claim on that record, so a failing claim (or a known monitor
bug, marked xfail) does not hide the others.

Times: the monitor is started first and waited for (on a loaded machine it takes seconds); t = 0 is when the
sources start, and faults are timed from the moment every stream is live, never from a fixed clock. Run with
`-s` to see each stream's timeline. The observed states and timings are written up in docs/fault-cases.md.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest
import yaml
from PIL import Image

from test_streams.images import known_image
from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, free_port
from test_streams.live import Appearance, generate
from test_streams.proxy import FaultProxy
from tests.conftest import REPO, Collected, MonitorProcess, MqttCollector, require_tools

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]

FPS = 10
GOP_S = 2.0
READ_TIMEOUT_S = 2.0
BACKOFF_MAX_S = 1.0
INGEST = {"read_timeout_s": READ_TIMEOUT_S, "open_timeout_s": 3, "backoff_initial_s": 0.2,
          "backoff_max_s": BACKOFF_MAX_S}
# Bank entries (conftest.bank_csv): entry "1" is known image 0, "2" is image 1, "3" is image 2.
ENTRY = {0: "1", 1: "2", 2: "3"}
TROUBLE = ("stalled", "reconnecting", "failed", "ended")
LOOP_S = 10.0  # looped sources show their image at SHOW_IN_LOOP of every loop
SHOW_IN_LOOP = (5.0, 9.0)
SLOW_BYTES_PER_S = 40_000  # about 40 % of a 640x360 10 fps test stream


# --------------------------------------------------------------------------------------------------------------
# Media, made once per module with ffmpeg (10 fps, 2 s GOP: cheap to encode and to serve with -c copy)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Show:
    image: int
    start_s: float
    end_s: float


CODEC_ARGS = {
    "libx264": ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", str(FPS * 2),
                "-keyint_min", str(FPS * 2), "-sc_threshold", "0"],
    "mpeg2video": ["-c:v", "mpeg2video", "-g", str(FPS * 2), "-bf", "0", "-q:v", "5"],
    "libx265": ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
                f"keyint={FPS * 2}:min-keyint={FPS * 2}:scenecut=0:bframes=0:log-level=error"],
}


class Media:
    """Made on first use; the scenarios run at once (threads), so each file is made under its own lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def png(self, image: int, size: str) -> Path:
        w, h = (int(x) for x in size.split("x"))
        path = self.folder / f"known-{image}-{size}.png"
        with self._lock(path.name):
            if not path.exists():
                Image.fromarray(known_image(image, w, h)).save(path)
        return path

    def video(self, name: str, *, seconds: float, show: Show | None = None, size: str = "640x360",
              codec: str = "libx264", fmt: str = "flv", ts_offset: float | None = None,
              repeat_every_s: float | None = None) -> Path:
        """A moving test pattern with a known image full-frame during `show` (times within this file, again
        every `repeat_every_s`). fmt="hls" writes a folder of 2 s segments seg000.ts... and returns it."""
        with self._lock(name):
            return self._video(name, seconds=seconds, show=show, size=size, codec=codec, fmt=fmt,
                               ts_offset=ts_offset, repeat_every_s=repeat_every_s)

    def _video(self, name: str, *, seconds: float, show: Show | None, size: str, codec: str, fmt: str,
               ts_offset: float | None, repeat_every_s: float | None) -> Path:
        out = self.folder / name
        if out.exists():
            return out
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
               "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}"]
        when = "t" if repeat_every_s is None else f"mod(t,{repeat_every_s})"
        if show is not None:
            # The picture is decoded once and looped by the filter: far cheaper than `-loop 1` on a PNG.
            cmd += ["-i", str(self.png(show.image, size)), "-filter_complex",
                    f"[1:v]format=yuv420p,loop=loop=-1:size=1,setpts=N/{FPS}/TB[k];"
                    f"[0:v][k]overlay=enable='between({when},{show.start_s},{show.end_s})':shortest=1[v]",
                    "-map", "[v]"]
        cmd += ["-t", str(seconds), *CODEC_ARGS[codec], "-pix_fmt", "yuv420p"]
        if ts_offset is not None:
            cmd += ["-output_ts_offset", str(ts_offset)]
        if fmt == "hls":
            out.mkdir()
            cmd += ["-f", "hls", "-hls_time", str(GOP_S), "-hls_list_size", "0",
                    "-hls_segment_filename", str(out / "seg%03d.ts"), str(out / "vod.m3u8")]
        else:
            cmd += ["-f", fmt, str(out)]
        subprocess.run(cmd, check=True, timeout=120)
        return out

    def audio(self, name: str, *, seconds: float, fmt: str) -> Path:
        out = self.folder / name  # each audio file is used by one scenario only
        codec = ["-c:a", "aac"] if fmt == "flv" else ["-c:a", "mp2"]
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
                        "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds), *codec, "-b:a", "64k",
                        "-f", fmt, str(out)], check=True, timeout=60)
        return out

    def data_only_ts(self, name: str, *, seconds: float) -> Path:
        """MPEG-TS with a single KLV data stream (as from a drone or a metadata feed) and no video."""
        from fractions import Fraction

        out = self.folder / name
        container = av.open(str(out), "w", format="mpegts")
        try:
            stream = container.add_data_stream("klv")
            for i in range(round(seconds * 10)):
                packet = av.Packet(bytes.fromhex("060e2b34020b01010e01030101000000") + b"\x04tick")
                packet.stream = stream
                packet.pts = packet.dts = i * 9000
                packet.time_base = Fraction(1, 90000)
                container.mux(packet)
        finally:
            container.close()
        return out


def break_flv_keyframe(src: Path, dst: Path, at_ms: int) -> int:
    """Copy an H.264 FLV, making the keyframe at or after `at_ms` undecodable: its last NAL unit claims more
    bytes than the packet holds. The FLV tag still says "keyframe", so the monitor decodes it (and gets
    AVERROR_INVALIDDATA from avcodec_send_packet). Returns that keyframe's time in ms."""
    data = bytearray(src.read_bytes())
    pos = 9 + 4  # FLV header, PreviousTagSize0
    while pos + 11 <= len(data):
        tag_type, size = data[pos], int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        body = pos + 11
        if tag_type == 9 and ts >= at_ms and data[body] == 0x17 and data[body + 1] == 1:  # AVC keyframe, NALUs
            nal, last = body + 5, body + 5
            while nal < body + size:
                last = nal
                nal += 4 + int.from_bytes(data[nal : nal + 4], "big")
            length = int.from_bytes(data[last : last + 4], "big")
            data[last : last + 4] = (length + 100_000).to_bytes(4, "big")
            dst.write_bytes(bytes(data))
            return ts
        pos = body + size + 4
    raise ValueError(f"no AVC keyframe at or after {at_ms} ms in {src}")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    require_tools()
    return Media(tmp_path_factory.mktemp("fault-media"))


# --------------------------------------------------------------------------------------------------------------
# Sources we control: a live MPEG-TS server, an HLS server
# --------------------------------------------------------------------------------------------------------------


class LiveTsServer:
    """MPEG-TS segments served over TCP as one live source, paced in real time (each segment's bytes spread
    evenly over its duration). Segments are concatenated byte for byte, as when an encoder behind a relay is
    restarted with other settings. Every client joins at the live position, so a monitor that reconnects gets
    the stream back (the `?listen=1` generator serves one client only)."""

    def __init__(self, segments: Sequence[tuple[bytes, float]]) -> None:
        self.segments = list(segments)
        self.blob = b"".join(data for data, _ in self.segments)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.t0 = 0.0
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def of_files(cls, *parts: tuple[Path, float]) -> LiveTsServer:
        return cls([(p.read_bytes(), seconds) for p, seconds in parts])

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, t0: float | None = None) -> LiveTsServer:
        self.t0 = time.monotonic() if t0 is None else t0
        self._spawn(self._accept)
        return self

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _position(self) -> int:
        elapsed = time.monotonic() - self.t0
        pos = 0
        for data, seconds in self.segments:
            if elapsed < seconds:
                return (pos + int(len(data) * elapsed / seconds)) // 188 * 188
            pos += len(data)
            elapsed -= seconds
        return pos

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        sent = self._position()
        try:
            with conn:
                while not self._stop.is_set() and sent < len(self.blob):
                    target = self._position()
                    if target > sent:
                        conn.sendall(self.blob[sent:target])
                        sent = target
                    time.sleep(0.02)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(2)


class HlsChannel:
    """A live HLS playlist over a fixed set of 2 s segments: its window slides with wall time (mode "live"),
    stops sliding ("frozen"), or the playlist answers an HTTP error ("404", "500")."""

    def __init__(self, segments: list[str], segment_s: float, mode: str, t0: float) -> None:
        self.segments, self.segment_s, self.mode, self.t0 = segments, segment_s, mode, t0
        self.preload, self.window = 3, 5
        self.frozen_newest: int | None = None

    def newest(self) -> int:
        if self.frozen_newest is not None:
            return self.frozen_newest
        elapsed = time.monotonic() - self.t0
        return min(len(self.segments) - 1, self.preload - 1 + int(elapsed / self.segment_s))

    def set_mode(self, mode: str) -> None:
        self.frozen_newest = self.newest() if mode == "frozen" else None
        self.mode = mode

    def playlist(self) -> bytes:
        last = self.newest()
        first = max(0, last - self.window + 1)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{round(self.segment_s)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for i in range(first, last + 1):
            lines += [f"#EXTINF:{self.segment_s:.3f},", self.segments[i]]
        return ("\n".join(lines) + "\n").encode()


class HlsServer:
    """http://127.0.0.1:PORT/CHANNEL/index.m3u8 and /CHANNEL/segNNN.ts, from one folder of segments."""

    def __init__(self, folder: Path, segment_s: float) -> None:
        self.folder, self.segment_s = folder, segment_s
        self.segments = sorted(p.name for p in folder.glob("seg*.ts"))
        self.channels: dict[str, HlsChannel] = {}
        self.playlist_requests: dict[str, list[tuple[float, int]]] = {}  # channel -> (monotonic, status)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = self.path.split("?", 1)[0].strip("/").split("/")
                channel = server.channels.get(parts[0]) if len(parts) == 2 else None
                if channel is None:
                    self.send_error(404)
                    return
                if parts[1] == "index.m3u8":
                    status = int(channel.mode) if channel.mode in ("404", "500") else 200
                    server.playlist_requests.setdefault(parts[0], []).append((time.monotonic(), status))
                    if status != 200:
                        self.send_error(status)
                        return
                    body, ctype = channel.playlist(), "application/vnd.apple.mpegurl"
                elif parts[1] in server.segments:
                    body, ctype = (server.folder / parts[1]).read_bytes(), "video/mp2t"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hangs up mid-segment is normal here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    def start(self) -> HlsServer:
        self.thread.start()
        return self

    def add(self, name: str, mode: str, t0: float) -> str:
        self.channels[name] = HlsChannel(self.segments, self.segment_s, mode, t0)
        return f"http://127.0.0.1:{self.port}/{name}/index.m3u8"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# --------------------------------------------------------------------------------------------------------------
# One scenario = one monitor process, several streams, a timeline of faults; the record the tests check
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    require_tools()
    m = Mosquitto().start()
    yield m
    m.close()


@pytest.fixture(scope="module")
def rtmp() -> Iterator[NginxRtmp]:
    require_tools()
    n = NginxRtmp().start()
    yield n
    n.close()


@pytest.fixture(scope="module")
def scenario_runs(broker: Mosquitto, rtmp: NginxRtmp, media: Media, bank_csv: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Record]]]:
    """The four scenarios below run at the same time, each its own monitor process (own topic prefix, own
    streams, own nginx stream names) on the one broker and the one nginx-rtmp: most of a scenario is waiting
    for its timeline, so one after the other cost their sum (about 90 s), at once about the longest.
    A scenario's fixture waits for its own run only; a failed run fails that scenario's tests."""
    runs = {"rtmp-faults": run_rtmp_faults, "corruption": run_corruption, "media-changes": run_media_changes,
            "hls-faults": run_hls_faults}
    folders = {name: tmp_path_factory.mktemp(name) for name in runs}
    with ThreadPoolExecutor(len(runs), thread_name_prefix="scenario") as pool:
        yield {name: pool.submit(run, broker, rtmp, media, bank_csv, folders[name]) for name, run in runs.items()}


def iso_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class State:
    t: float  # seconds since the scenario's t0
    state: str
    detail: str
    attempt: int
    retry_in_s: float | None


@dataclass
class Record:
    """What one scenario produced: every MQTT message, the monitor's log and fate, the times of the faults."""

    name: str
    prefix: str
    node: str
    t0_wall: float
    messages: list[Collected]
    log: str
    alive_before_stop: bool
    exit_code: int
    marks: dict[str, float] = field(default_factory=dict)  # fault name -> t

    def states(self, stream: str, *, with_shutdown: bool = False) -> list[State]:
        """The stream's state changes in order; without the final "ended (removed)" of the monitor's stop."""
        topic = f"{self.prefix}/{self.node}/streams/{stream}"
        out = []
        for m in self.messages:
            if m.topic == topic and not m.retain:
                b = m.json()
                out.append(State(round(b["at"] - self.t0_wall, 2), b["state"], b["detail"], b["attempt"],
                                 b["retry_in_s"]))
        if not with_shutdown and out and out[-1].state == "ended" and out[-1].detail == "removed":
            out.pop()
        return out

    def alerts(self, stream: str) -> list[dict[str, Any]]:
        topic = f"{self.prefix}/{self.node}/alerts/{stream}"
        return [m.json() for m in self.messages if m.topic == topic]

    def alert_t(self, alert: dict[str, Any]) -> float:
        return iso_ts(alert["observed_at"]) - self.t0_wall

    def entries(self, stream: str) -> list[str]:
        return sorted(a["entry_id"] for a in self.alerts(stream))

    def first(self, stream: str, state: str, after: float = -1e9) -> State | None:
        return next((s for s in self.states(stream) if s.state == state and s.t >= after), None)

    def timeline(self, stream: str) -> str:
        parts = [f"{s.t:.1f} {s.state}" + (f"#{s.attempt}" if s.state in TROUBLE else "")
                 + (f" [{s.detail}]" if s.detail and not s.detail.startswith(("rtmp:", "tcp:", "http:")) else "")
                 for s in self.states(stream, with_shutdown=True)]
        alerts = [f"{self.alert_t(a):.1f} ALERT entry {a['entry_id']} (media {a['media_time_s']})"
                  for a in self.alerts(stream)]
        return f"{self.name}/{stream}: " + "; ".join(parts + alerts)


class Scenario:
    """Starts the monitor on a list of streams and records; `at(t)` sleeps until scenario time t."""

    def __init__(self, name: str, broker: Mosquitto, bank: Path, folder: Path) -> None:
        self.name, self.broker, self.bank, self.folder = name, broker, bank, folder
        # Own node name too: the monitor's MQTT client id is monitor-<node>, and the scenarios share the broker.
        self.prefix, self.node = f"faults-{name}", f"n1-{name}"
        self.t0 = time.monotonic()  # reset by begin(), once the monitor is up
        self.t0_wall = time.time()
        self.marks: dict[str, float] = {}
        self.collector = MqttCollector(broker.port, f"{self.prefix}/#").start()
        self.monitor: MonitorProcess | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def at(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)

    def mark(self, name: str) -> None:
        self.marks[name] = math.floor(self.now() * 100) / 100  # never after the moment it marks

    def start_monitor(self, streams: dict[str, str], **extra: Any) -> MonitorProcess:
        config = {
            "node": self.node,
            "state_dir": str(self.folder / "state"),
            "broker": {"url": self.broker.url, "topic_prefix": self.prefix},
            "streams": [{"id": sid, "url": url} for sid, url in streams.items()],
            "banks": [{"name": "known", "path": str(self.bank)}],
            "ingest": INGEST,
            # Several streams of one monitor show the same entry: that is this test's design, not a noisy entry.
            "incidents": {"quarantine_streams": 100},
            **extra,
        }
        cfg_path = self.folder / "monitor.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        log_path = self.folder / "monitor.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg_path)],
                                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.monitor = MonitorProcess(proc, log_path)
        return self.monitor

    def wait_online(self, timeout_s: float = 30.0) -> None:
        """Until the monitor has connected to the broker (its start-up costs seconds on a loaded machine)."""
        assert self.monitor is not None
        topic = f"{self.prefix}/{self.node}/status"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.monitor.proc.poll() is None:
            if self.collector.matching(lambda m: m.topic == topic and m.json()["state"] == "online"):
                return
            time.sleep(0.1)
        raise AssertionError(f"the monitor did not come online:\n{self.monitor.log()}")

    def begin(self) -> None:
        """Scenario time 0: the moment the sources start."""
        self.t0 = time.monotonic()
        self.t0_wall = time.time()

    def alerts(self, stream: str) -> list[dict[str, Any]]:
        topic = f"{self.prefix}/{self.node}/alerts/{stream}"
        return [m.json() for m in self.collector.matching(lambda m: m.topic == topic)]

    def alert_wall_t(self, alert: dict[str, Any]) -> float:
        return iso_ts(alert["observed_at"]) - self.t0_wall

    def state_of(self, stream: str) -> str | None:
        topic = f"{self.prefix}/{self.node}/streams/{stream}"
        found = self.collector.matching(lambda m: m.topic == topic)
        return found[-1].json()["state"] if found else None

    def wait_live(self, streams: Sequence[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(self.state_of(s) != "live" for s in streams):
            time.sleep(0.1)

    def finish(self) -> Record:
        assert self.monitor is not None
        time.sleep(0.5)  # the last state changes travel over MQTT
        alive = self.monitor.proc.poll() is None
        code = self.monitor.stop()
        time.sleep(0.3)
        self.collector.stop()
        return Record(self.name, self.prefix, self.node, self.t0_wall, list(self.collector.messages),
                      self.monitor.log(), alive, code, dict(self.marks))

    def abort(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self.collector.stop()


def publisher(url: str, source: Path, seconds: float, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(ffmpeg_publish_cmd(url, duration_s=seconds, source=str(source)),
                                stdout=subprocess.DEVNULL, stderr=out)


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(5)


def assert_survived(rec: Record) -> None:
    assert rec.alive_before_stop, f"the monitor exited during {rec.name}:\n{rec.log}"
    assert rec.exit_code == 0, f"exit code {rec.exit_code}:\n{rec.log}"
    assert "Traceback" not in rec.log, rec.log


def assert_control_unaffected(rec: Record, stream: str, entry: str, live_t: float, end_t: float) -> None:
    """The clean stream of a monitor whose other streams break: live once, never troubled, and every
    appearance of its image (one per 10 s loop) alerted, each within a few seconds of its keyframe."""
    states = rec.states(stream)
    assert [s.state for s in states] == ["connecting", "live"], rec.timeline(stream)
    assert {a["entry_id"] for a in rec.alerts(stream)} == {entry}, rec.timeline(stream)
    missed = expected_loops(rec, live_t, end_t) - alerted_loops(rec, stream)
    assert not missed, f"appearances in loops {sorted(missed)} not alerted: {rec.timeline(stream)}"
    for a in rec.alerts(stream):
        lag = rec.alert_t(a) - a["media_time_s"]  # the publisher started at t0 (plus its own start-up)
        assert -0.5 <= lag <= GOP_S + 4, f"alert {lag:.1f} s after its keyframe: {rec.timeline(stream)}"


# --------------------------------------------------------------------------------------------------------------
# The proxy itself
# --------------------------------------------------------------------------------------------------------------


def test_fault_proxy_stalls_slows_cuts_corrupts_and_refuses() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    pattern = bytes(range(256)) * 64

    def feed() -> None:
        while True:
            try:
                conn, _ = upstream.accept()
            except OSError:
                return

            def push(c: socket.socket = conn) -> None:
                try:
                    with c:
                        while True:
                            c.sendall(pattern)
                            time.sleep(0.01)
                except OSError:
                    pass

            threading.Thread(target=push, daemon=True).start()

    threading.Thread(target=feed, daemon=True).start()

    def received(s: socket.socket, seconds: float) -> tuple[bytes, str]:
        s.settimeout(0.05)
        data, end = bytearray(), time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return bytes(data), "reset"
            if not chunk:
                return bytes(data), "eof"
            data += chunk
        return bytes(data), "open"

    proxy = FaultProxy(upstream.getsockname()[1]).start()
    try:
        s = socket.create_connection(("127.0.0.1", proxy.port))
        data, how = received(s, 0.5)
        assert how == "open" and len(data) > 100_000 and data[:512] == pattern[:512]
        proxy.stall()
        received(s, 0.2)  # what was already on its way
        data, how = received(s, 0.6)
        assert (len(data), how) == (0, "open")
        proxy.slow(20_000)
        data, how = received(s, 1.0)
        assert how == "open" and 5_000 < len(data) < 40_000
        proxy.resume()
        received(s, 0.3)
        proxy.corrupt(every_n_bytes=1000)
        data, _ = received(s, 0.3)
        assert proxy.stats.corrupted > 0 and len(data) > 10_000
        assert data.count(pattern[:256]) < len(data) // 256 - 5  # the counting pattern is damaged
        proxy.resume()
        assert proxy.cut() == 1
        assert received(s, 0.5)[1] == "eof"
        proxy.refuse()
        refused = socket.create_connection(("127.0.0.1", proxy.port))
        assert received(refused, 0.5)[0] == b""
        proxy.resume()
        again = socket.create_connection(("127.0.0.1", proxy.port))
        assert len(received(again, 0.3)[0]) > 10_000
        for sock in (s, refused, again):
            sock.close()
    finally:
        proxy.close()
        upstream.close()
    assert proxy.stats.refused == 1 and proxy.stats.cut == 1 and proxy.stats.accepted == 2


# --------------------------------------------------------------------------------------------------------------
# Scenario 1, RTMP: publisher killed and restarted; proxy stall, slow, cut, refuse; a control stream
# --------------------------------------------------------------------------------------------------------------
# Every publisher loops a 10 s file showing its known image at 5-9 s of each loop (keyframes 6 and 8 s carry it);
# incidents close after 3 s quiet, so each appearance is a new alert. Faults are timed from the moment every
# stream is live (F), not from the clock: on a loaded machine the monitor takes seconds to start.


def expected_loops(rec: Record, live_t: float, end_t: float) -> set[int]:
    """Loops whose image keyframes were on air while the stream was watched, with margins for start-up lag."""
    return {k for k in range(20) if live_t + 1 <= k * LOOP_S + SHOW_IN_LOOP[0] and
            k * LOOP_S + SHOW_IN_LOOP[1] + 2 + 4 <= end_t}


def alerted_loops(rec: Record, stream: str) -> set[int]:
    return {int(a["media_time_s"] // LOOP_S) for a in rec.alerts(stream)}


def alerts_after(rec: Record, stream: str, t: float) -> list[dict[str, Any]]:
    return [a for a in rec.alerts(stream) if rec.alert_t(a) > t]


def run_rtmp_faults(broker: Mosquitto, rtmp: NginxRtmp, media: Media, bank_csv: Path, folder: Path) -> Record:
    plain = media.video("loop-plain.flv", seconds=LOOP_S)
    loops = {k: media.video(f"loop-img{k}.flv", seconds=LOOP_S, show=Show(k, *SHOW_IN_LOOP)) for k in range(3)}
    image = {"restart": 1, "stall": 0, "slow": 2, "cut": 0, "refuse": 1, "control": 2}
    proxies = {name: FaultProxy(rtmp.rtmp_port).start() for name in ("stall", "slow", "cut", "refuse")}
    pub_log = folder / "publishers.log"
    sc = Scenario("rtmp", broker, bank_csv, folder)
    pubs: dict[str, subprocess.Popen[bytes]] = {}
    streams = {"restart": rtmp.rtmp_url("restart"), "control": rtmp.rtmp_url("rtmp-control")}
    streams |= {name: f"rtmp://127.0.0.1:{p.port}/{rtmp.app}/{name}" for name, p in proxies.items()}
    try:
        sc.start_monitor(streams, incidents={"close_after_s": 3, "quarantine_streams": 100})
        sc.wait_online()
        sc.begin()  # nginx-rtmp holds the monitor's waiting players until a publisher arrives
        for name in image:  # the restarted stream shows nothing until it is restarted
            pubs[name] = publisher(rtmp.rtmp_url("rtmp-control" if name == "control" else name),
                                   plain if name == "restart" else loops[image[name]],
                                   120, pub_log)
        sc.wait_live(list(streams), 20)
        sc.mark("all_live")
        assert all(sc.state_of(s) == "live" for s in streams), {s: sc.state_of(s) for s in streams}
        f = sc.now() + 1
        sc.at(f)
        proxies["stall"].stall()
        sc.mark("stall")
        proxies["slow"].slow(SLOW_BYTES_PER_S)
        sc.mark("slow")
        sc.mark("refuse")  # before the fault: the monitor may report it before a mark taken after would be
        proxies["refuse"].refuse()
        proxies["refuse"].cut()
        sc.at(f + 1)
        while abs(sc.now() % GOP_S - GOP_S / 2) > 0.15:  # mid-GOP: halfway between two keyframes
            time.sleep(0.02)
        pubs["restart"].send_signal(signal.SIGKILL)
        sc.mark("publisher_killed")
        sc.at(f + 3)
        sc.mark("cut")
        proxies["cut"].cut()
        sc.at(f + 5)
        pubs["restarted"] = publisher(rtmp.rtmp_url("restart"), loops[image["restart"]], 120, pub_log)
        sc.mark("publisher_restarted")
        sc.at(f + 7)
        proxies["refuse"].resume()
        sc.mark("refuse_resume")
        sc.at(f + 9)
        proxies["stall"].resume()
        sc.mark("stall_resume")
        sc.at(f + 11)
        proxies["slow"].resume()
        sc.mark("slow_resume")
        recovered = {"restart": "publisher_restarted", "stall": "stall_resume", "slow": "slow_resume",
                     "cut": "cut", "refuse": "refuse_resume"}
        deadline = f + 11 + LOOP_S + 8
        while sc.now() < deadline and not all(
            any(sc.alert_wall_t(a) > sc.marks[mark] for a in sc.alerts(stream))
            for stream, mark in recovered.items()
        ):
            time.sleep(0.2)
        sc.mark("end")
        rec = sc.finish()
    except BaseException:
        sc.abort()
        raise
    finally:
        stop_all(list(pubs.values()))
        for p in proxies.values():
            p.close()
    for stream in streams:
        print(rec.timeline(stream))
    print("marks", rec.marks)
    return rec


@pytest.fixture(scope="module")
def rtmp_faults(scenario_runs: dict[str, Future[Record]]) -> Record:
    return scenario_runs["rtmp-faults"].result()


def test_rtmp_faults_monitor_survives(rtmp_faults: Record) -> None:
    assert_survived(rtmp_faults)


def test_publisher_killed_mid_gop_reconnects_and_alerts_after_restart(rtmp_faults: Record) -> None:
    rec = rtmp_faults
    states = rec.states("restart")
    killed, restarted = rec.marks["publisher_killed"], rec.marks["publisher_restarted"]
    # nginx-rtmp keeps the player's connection open and waits for a new publisher: the monitor sees no data,
    # so "stalled" after the read timeout (or "reconnecting" if the server closes the connection instead).
    lost = next((s for s in states if s.t >= killed and s.state in ("stalled", "reconnecting")), None)
    assert lost is not None and lost.t < killed + READ_TIMEOUT_S + 2.5, rec.timeline("restart")
    assert not [s for s in states if lost.t <= s.t < restarted and s.state == "live"], rec.timeline("restart")
    back = rec.first("restart", "live", after=restarted)
    assert back is not None and back.t < restarted + 5, rec.timeline("restart")
    assert "failed" not in [s.state for s in states]
    # Only the restarted publisher shows the image: every alert comes from after the restart.
    alerts = rec.alerts("restart")
    assert alerts and {a["entry_id"] for a in alerts} == {"2"}, rec.timeline("restart")
    assert min(rec.alert_t(a) for a in alerts) > back.t


def test_proxy_stall_is_reported_stalled_after_the_read_timeout_then_recovers(rtmp_faults: Record) -> None:
    rec = rtmp_faults
    stall, resume = rec.marks["stall"], rec.marks["stall_resume"]
    stalled = rec.first("stall", "stalled", after=stall)
    assert stalled is not None, rec.timeline("stall")
    assert "read timeout" in stalled.detail, stalled
    assert stall + READ_TIMEOUT_S - 0.5 <= stalled.t <= stall + READ_TIMEOUT_S + 2.5, rec.timeline("stall")
    # The proxy holds new connections too: reconnects time out, and nothing claims to be live until resume.
    during = [s for s in rec.states("stall") if stalled.t < s.t < resume]
    assert during and all(s.state in ("connecting", "reconnecting", "stalled") for s in during), rec.timeline("stall")
    back = rec.first("stall", "live", after=resume)
    assert back is not None and back.t < resume + 3 + BACKOFF_MAX_S, rec.timeline("stall")
    assert alerts_after(rec, "stall", back.t), rec.timeline("stall")


def test_slow_link_stays_live_and_alerts_after_it_speeds_up(rtmp_faults: Record) -> None:
    rec = rtmp_faults
    assert [s.state for s in rec.states("slow")] == ["connecting", "live"], rec.timeline("slow")
    assert alerts_after(rec, "slow", rec.marks["slow_resume"]), rec.timeline("slow")


def test_cut_connection_is_reported_and_reconnects_at_once(rtmp_faults: Record) -> None:
    rec = rtmp_faults
    cut = rec.marks["cut"]
    lost = rec.first("cut", "reconnecting", after=cut)
    assert lost is not None and lost.t < cut + 1.5, rec.timeline("cut")
    assert lost.retry_in_s is not None and lost.retry_in_s <= 0.2  # first retry after a working connection
    back = rec.first("cut", "live", after=cut)
    assert back is not None and back.t < cut + 3, rec.timeline("cut")
    assert alerts_after(rec, "cut", back.t), rec.timeline("cut")


def test_refused_reconnects_back_off_exponentially_then_recover(rtmp_faults: Record) -> None:
    rec = rtmp_faults
    refuse, resume = rec.marks["refuse"], rec.marks["refuse_resume"]
    failures = [s for s in rec.states("refuse") if refuse <= s.t < resume and s.state == "reconnecting"]
    attempts = [s.attempt for s in failures]
    # The count restarts at 0 on a working connection: 0 for the drop, then 1, 2, 3... for failed attempts.
    assert len(failures) >= 4 and attempts == list(range(len(attempts))), rec.timeline("refuse")
    for s in failures:  # exponential from 0.2 s, capped at 1 s, jitter down to half
        cap = min(BACKOFF_MAX_S, 0.2 * 2 ** (max(s.attempt, 1) - 1))
        assert s.retry_in_s is not None and cap / 2 - 0.01 <= s.retry_in_s <= cap + 0.01, s
    back = rec.first("refuse", "live", after=resume)
    assert back is not None and back.t < resume + BACKOFF_MAX_S + 3, rec.timeline("refuse")
    assert alerts_after(rec, "refuse", back.t), rec.timeline("refuse")


def test_rtmp_faults_leave_the_control_stream_alone(rtmp_faults: Record) -> None:
    rec = rtmp_faults
    assert_control_unaffected(rec, "control", "3", live_t=rec.marks["all_live"], end_t=rec.marks["end"])


# --------------------------------------------------------------------------------------------------------------
# Scenario 2: corrupted bytes in an FLV (RTMP) stream and in an MPEG-TS stream; one undecodable keyframe
# --------------------------------------------------------------------------------------------------------------

CORRUPT_S = 6.0


def run_corruption(broker: Mosquitto, rtmp: NginxRtmp, media: Media, bank_csv: Path, folder: Path) -> Record:
    flv = {k: media.video(f"loop-img{k}.flv", seconds=LOOP_S, show=Show(k, *SHOW_IN_LOOP)) for k in (0, 2)}
    bad_flv = folder / "loop-img0-bad-keyframe.flv"
    bad_at_ms = break_flv_keyframe(flv[0], bad_flv, 2000)
    ts = folder / "generated.ts"  # the PyAV generator's stream, written to a file and served live
    generate(str(ts), fps=FPS, gop_s=GOP_S, duration_s=60, realtime=False,
             shows=[Appearance(1, k * LOOP_S + SHOW_IN_LOOP[0], k * LOOP_S + SHOW_IN_LOOP[1]) for k in range(6)])
    ts_server = LiveTsServer.of_files((ts, 60.0))
    proxies = {"flv-corrupt": FaultProxy(rtmp.rtmp_port).start()}
    proxies["ts-corrupt"] = FaultProxy(ts_server.port).start()
    pub_log = folder / "publishers.log"
    sc = Scenario("corrupt", broker, bank_csv, folder)
    sc.marks["bad_keyframe_in_loop_s"] = bad_at_ms / 1000
    pubs: list[subprocess.Popen[bytes]] = []
    # The stream with the undecodable keyframe is pushed by ffmpeg as FLV over a TCP listener (one client, like
    # any `?listen=1` source): nginx-rtmp would drop such a publisher itself (its HLS muxer parses the NALs).
    badkey_port = free_port()
    streams = {"flv-corrupt": f"rtmp://127.0.0.1:{proxies['flv-corrupt'].port}/{rtmp.app}/flv-corrupt",
               "ts-corrupt": f"tcp://127.0.0.1:{proxies['ts-corrupt'].port}",
               "flv-badkey": f"tcp://127.0.0.1:{badkey_port}", "control": rtmp.rtmp_url("corrupt-control")}
    try:
        sc.start_monitor(streams, incidents={"close_after_s": 3, "quarantine_streams": 100})
        sc.wait_online()
        sc.begin()
        ts_server.start()
        pubs += [publisher(rtmp.rtmp_url("flv-corrupt"), flv[0], 120, pub_log),
                 publisher(f"tcp://127.0.0.1:{badkey_port}?listen=1", bad_flv, 120, pub_log),
                 publisher(rtmp.rtmp_url("corrupt-control"), flv[2], 120, pub_log)]
        healthy = [s for s in streams if s != "flv-badkey"]  # its own test checks it separately
        sc.wait_live(healthy, 20)
        sc.mark("all_live")
        assert all(sc.state_of(s) == "live" for s in healthy), {s: sc.state_of(s) for s in streams}
        f = sc.now() + 1
        sc.at(f)
        # FLV: flipped bytes after the RTMP handshake and play exchange (the first 16 KiB of each connection).
        proxies["flv-corrupt"].corrupt(2e-4, spare_first=16_384, seed=7)
        # MPEG-TS: inserted bytes, which also break the 188-byte packet alignment.
        proxies["ts-corrupt"].corrupt(1e-4, insert=True, seed=11)
        sc.mark("corrupt")
        sc.at(f + CORRUPT_S)
        for p in proxies.values():
            p.resume()
        sc.mark("resume")
        deadline = f + CORRUPT_S + LOOP_S + 8
        while sc.now() < deadline and not all(
            any(sc.alert_wall_t(a) > sc.marks["resume"] for a in sc.alerts(s)) for s in ("flv-corrupt", "ts-corrupt")
        ):
            time.sleep(0.2)
        sc.mark("end")
        rec = sc.finish()
        rec.marks["corrupted_bytes"] = float(sum(p.stats.corrupted for p in proxies.values()))
    except BaseException:
        sc.abort()
        raise
    finally:
        stop_all(pubs)
        for p in proxies.values():
            p.close()
        ts_server.close()
    for stream in streams:
        print(rec.timeline(stream))
    print("marks", rec.marks)
    return rec


@pytest.fixture(scope="module")
def corruption(scenario_runs: dict[str, Future[Record]]) -> Record:
    return scenario_runs["corruption"].result()


def test_corruption_monitor_survives(corruption: Record) -> None:
    assert_survived(corruption)
    assert corruption.marks["corrupted_bytes"] > 10  # the proxies really damaged the streams


@pytest.mark.parametrize("stream", ["flv-corrupt", "ts-corrupt"])
def test_corrupted_stream_is_live_after_the_damage_and_alerts(corruption: Record, stream: str) -> None:
    rec = corruption
    states = rec.states(stream)
    assert states and states[-1].state == "live", rec.timeline(stream)
    assert "failed" not in [s.state for s in states], rec.timeline(stream)
    assert alerts_after(rec, stream, rec.marks["resume"]), rec.timeline(stream)


def test_corruption_leaves_the_control_stream_alone(corruption: Record) -> None:
    rec = corruption
    assert_control_unaffected(rec, "control", "3", live_t=rec.marks["all_live"], end_t=rec.marks["end"])


def test_one_undecodable_keyframe_does_not_drop_the_connection(corruption: Record) -> None:
    rec = corruption
    # The keyframe at 2 s of each 10 s loop is undecodable; the image is on the keyframes at 6 and 8 s.
    assert [s.state for s in rec.states("flv-badkey")] == ["connecting", "live"], rec.timeline("flv-badkey")
    assert rec.alerts("flv-badkey"), rec.timeline("flv-badkey")


# --------------------------------------------------------------------------------------------------------------
# Scenario 3: the media changes under the monitor (resolution, codec), and streams without video
# --------------------------------------------------------------------------------------------------------------
# MPEG-TS over TCP: 10 s of H.264 640x360 (image 0 at 4-8 s), then, in the same byte stream and on the same PID,
# 10 s of something else (image at 14-18 s): H.264 1280x720, MPEG-2 640x360, or HEVC 640x360.

SEGMENT_S = 10.0
AFTER_CHANGE = {"res-change": 1, "to-mpeg2": 2, "to-hevc": 1}  # stream -> image shown after the change
NO_VIDEO = ("audio-rtmp", "audio-ts", "data-ts")


def run_media_changes(broker: Mosquitto, rtmp: NginxRtmp, media: Media, bank_csv: Path, folder: Path) -> Record:
    before = media.video("h264-640.ts", seconds=SEGMENT_S, show=Show(0, 4, 8), fmt="mpegts")
    after = {
        "res-change": media.video("h264-1280.ts", seconds=SEGMENT_S, show=Show(1, 4, 8), size="1280x720",
                                  fmt="mpegts", ts_offset=SEGMENT_S),
        "to-mpeg2": media.video("mpeg2-640.ts", seconds=SEGMENT_S, show=Show(2, 4, 8), codec="mpeg2video",
                                fmt="mpegts", ts_offset=SEGMENT_S),
        "to-hevc": media.video("hevc-640.ts", seconds=SEGMENT_S, show=Show(1, 4, 8), codec="libx265",
                               fmt="mpegts", ts_offset=SEGMENT_S),
    }
    servers = {name: LiveTsServer.of_files((before, SEGMENT_S), (seg, SEGMENT_S)) for name, seg in after.items()}
    servers["audio-ts"] = LiveTsServer.of_files((media.audio("sine.ts", seconds=40, fmt="mpegts"), 40))
    servers["data-ts"] = LiveTsServer.of_files((media.data_only_ts("klv.ts", seconds=40), 40))
    audio_flv = media.audio("sine.flv", seconds=LOOP_S, fmt="flv")
    control_flv = media.video("loop-img2.flv", seconds=LOOP_S, show=Show(2, *SHOW_IN_LOOP))
    pub_log = folder / "publishers.log"
    sc = Scenario("media", broker, bank_csv, folder)
    pubs: list[subprocess.Popen[bytes]] = []
    streams = {name: srv.url for name, srv in servers.items()}
    streams |= {"audio-rtmp": rtmp.rtmp_url("audio-rtmp"), "audio-hls": rtmp.hls_url("audio-rtmp"),
                "control": rtmp.rtmp_url("media-control")}
    try:
        sc.start_monitor(streams, incidents={"close_after_s": 3, "quarantine_streams": 100})
        sc.wait_online()
        sc.begin()
        for srv in servers.values():
            srv.start(sc.t0)
        pubs += [publisher(rtmp.rtmp_url("audio-rtmp"), audio_flv, 120, pub_log),
                 publisher(rtmp.rtmp_url("media-control"), control_flv, 120, pub_log)]
        expected = {"res-change": {"1", "2"}, "to-mpeg2": {"1", "3"}, "to-hevc": {"1", "2"}}
        while sc.now() < 2 * SEGMENT_S + 3 and not all(
            entries <= {a["entry_id"] for a in sc.alerts(s)} for s, entries in expected.items()
        ):
            time.sleep(0.2)
        sc.mark("end")
        rec = sc.finish()
    except BaseException:
        sc.abort()
        raise
    finally:
        stop_all(pubs)
        for srv in servers.values():
            srv.close()
    for stream in streams:
        print(rec.timeline(stream)[:1500])
    return rec


@pytest.fixture(scope="module")
def media_changes(scenario_runs: dict[str, Future[Record]]) -> Record:
    return scenario_runs["media-changes"].result()


def test_media_changes_monitor_survives(media_changes: Record) -> None:
    assert_survived(media_changes)


def test_resolution_change_mid_stream_keeps_detecting(media_changes: Record) -> None:
    rec = media_changes
    states = rec.states("res-change")
    live_during_segments = [s for s in states if s.t < 2 * SEGMENT_S]
    assert [s.state for s in live_during_segments][-1] == "live", rec.timeline("res-change")
    assert not [s for s in live_during_segments if s.state in TROUBLE and s.t > SEGMENT_S - 1], rec.timeline(
        "res-change")  # no reconnect at the switch
    by_entry = {a["entry_id"]: a for a in rec.alerts("res-change")}
    assert set(by_entry) == {"1", "2"}, rec.timeline("res-change")
    assert by_entry["2"]["media_time_s"] > SEGMENT_S + 1  # matched on the 1280x720 part


@pytest.mark.parametrize("stream", ["to-mpeg2", "to-hevc"])
def test_codec_change_mid_stream_keeps_detecting(media_changes: Record, stream: str) -> None:
    rec = media_changes
    want = {"1", ENTRY[AFTER_CHANGE[stream]]}
    assert {a["entry_id"] for a in rec.alerts(stream)} == want, rec.timeline(stream)


def test_codec_change_detected_before_the_change(media_changes: Record) -> None:
    """The part that works today: the H.264 part of the codec-changing streams is watched and alerted."""
    for stream in ("to-mpeg2", "to-hevc"):
        assert "1" in {a["entry_id"] for a in media_changes.alerts(stream)}, media_changes.timeline(stream)


@pytest.mark.parametrize("stream", NO_VIDEO)
def test_stream_without_video_says_so_and_backs_off(media_changes: Record, stream: str) -> None:
    rec = media_changes
    states = rec.states(stream)
    assert "live" not in [s.state for s in states] and "failed" not in [s.state for s in states], rec.timeline(stream)
    # Before the source is up the first attempt may be refused; from the first answer on, the reason is clear.
    failures = [s for s in states if s.state == "reconnecting"]
    first = next((i for i, s in enumerate(failures) if "no video stream" in s.detail), len(failures))
    assert first < 2, rec.timeline(stream)
    assert all("no video stream in the input" in s.detail for s in failures[first:]), rec.timeline(stream)
    attempts = [s.attempt for s in failures]
    assert len(attempts) >= 4 and attempts == list(range(1, len(attempts) + 1)), rec.timeline(stream)
    for s in failures:
        cap = min(BACKOFF_MAX_S, 0.2 * 2 ** (s.attempt - 1))
        assert s.retry_in_s is not None and cap / 2 - 0.01 <= s.retry_in_s <= cap + 0.01, s
    assert not rec.alerts(stream)


def test_audio_only_hls_says_no_video(media_changes: Record) -> None:
    rec = media_changes
    answered = [s for s in rec.states("audio-hls") if s.state in TROUBLE and "404" not in s.detail]
    assert answered, rec.timeline("audio-hls")
    assert all("no video stream" in s.detail for s in answered), rec.timeline("audio-hls")


def test_media_changes_leave_the_control_stream_alone(media_changes: Record) -> None:
    rec = media_changes
    assert_control_unaffected(rec, "control", "3", live_t=rec.first("control", "live").t,  # type: ignore[union-attr]
                              end_t=rec.marks["end"])


# --------------------------------------------------------------------------------------------------------------
# Scenario 4: HLS playlists that answer 404 or 500, go away for a while, or stop updating
# --------------------------------------------------------------------------------------------------------------
# One folder of 2 s segments (image at 5-9 s of every 10 s), served by our own HTTP server as several live
# playlists, each with its own behaviour. Segment length equals the read timeout (2 s), as the brief's config has.

HLS_OUTAGE_S = 6.0


def run_hls_faults(broker: Mosquitto, rtmp: NginxRtmp, media: Media, bank_csv: Path, folder: Path) -> Record:
    segments = media.video("hls-img0", seconds=80, show=Show(0, *SHOW_IN_LOOP), repeat_every_s=LOOP_S, fmt="hls")
    server = HlsServer(segments, GOP_S).start()
    control_flv = media.video("loop-img2.flv", seconds=LOOP_S, show=Show(2, *SHOW_IN_LOOP))
    modes = {"hls-404": "404", "hls-500": "500", "hls-outage": "live", "hls-frozen": "live", "hls-ok": "live"}
    sc = Scenario("hls", broker, bank_csv, folder)
    pubs: list[subprocess.Popen[bytes]] = []
    streams = {name: f"http://127.0.0.1:{server.port}/{name}/index.m3u8" for name in modes}
    streams["control"] = rtmp.rtmp_url("hls-control")
    for name in ("hls-404", "hls-500"):  # answering errors from the first request on
        server.add(name, modes[name], time.monotonic())
    try:
        sc.start_monitor(streams, incidents={"close_after_s": 3, "quarantine_streams": 100})
        sc.wait_online()
        sc.begin()
        for name in ("hls-outage", "hls-frozen", "hls-ok"):  # until now these answered 404
            server.add(name, modes[name], sc.t0)
        pubs.append(publisher(rtmp.rtmp_url("hls-control"), control_flv, 120, folder / "publishers.log"))
        watched = ["hls-outage", "hls-frozen", "hls-ok", "control"]
        sc.wait_live(watched, 20)
        sc.mark("all_live")
        f = sc.now() + 1
        sc.at(f)
        server.channels["hls-outage"].set_mode("500")
        sc.mark("outage")
        server.channels["hls-frozen"].set_mode("frozen")
        sc.mark("freeze")
        sc.at(f + HLS_OUTAGE_S)
        server.channels["hls-outage"].set_mode("live")
        sc.mark("outage_end")
        deadline = f + HLS_OUTAGE_S + LOOP_S + 8
        while sc.now() < deadline and not (
            any(sc.alert_wall_t(a) > sc.marks["outage_end"] for a in sc.alerts("hls-outage")) and sc.alerts("hls-ok")
        ):
            time.sleep(0.2)
        sc.mark("end")
        rec = sc.finish()
    except BaseException:
        sc.abort()
        raise
    finally:
        stop_all(pubs)
        server.close()
    for name, reqs in server.playlist_requests.items():
        statuses = sorted({code for _, code in reqs})
        print(f"{name}: {len(reqs)} playlist requests, statuses {statuses}")
    for stream in streams:
        print(rec.timeline(stream)[:1500])
    print("marks", rec.marks)
    return rec


@pytest.fixture(scope="module")
def hls_faults(scenario_runs: dict[str, Future[Record]]) -> Record:
    return scenario_runs["hls-faults"].result()


def test_hls_faults_monitor_survives(hls_faults: Record) -> None:
    assert_survived(hls_faults)


@pytest.mark.parametrize(("stream", "words"), [("hls-404", "HTTP 404"), ("hls-500", "HTTP error")])
def test_hls_playlist_error_is_reported_and_retried_with_backoff(hls_faults: Record, stream: str, words: str) -> None:
    rec = hls_faults
    states = rec.states(stream)
    assert "live" not in [s.state for s in states] and "failed" not in [s.state for s in states], rec.timeline(stream)
    failures = [s for s in states if s.state == "reconnecting"]
    assert len(failures) >= 5 and all(words in s.detail for s in failures), rec.timeline(stream)
    assert [s.attempt for s in failures] == list(range(1, len(failures) + 1))
    assert max(s.retry_in_s or 0 for s in failures) <= BACKOFF_MAX_S + 0.01


def test_hls_outage_is_reported_then_recovers_and_alerts(hls_faults: Record) -> None:
    rec = hls_faults
    start, end = rec.marks["outage"], rec.marks["outage_end"]
    during = [s for s in rec.states("hls-outage") if start < s.t <= end + 0.5]
    assert any(s.state == "reconnecting" and "HTTP error" in s.detail for s in during), rec.timeline("hls-outage")
    back = rec.first("hls-outage", "live", after=end)
    assert back is not None and back.t < end + BACKOFF_MAX_S + 3, rec.timeline("hls-outage")
    assert alerts_after(rec, "hls-outage", end), rec.timeline("hls-outage")


def test_frozen_hls_playlist_is_stalled_not_live(hls_faults: Record) -> None:
    rec = hls_faults
    freeze = rec.marks["freeze"]
    after = [s for s in rec.states("hls-frozen") if s.t > freeze]
    stalled = next((s for s in after if s.state == "stalled"), None)
    assert stalled is not None and stalled.t < freeze + 2 * GOP_S + READ_TIMEOUT_S + 1, rec.timeline("hls-frozen")
    assert not [s for s in after if s.state == "live" and s.t > stalled.t], rec.timeline("hls-frozen")
    # The frozen playlist's last keyframe is old news: sampling it again on each reopen must not re-alert it.
    times = [a["media_time_s"] for a in rec.alerts("hls-frozen")]
    assert len(times) == len(set(times)), rec.timeline("hls-frozen")


def test_healthy_hls_stays_live_when_segments_are_as_long_as_the_read_timeout(hls_faults: Record) -> None:
    rec = hls_faults
    assert [s.state for s in rec.states("hls-ok")] == ["connecting", "live"], rec.timeline("hls-ok")


def test_hls_faults_leave_the_control_stream_alone(hls_faults: Record) -> None:
    rec = hls_faults
    assert_control_unaffected(rec, "control", "3", live_t=rec.marks["all_live"], end_t=rec.marks["end"])
