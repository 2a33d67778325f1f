"""Limits a publisher cannot blow through: picture size, sample size, the keyframe watchdog, keyframe floods."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from monitor.config.models import IngestConfig
from monitor.ingest.coverage import CoveragePolicy
from monitor.ingest.reader import IngestError, KeyframeReader, scaled_size
from monitor.ingest.sampler import StreamPolicy
from monitor.ingest.scheduler import Scheduler
from monitor.runtime.supervisor import BoundSampler

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (scripts/test installs it)")
FFMPEG = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]


def encode(path: Path, size: str, seconds: float, *extra: str, vf: str | None = None) -> Path:
    cmd = [*FFMPEG, "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=10", "-frames:v", str(round(10 * seconds))]
    if vf:
        cmd += ["-vf", vf]
    subprocess.run([*cmd, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, str(path)],
                   check=True, timeout=120)
    return path


def test_a_tall_thin_picture_gives_a_bounded_sample(tmp_path: Path) -> None:
    """496x4096 (the review's 496x16384 gave a 23 MiB sample): the sample is at most 512 wide and 1024 tall."""
    path = encode(tmp_path / "tall.mp4", "496x4096", 1)
    frames = list(KeyframeReader(str(path), IngestConfig(), threading.Event()).frames())
    assert frames
    h, w = frames[0].rgb.shape[:2]
    assert w <= 512 and h <= 1024 and (w, h) == scaled_size(496, 4096, 512)
    assert scaled_size(496, 16384, 512) == (32, 1024)
    assert scaled_size(1280, 720, 512) == (512, 288)  # ordinary pictures are scaled as before


def test_a_picture_over_the_pixel_cap_is_refused_before_decoding(tmp_path: Path) -> None:
    path = encode(tmp_path / "big.mp4", "640x360", 1)
    reader = KeyframeReader(str(path), IngestConfig(max_pixels=640 * 360 - 1), threading.Event())
    with pytest.raises(IngestError, match=r"picture 640x360 is over the cap of 230399 pixels \(ingest.max_pixels\)"):
        list(reader.frames())


def test_the_keyframe_watchdog_is_not_stretched_by_publisher_timestamps(tmp_path: Path) -> None:
    """Keyframes stamped 1e6 s apart used to stretch the no-keyframe watchdog from 10 s to 3e6 s."""
    path = encode(tmp_path / "jumps.mkv", "320x180", 3, "-g", "10", "-fps_mode", "passthrough",
                  vf="setpts='(N/10+floor(N/10)*1000000)/TB'")
    reader = KeyframeReader(str(path), IngestConfig(), threading.Event())
    frames = list(reader.frames())
    assert len(frames) >= 2 and frames[-1].media_time_s > 1e6  # the jumps are in the stream
    assert reader._keyframe_timeout_s() <= 2 * IngestConfig().read_timeout_s  # wall-clock gaps, not 1e6 s


def test_a_keyframe_on_every_frame_costs_at_most_two_samples_a_second(tmp_path: Path) -> None:
    path = encode(tmp_path / "allkeys.mp4", "320x180", 10, "-g", "1")
    sched = Scheduler(None, warmup_s=0.0)
    sched.add_stream("s", StreamPolicy(min_interval_s=0.5, jitter_s=0.2), CoveragePolicy())
    frames = list(KeyframeReader(str(path), IngestConfig(), threading.Event(), BoundSampler(sched, "s")).frames())
    assert 10 <= len(frames) <= 2 * 10 + 1  # 100 keyframes, one sample every 0.5 +- 0.2 s
    assert sched.stats()["streams"]["s"]["forward_packets"] == 0  # skipped keyframes are not even decoded
