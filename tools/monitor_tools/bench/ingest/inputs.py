"""`monitor bench ingest`: its settings and targets, the prepared input files (cached), and the banks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from monitor.config.models import IngestConfig
from monitor.ingest.reader import KeyframeReader
from pipelines.banks import Bank, Entry
from pipelines.fingerprint import pdq
from pipelines.hamming import CODE_BYTES
from test_streams.images import Background

INPUT_VERSION = 1  # bump when the encoding settings change (the cache key)
WIDTH, HEIGHT, FPS, GOP_S = 1280, 720, 30, 2.0
BITRATE = "2500k"
X264 = ["-preset", "veryfast", "-tune", "zerolatency", "-bf", "0"]  # like test_streams.infra's publishers
BANK_SIZE = 100_000
SAMPLE_EVERY_S = 2.0  # the frame-interval sampler of the full-decode baseline
LIVE_CLIP_S, LIVE_CLIP_S_QUICK = 30, 12  # the live clip, looped by each publisher
PLANTED_AT_S = 14.0  # the clip's keyframe nearest this is in the live bank
KEPT_UP = 0.95  # a monitor kept up when it took at least this part of the keyframes' worth of samples in the window
INCIDENT_CLOSE_S = 8.0  # live: an incident closes this long after its last match (default 120): an alert per loop
TARGETS = {"throughput_media_s_per_cpu_s": 200.0, "ratio_vs_full_decode": 15.0, "engine_vs_floor": 1.5,
           "streams": 100, "alert_p95_s": 0.5, "dropped": 0, "rss_per_stream_mb": 10.0}


def say(msg: str) -> None:
    print(f"[bench ingest] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def to_ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 1)


# -- inputs ---------------------------------------------------------------------------------------------------
def cache_dir(override: Path | None = None) -> Path:
    d = override or Path(tempfile.gettempdir()) / "monitor-bench-ingest"
    d.mkdir(parents=True, exist_ok=True)
    return d


def prepare_input(folder: Path, content: str, seconds: int) -> Path:
    """A 720p30, 2 s GOP H.264 MP4 (cached). content: testsrc2 (ffmpeg) or pan (PyAV, a textured slow pan)."""
    if content == "testsrc2" and shutil.which("ffmpeg") is None:
        content = "pan"
    path = folder / f"{content}-{WIDTH}x{HEIGHT}p{FPS}-gop{GOP_S:g}-{seconds}s-v{INPUT_VERSION}.mp4"
    if path.exists() and path.stat().st_size > 0:
        return path
    part = path.with_name(path.stem + f".part{os.getpid()}.mp4")
    gop = str(round(FPS * GOP_S))
    say(f"encoding {path.name} ...")
    t0 = time.perf_counter()
    if content == "testsrc2":
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
               "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}", "-t", str(seconds), "-c:v", "libx264", *X264,
               "-pix_fmt", "yuv420p", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
               "-b:v", BITRATE, "-maxrate", BITRATE, "-bufsize", "5000k", str(part)]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, timeout=600)
    elif content == "pan":
        bg = Background(7, WIDTH, HEIGHT)
        with av.open(str(part), "w") as out:
            s = out.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            ctx = s.codec_context
            ctx.gop_size = round(FPS * GOP_S)
            ctx.bit_rate = 2_500_000
            ctx.options = {"preset": "veryfast", "tune": "zerolatency", "bf": "0", "sc_threshold": "0",
                           "keyint_min": gop, "maxrate": BITRATE, "bufsize": "5000k"}
            for i in range(seconds * FPS):
                frame = av.VideoFrame.from_ndarray(bg.frame(i / FPS), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, FPS)
                for packet in s.encode(frame):
                    out.mux(packet)
            for packet in s.encode():
                out.mux(packet)
    else:
        raise ValueError(f"unknown content {content!r}")
    part.replace(path)
    say(f"  {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    return path


def media_duration(path: Path) -> float:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for p in c.demux(v) if p.dts is not None)
        rate = float(v.average_rate or FPS)
    return frames / rate


def keyframe_hashes(path: Path, cfg: IngestConfig) -> list[np.ndarray]:
    return [pdq(f.rgb)[0] for f in KeyframeReader(str(path), cfg, threading.Event()).frames()]


def make_bank(known: list[np.ndarray], size: int, seed: int = 1) -> tuple[Bank, int]:
    """`size` entries: random codes plus every other keyframe hash of the input (so about half match)."""
    rng = np.random.default_rng(seed)
    planted = known[::2]
    codes = rng.integers(0, 256, (size, CODE_BYTES), dtype=np.uint8)
    pos = rng.choice(size, len(planted), replace=False)
    for p, c in zip(pos, planted, strict=True):
        codes[p] = c
    entries = [Entry(str(i)) for i in range(size)]
    return Bank("bench", "pdq", codes, entries), len(planted)
