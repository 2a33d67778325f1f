"""Pull a stream with PyAV and decode only its keyframes, scaled in libswscale for hashing.

Why this shape (see shared notes on PyAV): `skip_frame=NONKEY` alone delivers each keyframe about two GOPs late
because the decoder keeps a reorder buffer; draining (`decode(None)`) and `flush_buffers()` after each key packet
makes the lag zero. Non-key packets are never decoded at all, which is what makes hundreds of streams affordable.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import av
import av.error
import av.stream
import numpy as np
import numpy.typing as npt

from monitor.config import IngestConfig
from monitor.urls import redact_url

log = logging.getLogger(__name__)

# PyAV 18+ takes the enum; older releases took the name.
_DISCARD_ALL: Any = getattr(getattr(av.stream, "Discard", None), "all", "all")

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
        opts.update(
            {
                "live_start_index": "-1",
                "reconnect": "1",
                "reconnect_streamed": "1",
                "reconnect_on_network_error": "1",
                "reconnect_delay_max": "2",
            }
        )
    return opts


def _scaled_size(width: int, height: int, target_width: int) -> tuple[int, int]:
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
        self.keyframe_interval_s: float | None = None  # measured gap between keyframes

    def frames(self) -> Iterator[DecodedFrame]:
        """Raises IngestError on failure; returns normally at end of stream."""
        opened = False
        try:
            container = av.open(
                self.url if is_live_url(self.url) else str(Path(self.url)),
                options=open_options(self.url),
                timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s),
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

    def _keyframes(self, container: Any) -> Iterator[DecodedFrame]:
        """Keyframe-only decoding, except where the sampler asks for an extra frame inside a long GOP.

        On each key packet the sampler says whether to take it and whether it wants a frame later in this
        GOP. Keyframe-only: decode the key packet (only if taken), drain, flush. Forward: decode this GOP's
        packets without draining (P-frames need their reference) until a frame reaches the wanted time.
        """
        if not container.streams.video:
            raise IngestError(self.url, "no video stream in the input", retryable=is_live_url(self.url))
        video = container.streams.video[0]
        for other in container.streams:
            if other.index != video.index:
                other.discard = _DISCARD_ALL  # audio/data: demuxed but never kept
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

        def emit(frame: Any, keyframe: bool) -> DecodedFrame:
            w, h = _scaled_size(frame.width, frame.height, self.cfg.scale_width)
            rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
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

        for packet in container.demux(video):
            if self.stop.is_set():
                return
            if packet.dts is None or packet.pts is None:  # flush packets
                continue
            if packet.is_keyframe:
                received_at = time.time()
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
                        for frame in [*ctx.decode(packet), *ctx.decode(None)]:
                            yield from handle(frame)
                        ctx.flush_buffers()
                    continue
                ctx.skip_frame = "DEFAULT"
                for frame in ctx.decode(packet):
                    yield from handle(frame)
            elif target is not None:
                received_at = time.time()
                for frame in ctx.decode(packet):
                    yield from handle(frame)
