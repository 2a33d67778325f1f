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

from monitor.config import IngestConfig
from monitor.urls import redact_url

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


class FrameSampler(Protocol):
    """Which decoded frames to take (see monitor/scheduler.py); bound to one stream."""

    def offer(self, media_time_s: float, is_keyframe: bool) -> bool: ...

    def wants_extra(self, media_time_s: float) -> float | None: ...


class EveryKeyframe:
    """Take every keyframe, never an extra frame."""

    def offer(self, media_time_s: float, is_keyframe: bool) -> bool:
        return is_keyframe

    def wants_extra(self, media_time_s: float) -> float | None:
        return None


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


def scaled_rgb(frame: Any, target_width: int) -> npt.NDArray[np.uint8]:
    """The frame as RGB at `target_width` (aspect kept), converted and scaled in one libswscale pass.

    Live keyframes, bank images (`monitor hash`) and benchmarks all go through this, so a bank entry and a
    sample differ only by what the stream did to the picture.
    """
    w, h = scaled_size(frame.width, frame.height, target_width)
    # Area averaging: the right filter for a large reduction (no aliasing), and cheaper than libswscale's default
    # bilinear here (measured 0.91 against 1.17 ms for 720p -> 512x288).
    rgb: npt.NDArray[np.uint8] = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
    return rgb


def scaled_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    if width <= target_width:
        return width - width % 2, height - height % 2
    h = round(target_width * height / width / 2) * 2
    return target_width, max(h, 2)


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
        try:
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
            container.close()  # unclosed containers leak memory

    def _keyframe_timeout_s(self) -> float:
        """No keyframe for this long while packets flow: a codec change, or a stream without decodable video."""
        if self.cfg.keyframe_timeout_s is not None:
            return self.cfg.keyframe_timeout_s
        gop = self.keyframe_interval_s or 2.0
        return max(3 * gop, 2 * self.effective_read_timeout_s)

    def _keyframes(self, container: Any) -> Iterator[DecodedFrame]:
        """Keyframe-only decoding, except where the sampler asks for an extra frame inside a long GOP.

        On each key packet the sampler says whether to take it and whether it wants a frame later in this
        GOP. Keyframe-only: decode the key packet (only if taken), drain, flush. Forward: decode this GOP's
        packets without draining (P-frames need their reference) until a frame reaches the wanted time.
        Audio and data packets are read and dropped here, not discarded in the demuxer: the keyframe watchdog
        must run while they flow (an audio-only stream, or video whose codec changed, has no keyframes).
        """
        if not container.streams.video:
            raise IngestError(self.url, "no video stream in the input", retryable=is_live_url(self.url))
        video = container.streams.video[0]
        ctx = video.codec_context
        ctx.skip_frame = "NONKEY"
        ctx.thread_count = self.cfg.decoder_threads
        tb = video.time_base
        if tb is None:
            raise IngestError(self.url, "video stream without a time base", retryable=is_live_url(self.url))
        sampler = self.sampler
        target: float | None = None  # forward mode while set: the media time of the wanted extra frame
        pending_key: float | None = None  # a taken keyframe not yet out of the decoder
        last_key: float | None = None
        received_at = 0.0
        opened_at = last_key_wall = time.monotonic()
        bad_keyframes = 0  # taken keyframes in a row that the decoder rejected
        blind_keyframes = 0  # taken keyframes in a row that the decoder accepted but made no picture of

        def emit(frame: Any, keyframe: bool) -> DecodedFrame:
            rgb = scaled_rgb(frame, self.cfg.scale_width)
            return DecodedFrame(float(frame.pts * tb), received_at, rgb, time.time(), keyframe)

        def handle(frame: Any) -> Iterator[DecodedFrame]:
            nonlocal pending_key, target
            if frame.pts is None:
                return
            # frame.time is NaN for frames from codec_context.decode (no time_base): compute it.
            t = float(frame.pts * tb)
            if pending_key is not None and abs(t - pending_key) < 1e-6:
                pending_key = None
                yield emit(frame, True)
            elif target is not None and t >= target:
                if sampler.offer(t, False):
                    yield emit(frame, False)
                target = sampler.wants_extra(t)
                if target is None:
                    ctx.skip_frame = "NONKEY"

        def decode(packet: Any, drain: bool) -> list[Any] | None:
            """The frames out of the decoder; None if it rejected the packet."""
            nonlocal bad_keyframes
            try:
                frames = [*ctx.decode(packet), *(ctx.decode(None) if drain else ())]
            except av.error.InvalidDataError:
                # One damaged packet must not cost the connection (a single-client source would be lost).
                ctx.flush_buffers()
                bad_keyframes += packet.is_keyframe
                if bad_keyframes >= MAX_BAD_KEYFRAMES:
                    raise IngestError(self.url, f"{bad_keyframes} undecodable keyframes in a row") from None
                log.debug("%s: undecodable packet at %s skipped", redact_url(self.url), packet.pts)
                return None
            if packet.is_keyframe:
                bad_keyframes = 0
            if drain:
                ctx.flush_buffers()
            return frames

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

        for packet in container.demux():
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
            if packet.is_keyframe:
                received_at = time.time()
                last_key_wall = now
                t_key = float(packet.pts * tb)
                if last_key is not None and t_key > last_key:
                    self.keyframe_interval_s = t_key - last_key
                last_key = t_key
                take = sampler.offer(t_key, True)
                target = sampler.wants_extra(t_key)
                pending_key = t_key if take else None
                if target is None:
                    ctx.skip_frame = "NONKEY"
                    if take:  # a keyframe not taken is not even decoded
                        frames = decode(packet, drain=True)
                        if frames == []:  # drained: an accepted keyframe that is not out now never will be
                            blind(t_key)
                        elif frames:
                            blind_keyframes = 0
                        for frame in frames or ():
                            yield from handle(frame)
                    continue
                ctx.skip_frame = "DEFAULT"
                for frame in decode(packet, drain=False) or ():
                    yield from handle(frame)
            elif target is not None:
                received_at = time.time()
                for frame in decode(packet, drain=False) or ():
                    yield from handle(frame)
