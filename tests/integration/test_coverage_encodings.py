"""The monitor's reader and sampler on every evasive encoding, recorded by ffmpeg/x264 into FLV files.

The same bytes a publisher would push through nginx-rtmp (`-c copy`), read by `KeyframeReader` with the
scheduler's adaptive sampling (what `monitor run` does per stream) and with keyframes only. The known picture
and the background here are not the ones the thresholds were set on (those were a picture of smooth blobs over
testsrc2): the project's generated pictures 1 and 2, over testsrc2 and over a zooming fractal.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from monitor.config.models import IngestConfig
from monitor.ingest.coverage import CoveragePolicy
from monitor.ingest.reader import KeyframeReader
from monitor.ingest.sampler import StreamPolicy
from monitor.ingest.scheduler import Scheduler
from monitor.runtime.supervisor import BoundSampler
from pipelines.fingerprint import pdq
from pipelines.hamming import hex_to_code
from test_streams import evasion as ev

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (scripts/test installs it)")

BLIND_TARGET_S = 2.5


@dataclass
class Run:
    found: list[tuple[float, str, int]]  # (stream time, reason, distance) of samples within MATCH_BITS
    blind_s: float | None
    forward_packets: int
    stats: dict[str, object]


def _read(path: Path, entry: np.ndarray, adaptive: bool, seed: int = 7) -> Run:
    # Seeded: the audits are random moments; what is asserted must not depend on where they fall.
    sched = Scheduler(None, warmup_s=0.0, rng=random.Random(seed))
    sched.add_stream("s", StreamPolicy(min_interval_s=0.5, jitter_s=0.2), CoveragePolicy() if adaptive else None)
    reader = KeyframeReader(str(path), IngestConfig(), threading.Event(), BoundSampler(sched, "s"))
    found = []
    for frame in reader.frames():
        code, _ = pdq(frame.rgb)
        d = int(np.unpackbits(code ^ entry).sum())
        if d <= ev.MATCH_BITS:
            found.append((round(frame.media_time_s, 2), frame.reason, d))
    st = sched.stats()["streams"]["s"]
    return Run(found, st.get("blind_interval_s"), st["forward_packets"], st)


@pytest.fixture(scope="module")
def fractal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bg") / "fractal.mp4"
    subprocess.run([*ev.FFMPEG, "-y", "-f", "lavfi", "-i", "mandelbrot=size=640x360:rate=30", "-t", "12",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory, known_pngs: list[Path],
               fractal: Path) -> dict[tuple[str, str], tuple[Path, np.ndarray]]:
    from monitor.ingest.hashfiles import hash_file

    out = {}
    folder = tmp_path_factory.mktemp("encodings")
    for bg_name, background, picture in (("testsrc2", None, known_pngs[1]), ("fractal", fractal, known_pngs[2])):
        layout = ev.Layout(background=background)
        entry = hex_to_code(next(hash_file(picture)).hex)
        sub = folder / bg_name
        sub.mkdir()
        for enc in ev.encodings(layout):
            out[(enc.name, bg_name)] = (ev.record(enc, sub, picture, layout), entry)
    return out


ENCODINGS = [e.name for e in ev.encodings()]
# A limit, reported in the README ("What a publisher can and cannot hide"): over content whose P-frames cost more
# than an intra-coded picture (the fractal here), B-frames showing the picture are smaller than the P-frames and
# no larger than before; nothing in the packets betrays them, and only a random audit that lands on a B-frame
# finds the picture (about 1 in 5 for 4 s on screen at the default audit rate).
KNOWN_MISSES = {("bframes_only", "fractal"): "picture on B-frames only, over costly content: found by audits only"}


@pytest.mark.slow
@pytest.mark.parametrize("background", ["testsrc2", "fractal"])
@pytest.mark.parametrize("name", ENCODINGS)
def test_adaptive_sampling_finds_the_picture_with_a_short_blind_interval(
        recordings: dict[tuple[str, str], tuple[Path, np.ndarray]], name: str, background: str) -> None:
    if (name, background) in KNOWN_MISSES:
        pytest.xfail(KNOWN_MISSES[(name, background)])
    path, entry = recordings[(name, background)]
    run = _read(path, entry, adaptive=True)
    assert run.found, f"{name} over {background}: the picture was never sampled; {run.stats}"
    assert run.blind_s is not None and run.blind_s <= BLIND_TARGET_S, (name, background, run.stats)


@pytest.mark.slow
@pytest.mark.parametrize("name", [e.name for e in ev.encodings() if e.old_sampler_blind])
def test_keyframe_only_sampling_misses_the_evasive_encodings(
        recordings: dict[tuple[str, str], tuple[Path, np.ndarray]], name: str) -> None:
    """What the adaptive sampler is for: keyframes alone never show the picture (the test above can fail)."""
    path, entry = recordings[(name, "testsrc2")]
    run = _read(path, entry, adaptive=False)
    assert not run.found, (name, run.found)
    assert run.forward_packets == 0


@pytest.mark.slow
def test_an_ordinary_stream_is_not_escalated_and_decodes_forward_only_for_changes_and_audits(
        recordings: dict[tuple[str, str], tuple[Path, np.ndarray]]) -> None:
    """The control stream (2 s GOP, the picture appearing and leaving once): no escalation, no interval samples,
    a handful of change samples (the cost ratio itself is measured by `monitor bench evasion`)."""
    for background in ("testsrc2", "fractal"):
        path, entry = recordings[("control", background)]
        for seed in range(3):
            run = _read(path, entry, adaptive=True, seed=seed)
            reasons = run.stats["samples_by_reason"]
            assert isinstance(reasons, dict)
            assert not run.stats["escalated"], (background, run.stats)
            assert set(reasons) <= {"key", "change", "audit"}, (background, reasons)
            assert reasons.get("change", 0) <= 4, (background, reasons)
