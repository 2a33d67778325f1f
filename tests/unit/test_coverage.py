"""The sampling policy between keyframes (monitor/ingest/coverage.py) and the packet signals it reads
(monitor/ingest/packets.py), on synthetic packet sequences: what a publisher who has read the code would try."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.ingest.coverage import CoveragePolicy, StreamClock, StreamCoverage
from monitor.ingest.packets import CLEAN_KEY, NOT_A_PICTURE, KeyInfo, h264_key_info

FPS = 30
DT = 1.0 / FPS
RECOVERY = KeyInfo(clean=False, recovery_point=True)


def feed(cov: StreamCoverage, seconds: float, *, gop: int = 60, key_size: int = 40000, p_size: int = 4000,
         sizes: dict[int, int] | None = None, start: float = 0.0) -> list[tuple[float, str]]:
    """Drive one stream like the reader does: every wanted target is served by the first frame at or after it."""
    samples: list[tuple[float, str]] = []
    target: float | None = None
    for n in range(round(seconds * FPS)):
        t = start + n * DT
        wall = 1000.0 + t
        size = (sizes or {}).get(n, key_size if n % gop == 0 else p_size)
        if n % gop == 0:
            if cov.key(t, size, CLEAN_KEY, wall):
                samples.append((t, cov.sampled(t, True, None, wall)))
            target = None
            continue
        target = cov.packet(t, size, wall)
        if target is not None and t >= target - 1e-9 and cov.forward(1):
            samples.append((t, cov.sampled(t, False, None, wall)))
            target = None
    return samples


def coverage(**kw: object) -> StreamCoverage:
    return StreamCoverage(CoveragePolicy(**kw), random.Random(3))  # type: ignore[arg-type]


def test_an_ordinary_stream_gets_its_keyframes_and_rare_audits() -> None:
    cov = coverage()
    samples = feed(cov, 120)
    reasons = [r for _, r in samples]
    assert reasons.count("key") == 60
    assert set(reasons) <= {"key", "audit"} and 2 <= reasons.count("audit") <= 20
    assert cov.blind_max <= 2.0 + 1e-6
    assert not cov.escalated(2000.0)


def test_a_large_frame_right_after_each_keyframe_is_sampled_and_escalates() -> None:
    """Forced keyframes showing something else: frame 1 of each GOP carries the whole picture change."""
    cov = coverage(audit_mean_s=None)
    big = {n: 40000 for n in range(1, 600, 60)}
    samples = feed(cov, 20, sizes=big)
    changes = [t for t, r in samples if r == "change"]
    assert len(changes) >= 8
    assert all(0 < (t % 2.0) < 0.6 for t in changes)  # sampled just after each keyframe, once per burst
    assert cov.counters.signals["change_after_key"] >= 3
    assert cov.counters.escalations >= 1  # three in a row within a minute


def test_a_burst_of_large_frames_is_one_change() -> None:
    """A fade: many moderately large frames. One sample when the burst settles, not one per frame."""
    cov = coverage(audit_mean_s=None)
    burst = {n: 20000 for n in range(70, 85)}
    samples = feed(cov, 4, sizes=burst)
    assert [r for _, r in samples].count("change") == 1
    assert cov.counters.changes == 1


def test_a_long_gop_gets_interval_samples_from_the_first_gop_on() -> None:
    for gop_s in (10, 30):
        cov = coverage(audit_mean_s=None)
        samples = feed(cov, 40, gop=gop_s * FPS)
        times = [t for t, _ in samples]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) <= 2.5, gaps
        assert cov.blind_max <= 2.5


def test_a_timestamp_jump_samples_the_frame_that_stays_on_screen() -> None:
    cov = coverage(audit_mean_s=None)
    target = None
    for n in range(40):
        t = n * DT + (5.0 if n >= 20 else 0.0)  # after frame 19 the clock jumps 5 s: frame 19 is shown for 5 s
        if n == 0:
            cov.key(t, 40000, CLEAN_KEY, 1000.0)
            cov.sampled(t, True, None, 1000.0)
            continue
        want = cov.packet(t, 4000, 1000.0 + n * DT)
        target = want if want is not None else target
        if n == 20:
            assert target is not None and abs(target - 19 * DT) < 1e-6
            assert cov.sampled(19 * DT, False, None, 1000.0 + n * DT) == "jump"
    assert cov.counters.signals["timestamp_jump"] == 1
    assert cov.blind_max < 1.0  # the sampled frame covered the jump


def test_audit_moments_are_unpredictable_and_average_out() -> None:
    """Two monitors (seeded from the OS in production, here two seeds) audit at different moments; the gaps
    follow the configured mean, so a publisher cannot schedule around them."""
    def audits(seed: int) -> list[float]:
        cov = StreamCoverage(CoveragePolicy(audit_mean_s=5.0), random.Random(seed))
        return [t for t, r in feed(cov, 600) if r == "audit"]

    a, b = audits(1), audits(2)
    assert a != b
    gaps = [y - x for x, y in itertools.pairwise(a)]
    assert 3.0 < statistics.mean(gaps) < 8.0


def test_intra_refresh_is_sampled_every_interval() -> None:
    cov = coverage(audit_mean_s=None)
    samples = []
    target = None
    for n in range(20 * FPS):
        t = n * DT
        if n % 60 == 0:
            assert not cov.key(t, 8000, RECOVERY, 1000.0 + t)  # never a sample on its own
            continue
        want = cov.packet(t, 8000, 1000.0 + t)
        target = want if want is not None else target
        if target is not None and t >= target:
            samples.append(cov.sampled(t, False, None, 1000.0 + t))
            target = None
    assert len(samples) >= 8
    assert cov.counters.signals["recovery_point"] == 1
    assert cov.blind_max <= 2.5


def test_heavy_b_frames_escalate() -> None:
    cov = coverage(audit_mean_s=None)
    for n in range(120):
        t = n * DT
        if n % 60 == 0:
            cov.key(t, 40000, CLEAN_KEY, 1000.0 + t)
            continue
        reordered = n % 4 != 0
        cov.packet(t, 9000 if reordered else 6000, 1000.0 + t, reordered)
    assert cov.counters.signals.get("heavy_bframes") and cov.escalated(1004.0)


def test_the_decode_budget_refuses_and_counts() -> None:
    cov = StreamCoverage(CoveragePolicy(audit_mean_s=None), random.Random(1), budget=lambda n: False)
    cov.key(0.0, 40000, CLEAN_KEY, 1000.0)
    cov.sampled(0.0, True, None, 1000.0)
    for n in range(1, 200):
        t = n * DT
        if cov.packet(t, 4000, 1000.0 + t) is not None:
            assert not cov.forward(n)
    assert cov.counters.refused_budget >= 1


def test_stream_clock_folds_backward_jumps_and_keeps_forward_ones() -> None:
    clock = StreamClock()
    times = [d + clock.offset(d) for d in (0.0, 0.033, 0.066, 0.0, 0.033, 10.0)]
    assert times == sorted(times)  # a loop back cannot reset intervals measured in stream time
    assert times[5] - times[4] > 9.0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="jitter_s"):
        CoveragePolicy(max_interval_s=1.0, jitter_s=1.0)
    with pytest.raises(ValueError, match="audit_mean_s"):
        CoveragePolicy(audit_mean_s=0.0)


# -- packets -------------------------------------------------------------------------------------------------
def avcc(*nals: bytes) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def test_key_packets_are_classified_from_their_nal_units() -> None:
    sei_recovery = bytes([0x06, 0x06, 0x01, 0xC4, 0x80])  # SEI, payload type 6 (recovery point), size 1
    idr = bytes([0x65, 0x88, 0x84])
    p_slice = bytes([0x41, 0x9A, 0x02])  # first_mb 0, slice_type 0 (P)
    i_slice = bytes([0x41, 0x88, 0x80])  # first_mb 0 (1), slice_type 7 (0001000): I
    assert h264_key_info(avcc(idr), 4) == CLEAN_KEY
    assert h264_key_info(avcc(sei_recovery, p_slice), 4).recovery_point
    assert h264_key_info(avcc(i_slice), 4) == CLEAN_KEY
    assert h264_key_info(avcc(p_slice), 4) == NOT_A_PICTURE
    assert h264_key_info(b"\x00\x00\x01\xb3\x14\x00", None) == NOT_A_PICTURE  # MPEG-2: not H.264
    assert h264_key_info(b"\x00\x00\x00\x01" + idr, None) == CLEAN_KEY  # Annex B


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from([None, 1, 2, 4]))
def test_hostile_key_packets_never_raise(data: bytes, length_size: int | None) -> None:
    info = h264_key_info(data, length_size)
    assert isinstance(info, KeyInfo)


def test_the_decode_budget_is_shared_fairly_under_load() -> None:
    """A stream that wants every packet decoded (intra refresh, escalated) cannot take the forward decodes the
    ordinary streams' audits need; what it is refused is counted."""
    from monitor.ingest.sampler import StreamPolicy
    from monitor.ingest.scheduler import Scheduler

    now = [0.0]
    sched = Scheduler(None, clock=lambda: now[0], warmup_s=0.0, forward_budget_per_s=100.0)
    for sid in ("greedy", "a", "b"):
        sched.add_stream(sid, StreamPolicy(), CoveragePolicy())
    granted = {"greedy": 0, "a": 0, "b": 0}
    for step in range(600):  # 60 s in steps of 0.1 s
        now[0] = step * 0.1
        if sched.forward("greedy", 30):  # wants 300 packets a second
            granted["greedy"] += 30
        if step % 50 == 0:  # an audit every 5 s: 30 packets
            for sid in ("a", "b"):
                if sched.forward(sid, 30):
                    granted[sid] += 30
    assert granted["a"] == granted["b"] == 12 * 30  # every audit of the light streams went through
    assert 0.5 * 100.0 * 60 <= granted["greedy"] <= 100.0 * 60 * 1.1  # held near the rest of the budget
    stats = sched.stats()["streams"]
    assert stats["greedy"]["forward_refused"] > 0 and stats["a"]["forward_refused"] == 0
