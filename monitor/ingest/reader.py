"""Pull a stream with PyAV and decode only its keyframes, scaled in libswscale for hashing.

Why this shape (see shared notes on PyAV): `skip_frame=NONKEY` alone delivers each keyframe about two GOPs late
because the decoder keeps a reorder buffer; draining (`decode(None)`) and `flush_buffers()` after each key packet
makes the lag zero. Non-key packets are never decoded at all, which is what makes hundreds of streams affordable.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from monitor.common.urls import redact_url
from monitor.config.models import IngestConfig
from monitor.ingest.coverage import StreamClock, thumbnail
from monitor.ingest.crashguard import native_iter, native_section
from monitor.ingest.packets import CLEAN_KEY, KeyInfo, avcc_length_size, h264_key_info

log = logging.getLogger(__name__)

MAX_BAD_KEYFRAMES = 5  # undecodable keyframes in a row before the connection is given up
# Keyframes in a row that the decoder accepts without an error but turns into no picture. A decoder fed another
# codec's bitstream does exactly this (an MPEG-TS source switching H.264 -> MPEG-2 or HEVC on the same PID: FFmpeg's
# demuxer follows the new PMT, but PyAV's codec context stays the one opened at the start), so the stream is reopened
# and probed again. Two, not one: a single odd packet in a damaged stream must not cost the connection.
MAX_BLIND_KEYFRAMES = 2
# FFmpeg's HLS demuxer counts playlist reloads that bring no new segment (`m3u8_hold_counters`, default 1000) and ends
# the stream at this count. The first reload after a segment always counts one, later ones come every half target
# duration: 3 means "no new segment 1.5 target durations after the reload that brought the last one", so the demuxer
# ends about 2 target durations after that reload. A live playlist adds a segment at least once per target duration,
# so a healthy stream never gets there; it scales with the segment length, which a fixed timeout does not.
HLS_HOLD_RELOADS = 3
# The keyframe watchdog grows with the GOP (3 GOPs), measured in wall-clock time and capped here.
MAX_WATCHED_GOP_S = 60.0
# Packets kept since the last sync point for decoding forward to a wanted moment. A 30 s GOP at 8 Mbit/s is
# about 30 MB; past either limit the packets are dropped and the stream waits for its next keyframe.
MAX_KEPT_PACKETS = 4000
MAX_KEPT_BYTES = 48 << 20

NETWORK_SCHEMES = ("rtmp", "rtmps", "rtmpt", "http", "https", "tcp", "udp", "rtsp", "srt")


class IngestError(Exception):
    """The stream could not be opened or read. `retryable` is False for errors that waiting will not fix."""

    def __init__(self, url: str, reason: str, *, stalled: bool = False, retryable: bool = True) -> None:
        super().__init__(f"{redact_url(url)}: {reason}")
        self.reason = reason
        self.stalled = stalled
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    media_time_s: float
    received_at: float  # unix time the packet was read
    rgb: npt.NDArray[np.uint8]
    decoded_at: float = 0.0  # unix time the scaled frame was ready
    keyframe: bool = True
    reason: str = "key"  # why it was sampled (monitor/ingest/coverage.py): key, interval, change, jump, audit, ...


class FrameSampler(Protocol):
    """Which moments of one stream become samples (monitor/ingest/coverage.py, through monitor/ingest/scheduler.py).

    Times are stream time (monotonic seconds, see `StreamClock`); `wall` is unix time."""

    def start(self, live: bool) -> None:
        """A new connection: the stream's timeline starts over."""
        ...

    def key(self, t: float, size: int, info: KeyInfo, wall: float) -> bool:
        """A key-flagged packet: take it as a sample (decoded on its own)?"""
        ...

    def packet(self, t: float, size: int, wall: float, reordered: bool) -> float | None:
        """A non-key packet (`reordered`: shown before a packet decoded earlier, a B-frame): the stream time of a
        wanted frame (decode forward to it), or None."""
        ...

    def forward(self, packets: int) -> bool:
        """May `packets` packets be decoded for the wanted frame (the decode budget)?"""
        ...

    def sampled(self, t: float, keyframe: bool, thumb: npt.NDArray[np.float32], wall: float) -> str:
        """A sample was decoded at stream time t; returns why it was taken."""
        ...


class EveryKeyframe:
    """Take every clean keyframe, never a frame between keyframes (the keyframe-only sampler)."""

    def start(self, live: bool) -> None:
        pass

    def key(self, t: float, size: int, info: KeyInfo, wall: float) -> bool:
        return info.clean

    def packet(self, t: float, size: int, wall: float, reordered: bool) -> float | None:
        return None

    def forward(self, packets: int) -> bool:
        return True

    def sampled(self, t: float, keyframe: bool, thumb: npt.NDArray[np.float32], wall: float) -> str:
        return "key"


def is_live_url(url: str) -> bool:
    return url.split(":", 1)[0].lower() in NETWORK_SCHEMES


def open_options(url: str) -> dict[str, str]:
    # Small probe: RTMP open drops from ~6 s to ~0.5 s. Never `fflags=nobuffer`: it loses the first keyframe.
    opts = {"probesize": "65536", "analyzeduration": "1000000"}
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        # HLS: start at the live edge; let FFmpeg retry single segment fetches. Not reconnect_at_eof: it loops.
        # A frozen playlist ends the demuxer after HLS_HOLD_RELOADS reloads without a new segment. Without it, the
        # read timeout decides, and twice over: the TS demuxer holds the last packets of the last segment until its
        # input ends, the first timeout releases them, the packets restart PyAV's read timer, the second ends it.
        opts.update(
            {
                "live_start_index": "-1",
                "m3u8_hold_counters": str(HLS_HOLD_RELOADS),
                "reconnect": "1",
                "reconnect_streamed": "1",
                "reconnect_on_network_error": "1",
                "reconnect_delay_max": "2",
            }
        )
    return opts


def is_hls_url(url: str) -> bool:
    scheme = url.split(":", 1)[0].lower()
    return scheme in ("http", "https") and ".m3u8" in url.split("?", 1)[0].lower()


def hls_target_duration(url: str, timeout_s: float) -> float | None:
    """#EXT-X-TARGETDURATION of a media playlist (of the first variant of a master playlist), or None."""
    try:
        for _ in range(2):
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                text = r.read(1 << 20).decode("utf-8", "replace")
            m = re.search(r"#EXT-X-TARGETDURATION:\s*([0-9.]+)", text)
            if m:
                return float(m.group(1))
            variant = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), None)
            if variant is None:
                return None
            url = urllib.parse.urljoin(url, variant)
    except (OSError, ValueError):
        return None  # FFmpeg will report what is wrong with the URL
    return None


def scaled_rgb(frame: Any, target_width: int, reformatter: VideoReformatter | None = None) -> npt.NDArray[np.uint8]:
    """The frame as RGB at `target_width` (aspect kept), converted and scaled in one libswscale pass.

    Live keyframes, bank images (`monitor hash`) and benchmarks all go through this, so a bank entry and a
    sample differ only by what the stream did to the picture. A reader passes its own `reformatter`: one
    SwsContext per stream, reused while the picture size stays (`frame.to_ndarray(width=...)` builds one per
    frame). One thread: libswscale's automatic threads start and join a thread per core on every frame.
    """
    w, h = scaled_size(frame.width, frame.height, target_width)
    # Area averaging: the right filter for a large reduction (no aliasing), and cheaper than libswscale's default
    # bilinear here (measured 0.91 against 1.17 ms for 720p -> 512x288).
    fmt = reformatter if reformatter is not None else VideoReformatter()
    out = fmt.reformat(frame, format="rgb24", width=w, height=h, interpolation="AREA", threads=1)
    rgb: npt.NDArray[np.uint8] = np.asarray(out.to_ndarray(), dtype=np.uint8)
    return rgb


def scaled_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """`target_width` wide (aspect kept), never taller than twice that: a 496x16384 picture must not become a
    23 MiB sample."""
    max_h = 2 * target_width
    if width <= target_width and height <= max_h:
        return max(width - width % 2, 2), max(height - height % 2, 2)
    scale = min(target_width / width, max_h / height)
    w = round(width * scale / 2) * 2
    h = round(height * scale / 2) * 2
    return max(w, 2), max(h, 2)


def _classify(url: str, exc: BaseException, opened: bool) -> IngestError:
    if isinstance(exc, av.error.ExitError):
        # The interrupt callback fired: no packet within the read timeout.
        return IngestError(url, "no data within the read timeout (stalled)", stalled=opened)
    if isinstance(exc, ConnectionRefusedError):
        return IngestError(url, "connection refused")
    if isinstance(exc, av.error.HTTPNotFoundError):
        return IngestError(url, "HTTP 404: no such stream (yet)")
    if isinstance(exc, av.error.HTTPClientError | av.error.HTTPServerError):
        return IngestError(url, f"HTTP error: {exc.strerror or exc}")
    if isinstance(exc, FileNotFoundError):
        if is_live_url(url):
            return IngestError(url, "not found on the server (no such stream yet)")
        return IngestError(url, "no such file", retryable=False)
    if isinstance(exc, av.error.InvalidDataError):
        return IngestError(url, "invalid data (not a stream PyAV can demux)", retryable=is_live_url(url))
    if isinstance(exc, OSError) and exc.errno == errno.EIO:
        return IngestError(url, "connection lost (publisher gone?)")
    if isinstance(exc, av.error.FFmpegError | OSError):
        return IngestError(url, f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}")
    return IngestError(url, f"unexpected {type(exc).__name__}: {exc}")


class KeyframeReader:
    """Yields every keyframe of one stream, scaled, until the stream ends or `stop` is set.

    One reader belongs to one thread: PyAV containers are not shared across threads, and the stop flag is
    checked between packets (the read timeout bounds the wait).
    """

    def __init__(self, url: str, cfg: IngestConfig, stop: threading.Event,
                 sampler: FrameSampler | None = None) -> None:
        self.url = url
        self.cfg = cfg
        self.stop = stop
        self.sampler: FrameSampler = sampler or EveryKeyframe()
        self.effective_read_timeout_s = cfg.read_timeout_s
        self.keyframe_interval_s: float | None = None  # measured gap between keyframes

    def read_timeout_s(self) -> float:
        """FFmpeg's read timeout also bounds the HLS reader's wait for the next segment: for HLS it must outlast
        two target durations, or a healthy stream ends (and is reopened) at every segment."""
        if not is_hls_url(self.url):
            return self.cfg.read_timeout_s
        target = hls_target_duration(self.url, self.cfg.open_timeout_s)
        return max(self.cfg.read_timeout_s, 2 * (target or self.cfg.hls_default_segment_s) + 1)

    def frames(self) -> Iterator[DecodedFrame]:
        """Raises IngestError on failure; returns normally at end of stream."""
        opened = False
        self.effective_read_timeout_s = self.read_timeout_s()
        # PyAV's read timeout, not FFmpeg's `rw_timeout`: PyAV's interrupt callback takes the GIL on each poll, but
        # with nginx's 64 KB chunks (configs/nginx-rtmp.conf) rw_timeout measured no gain (docs/bench-ingest.md),
        # and as a per-read bound it also cuts the open's wait for the first packet, which nginx-rtmp holds back
        # until the next keyframe: a stream whose GOP is longer than the read timeout could never be opened.
        try:
            with native_section("open"):
                container = av.open(
                    self.url if is_live_url(self.url) else str(Path(self.url)),
                    options=open_options(self.url),
                    timeout=(self.cfg.open_timeout_s, self.effective_read_timeout_s),
                )
        except Exception as exc:  # PyAV raises many OSError/FFmpegError subclasses
            raise _classify(self.url, exc, opened) from exc
        opened = True
        try:
            yield from self._keyframes(container)
        except IngestError:
            raise
        except Exception as exc:
            raise _classify(self.url, exc, opened) from exc
        finally:
            with native_section("close"):
                container.close()  # unclosed containers leak memory

    def _keyframe_timeout_s(self) -> float:
        """No keyframe for this long while packets flow: a codec change, or a stream without decodable video.

        Sized from the wall-clock gap between keyframes, never from the publisher's timestamps (two keyframes
        stamped 1e6 s apart must not stretch it), and capped."""
        if self.cfg.keyframe_timeout_s is not None:
            return self.cfg.keyframe_timeout_s
        gop = min(self.keyframe_interval_s or 2.0, MAX_WATCHED_GOP_S)
        return max(3 * gop, 2 * self.effective_read_timeout_s)

    def _check_size(self, width: int, height: int) -> None:
        cap = self.cfg.max_pixels
        if width * height > cap:
            raise IngestError(self.url, f"picture {width}x{height} is over the cap of {cap} pixels "
                              "(ingest.max_pixels): not decoded", retryable=is_live_url(self.url))

    def _keyframes(self, container: Any) -> Iterator[DecodedFrame]:
        """Keyframes, and the frames between them that the sampler asks for.

        The packets since the last sync point (a clean keyframe, or an intra-refresh recovery point) are kept,
        not decoded. A keyframe the sampler takes is decoded at once; when the sampler wants a moment between
        keyframes, the kept packets are decoded in order up to it (the decoder keeps its state, so a second
        moment in the same GOP costs only the packets after the first). Frames decoded on the way are dropped
        unscaled. Audio and data packets are read and dropped here, not discarded in the demuxer: the keyframe
        watchdog must run while they flow (an audio-only stream, or video whose codec changed, has no keyframes).
        """
        if not container.streams.video:
            raise IngestError(self.url, "no video stream in the input", retryable=is_live_url(self.url))
        video = container.streams.video[0]
        ctx = video.codec_context
        self._check_size(ctx.width, ctx.height)
        ctx.options = {"max_pixels": str(self.cfg.max_pixels)}  # a mid-stream size change is refused by FFmpeg
        ctx.skip_frame = "DEFAULT"
        ctx.thread_count = self.cfg.decoder_threads
        tb = video.time_base
        if tb is None:
            raise IngestError(self.url, "video stream without a time base", retryable=is_live_url(self.url))
        # Seconds as int arithmetic: pts * num / den is the same correctly rounded float as float(pts * tb), without
        # building two Fractions per packet.
        tb_num, tb_den = tb.numerator, tb.denominator
        h264 = ctx.name == "h264"
        length_size = avcc_length_size(bytes(ctx.extradata)) if h264 and ctx.extradata else None
        sampler = self.sampler
        sampler.start(is_live_url(self.url))
        clock = StreamClock()
        buf: list[Any] = []  # packets not yet fed to the decoder, in decode order, from a sync point on
        buf_bytes = 0
        synced = False  # feeding `buf` in order continues a valid decoder state
        drained = False  # the decoder was drained (end of stream sent): flush before the next packet
        times: dict[int, float] = {}  # pts -> stream time, for the packets since the sync point
        target: float | None = None  # stream time of the wanted frame between keyframes
        feeding = False  # the wanted frame's packets are being fed: feed each new one until it comes out
        pending_key: int | None = None  # pts of a taken keyframe not yet out of the decoder
        max_pts = -(1 << 62)  # the latest pts this GOP: a packet before it is shown before it (a B-frame)
        received_at = 0.0
        last_key: float | None = None
        opened_at = last_key_wall = time.monotonic()
        # No SwsContext kept per stream: a reader thread still holding one when the process exits (workers: 0)
        # crashed the interpreter at shutdown (SIGSEGV, tests/integration/test_e2e_hooks.py). One per frame,
        # single-threaded.
        bad_packets = 0  # packets in a row the decoder rejected
        blind_keyframes = 0  # taken keyframes in a row that the decoder accepted but made no picture of

        def emit(frame: Any, t: float, keyframe: bool) -> DecodedFrame:
            if frame.width * frame.height > self.cfg.max_pixels:
                self._check_size(frame.width, frame.height)
            with native_section("scale"):
                rgb = scaled_rgb(frame, self.cfg.scale_width)
            now = time.time()
            reason = sampler.sampled(t, keyframe, thumbnail(rgb), now)
            return DecodedFrame(t, received_at, rgb, now, keyframe, reason)

        def decode(packet: Any) -> list[Any] | None:
            """The frames out of the decoder; None if it rejected the packet."""
            nonlocal bad_packets, drained, synced
            if drained:
                with native_section("decode"):
                    ctx.flush_buffers()
                drained = False
            try:
                with native_section("decode"):
                    frames = list(ctx.decode(packet))
            except (av.error.InvalidDataError, av.error.ArgumentError, av.error.MemoryError) as exc:
                # One damaged packet must not cost the connection (a single-client source would be lost).
                with native_section("decode"):
                    ctx.flush_buffers()
                synced = False
                bad_packets += 1
                if ctx.width * ctx.height > self.cfg.max_pixels:
                    self._check_size(ctx.width, ctx.height)
                if bad_packets >= MAX_BAD_KEYFRAMES:
                    raise IngestError(self.url, f"{bad_packets} undecodable packets in a row ({exc})") from None
                log.debug("%s: undecodable packet at %s skipped", redact_url(self.url), packet.pts)
                return None
            bad_packets = 0
            return frames

        def drain() -> list[Any]:
            nonlocal drained
            try:
                with native_section("decode"):
                    frames = list(ctx.decode(None))
            except av.error.EOFError:
                frames = []
            drained = True
            return frames

        def feed(packets: list[Any]) -> Iterator[DecodedFrame]:
            """Decode `packets` in order; emit the wanted frame if it comes out."""
            nonlocal target, feeding
            for packet in packets:
                for frame in decode(packet) or ():
                    if frame.pts is None or target is None:
                        continue
                    t = times.get(frame.pts)
                    if t is None:
                        t = float(frame.pts * tb)
                    if t >= target - 1e-6:
                        target = None
                        feeding = False
                        yield emit(frame, t, False)
                if not synced:
                    target = None
                    feeding = False
                    return

        def blind(t_key: float) -> None:
            """A taken keyframe went into the decoder without an error and no picture came out (drained)."""
            nonlocal blind_keyframes
            blind_keyframes += 1
            if blind_keyframes >= MAX_BLIND_KEYFRAMES:
                # Live: reopen, the probe finds the new codec. A file would start again from its beginning.
                raise IngestError(self.url, f"{blind_keyframes} keyframes in a row gave no picture from the {ctx.name} "
                                  "decoder (codec changed mid-stream?)", retryable=is_live_url(self.url))
            log.info("%s: keyframe at %.2f s gave no picture from the %s decoder", redact_url(self.url), t_key,
                     ctx.name)

        for packet in native_iter(container.demux(), "demux"):
            if self.stop.is_set():
                return
            now = time.monotonic()
            if now - last_key_wall > self._keyframe_timeout_s():
                if last_key is None:
                    raise IngestError(self.url, f"no video stream data: no keyframe within {now - opened_at:.0f} s "
                                      "(audio-only or data-only stream?)")
                raise IngestError(self.url, f"no keyframe for {now - last_key_wall:.0f} s while data flows "
                                  "(codec change or broken video?)", stalled=True)
            if packet.stream.index != video.index or packet.dts is None or packet.pts is None:
                continue  # audio, data, flush packets
            wall = time.time()
            t = packet.pts * tb_num / tb_den + clock.offset(packet.dts * tb_num / tb_den)
            if packet.is_keyframe or packet.pts > max_pts:
                max_pts = packet.pts
            size = packet.size
            if packet.is_keyframe:
                received_at = wall
                if last_key is not None:
                    self.keyframe_interval_s = now - last_key_wall
                last_key_wall = now
                last_key = t
                info = h264_key_info(bytes(packet), length_size) if h264 else CLEAN_KEY
                take = sampler.key(t, size, info, wall)
                if info.clean:
                    buf, buf_bytes, synced, target, feeding = [packet], size, True, None, False
                    times.clear()
                    times[packet.pts] = t
                    if not take:
                        continue
                    frames = decode(packet)
                    if frames is None:  # rejected: counts as a keyframe without a picture
                        blind(t)
                        continue
                    if frames:
                        buf, buf_bytes = [], 0  # the decoder holds the keyframe: later packets continue it
                    else:  # held in the decoder's reorder buffer: drain it out (the keyframe is fed again later)
                        pending_key = packet.pts
                        frames = drain()
                        if not frames:
                            blind(t)
                            continue
                    blind_keyframes = 0
                    taken = [f for f in frames if f.pts is not None and f.pts in (packet.pts, pending_key)]
                    # Scaled before the yield, and no decoded picture kept across it: a frame still held when
                    # the next keyframe is decoded keeps a second picture buffer in the decoder's pool.
                    out = [emit(f, t, True) for f in taken]
                    frames = taken = []
                    if out:
                        pending_key = None
                    yield from out
                    continue
                if not info.recovery_point:  # not a picture on its own (another codec?): like a blind keyframe
                    buf, buf_bytes, synced, target, feeding = [], 0, False, None, False
                    times.clear()
                    blind(t)
                    continue
                # A recovery point: an ordinary slice that starts an intra-refresh period.
                if not synced:
                    buf, buf_bytes, synced = [], 0, True
                    times.clear()
            elif not synced:
                sampler.packet(t, size, wall, packet.pts < max_pts)  # signals count; nothing to decode against
                continue
            buf.append(packet)
            buf_bytes += size
            times[packet.pts] = t
            if len(buf) > MAX_KEPT_PACKETS or buf_bytes > MAX_KEPT_BYTES:
                log.info("%s: %d packets (%d bytes) since the last keyframe: over the limit, dropped until the "
                         "next keyframe", redact_url(self.url), len(buf), buf_bytes)
                buf, buf_bytes, synced, target, feeding = [], 0, False, None, False
                times.clear()
                continue
            if not packet.is_keyframe:
                want = sampler.packet(t, size, wall, packet.pts < max_pts)
                if not feeding:
                    target = want
            if feeding or (target is not None and t >= target - 1e-6):
                # The decode budget is charged for every packet fed for a wanted frame (all of them at once
                # when feeding starts, then each one while the frame has not come out).
                if not sampler.forward(len(buf)):
                    target, feeding = None, False
                    continue
                if not feeding:
                    feeding = True
                    received_at = wall
                todo, buf, buf_bytes = buf, [], 0
                yield from feed(todo)
