"""The keyframe reader: every keyframe, on time, with real media times, scaled before hashing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from monitor.config.models import IngestConfig
from monitor.ingest.reader import IngestError, KeyframeReader
from pipelines.banks import Bank, Entry
from pipelines.base import Sample
from pipelines.fingerprint import pdq
from pipelines.known_content import KnownContentMatcher
from test_streams.images import known_image
from test_streams.infra import free_port
from test_streams.live import Appearance, generate


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ingest") / "s.ts"
    generate(str(path), duration_s=12, shows=[Appearance(0, 4.0, 6.0)], realtime=False)
    return path


def read_all(url: str, **cfg: float) -> list[tuple[float, tuple[int, ...]]]:
    reader = KeyframeReader(url, IngestConfig(**cfg), threading.Event())  # type: ignore[arg-type]
    return [(f.media_time_s, f.rgb.shape) for f in reader.frames()]


def test_every_keyframe_with_its_media_time_scaled(stream_file: Path) -> None:
    frames = read_all(str(stream_file), scale_width=320)
    times = [t for t, _ in frames]
    assert not any(math.isnan(t) for t in times)
    base = times[0]
    assert [round(t - base, 2) for t in times] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert all(shape == (180, 320, 3) for _, shape in frames)


def test_known_image_keyframe_matches(stream_file: Path) -> None:
    code, _ = pdq(known_image(0, 512, 288))
    bank = Bank("b", "pdq", code.reshape(1, -1), [Entry("7", "seven")])
    matcher = KnownContentMatcher([bank])
    reader = KeyframeReader(str(stream_file), IngestConfig(), threading.Event())
    hits = []
    for f in reader.frames():
        hits += matcher.process(Sample("s", f.media_time_s, f.received_at, f.rgb))
    assert [(round(h.media_time_s), h.entry_id, h.entry_label) for h in hits] == [(4, "7", "seven")]
    assert hits[0].distance <= 31 and hits[0].quality >= 50
    assert matcher.stats.samples == 6


def test_missing_file_is_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as err:
        read_all(str(tmp_path / "nope.ts"))
    assert not err.value.retryable and "no such file" in str(err.value)


def test_garbage_file_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "junk.ts"
    p.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(IngestError) as err:
        read_all(str(p))
    assert not err.value.retryable


def test_live_keyframes_arrive_without_gop_lag(tmp_path: Path) -> None:
    """With the drain after each key packet, a keyframe is ready as soon as its packet is read, not 2 GOPs later."""
    port = free_port()
    truth = tmp_path / "truth.json"
    gen = subprocess.Popen([sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
                            "--duration", "9", "--truth", str(truth)])
    try:
        reader = KeyframeReader(f"tcp://127.0.0.1:{port}", IngestConfig(), threading.Event())
        frames = []
        for _attempt in range(50):
            try:
                frames = list(reader.frames())
                break
            except IngestError:  # the generator is not listening yet
                threading.Event().wait(0.1)
        assert gen.wait(30) == 0
    finally:
        gen.kill()
    wall_start = json.loads(truth.read_text())["wall_start"]
    assert len(frames) >= 4
    lags = [f.received_at - (wall_start + f.media_time_s) for f in frames]
    # Each keyframe is read within a fraction of a second of being encoded; a reorder-buffer lag would be 4 s.
    assert max(lags) < 1.0, lags


def ts_part(path: Path, codec: str, first_frame: int, frames: int, fps: int = 10, gop: int = 10) -> bytes:
    """MPEG-TS of a moving picture, one keyframe per `gop` frames, timestamps from `first_frame`. Every part has
    the same PIDs, so parts concatenated byte for byte are one stream whose codec changes (a restarted encoder)."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.gop_size = gop
        stream.max_b_frames = 0
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "keyint_min": str(gop), "sc_threshold": "0"}
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(frames):
            n = first_frame + i
            x = np.arange(320, dtype=np.uint16)[None, :, None] + 7 * n
            rgb = np.broadcast_to((x * (1, 3, 5) % 256).astype(np.uint8), (180, 320, 3)).copy()
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


def test_codec_change_mid_stream_is_reported_not_silently_blind(tmp_path: Path) -> None:
    """H.264 then MPEG-2 on the same PID: FFmpeg's demuxer follows the new PMT, PyAV's H.264 decoder does not and
    turns the MPEG-2 keyframes into nothing, without an error. The reader must say so, not read on blind."""
    both = tmp_path / "h264-then-mpeg2.ts"
    both.write_bytes(ts_part(tmp_path / "a.ts", "libx264", 0, 40) + ts_part(tmp_path / "b.ts", "mpeg2video", 40, 40))
    reader = KeyframeReader(str(both), IngestConfig(), threading.Event())
    times = []
    with pytest.raises(IngestError) as err:
        for f in reader.frames():
            times.append(f.media_time_s)
    assert len(times) == 4  # the H.264 keyframes, at 0, 1, 2, 3 s
    assert "gave no picture from the h264 decoder" in err.value.reason, err.value
    assert not err.value.retryable  # a file would start again from its beginning; a live URL is reopened


def test_one_keyframe_without_picture_is_tolerated(tmp_path: Path) -> None:
    """One GOP of another codec between H.264 parts (one blind keyframe): the H.264 keyframes after it are read."""
    mixed = tmp_path / "mixed.ts"
    mixed.write_bytes(ts_part(tmp_path / "a.ts", "libx264", 0, 30) + ts_part(tmp_path / "b.ts", "mpeg2video", 30, 10)
                      + ts_part(tmp_path / "c.ts", "libx264", 40, 30))
    reader = KeyframeReader(str(mixed), IngestConfig(), threading.Event())
    times = [f.media_time_s for f in reader.frames()]  # no IngestError
    base = times[0]
    # 3 s: the MPEG-2 keyframe, no picture from the H.264 decoder. 4 s: FFmpeg's TS demuxer drops the first H.264
    # packets after the switch back (a PES spanning the PMT change), so the next keyframe read is the one at 5 s.
    assert [round(t - base) for t in times] == [0, 1, 2, 5, 6]


class LiveHls:
    """A live HLS playlist over ready segments, sliding with wall time until frozen."""

    def __init__(self, segments: list[str], folder: Path, segment_s: float) -> None:
        self.segments, self.folder, self.segment_s = segments, folder, segment_s
        self.t0 = time.monotonic()
        self.frozen: int | None = None
        live = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
                if name == "live.m3u8":
                    body = live.playlist()
                elif name in live.segments:
                    body = (live.folder / name).read_bytes()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/live.m3u8"

    def newest(self) -> int:
        if self.frozen is not None:
            return self.frozen
        return min(len(self.segments) - 1, 2 + int((time.monotonic() - self.t0) / self.segment_s))

    def freeze(self) -> None:
        self.frozen = self.newest()

    def playlist(self) -> bytes:
        last = self.newest()
        first = max(0, last - 4)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{round(self.segment_s)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for name in self.segments[first : last + 1]:
            lines += [f"#EXTINF:{self.segment_s:.3f},", name]
        return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow
def test_frozen_hls_playlist_ends_the_reader_within_two_target_durations(tmp_path: Path) -> None:
    """A healthy live playlist keeps the reader going; once it stops adding segments the reader ends about two
    target durations after the reload that brought the last one (FFmpeg's m3u8_hold_counters), not after two read
    timeouts (the TS demuxer's held-back last packets restart PyAV's read timer once)."""
    generate(str(tmp_path / "s.m3u8"), fps=10, gop_s=1.0, duration_s=30, realtime=False, hls_list_size=0)
    segments = sorted((p.name for p in tmp_path.glob("s*.ts")), key=lambda n: int(n[1:-3]))
    hls = LiveHls(segments, tmp_path, 1.0)
    cfg = IngestConfig(read_timeout_s=5, open_timeout_s=5)
    reader = KeyframeReader(hls.url, cfg, threading.Event())
    freeze_after_s = 5.0
    frames: list[tuple[float, float]] = []
    freeze_at: float | None = None
    try:
        for f in reader.frames():
            now = time.monotonic()
            frames.append((now, f.media_time_s))
            if freeze_at is None and now - hls.t0 >= freeze_after_s:
                hls.freeze()
                freeze_at = now
        ended = time.monotonic()
    finally:
        hls.httpd.shutdown()
        hls.httpd.server_close()
    assert freeze_at is not None, f"the healthy playlist ended the reader: {frames}"
    assert ended - freeze_at < 2 * 1.0 + 1 + 1.5, (ended - freeze_at, frames)
