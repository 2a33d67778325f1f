"""The sampling scheduler: per-stream policy, fair global budget, warm-up and boost, jitter, queues (fake clock)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import queue
import random
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.ingest.queues import QueueClosed, SampleQueue
from monitor.ingest.sampler import StreamPolicy, StreamSampler
from monitor.ingest.scheduler import Scheduler


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def keyframe_events(streams: dict[str, tuple[float, float]], seconds: float) -> list[tuple[float, str]]:
    """(media time, stream) of every keyframe: stream -> (gop_s, phase_s). Media time runs with the clock."""
    events = []
    for sid, (gop, phase) in streams.items():
        k = 0
        while phase + k * gop < seconds:
            events.append((phase + k * gop, sid))
            k += 1
    return sorted(events)


def run_keyframes(sched: Scheduler, clock: FakeClock, streams: dict[str, tuple[float, float]], seconds: float,
                  start: float = 0.0) -> dict[str, list[float]]:
    """Offer every keyframe in [start, seconds) at its time; returns the admitted media times per stream."""
    t0 = clock.t - start
    admitted: dict[str, list[float]] = {sid: [] for sid in streams}
    for t, sid in keyframe_events(streams, seconds):
        if t < start:
            continue
        clock.t = t0 + t
        if sched.offer(sid, t):
            admitted[sid].append(t)
    return admitted


def phases(n: int, gop: float = 2.0) -> dict[str, tuple[float, float]]:
    return {f"s{i:02d}": (gop, gop * i / n) for i in range(n)}


# -- per-stream policy ----------------------------------------------------------------------------------------
def test_every_keyframe_by_default() -> None:
    clock = FakeClock()
    sched = Scheduler(None, clock, random.Random(1))
    sched.add_stream("a")
    got = run_keyframes(sched, clock, {"a": (2.0, 0.0)}, 30)
    assert got["a"] == [float(t) for t in range(0, 30, 2)]


def test_min_interval_skips_close_keyframes_and_restarts_on_clock_jump() -> None:
    s = StreamSampler(StreamPolicy(min_interval_s=3.0), random.Random(1))
    got = [t for t in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] if s.admit(float(t))]
    assert got == [0, 3, 6, 9]
    assert s.skipped_interval == 6
    assert s.admit(1.0)  # media time jumped back (publisher restart): sample at once
    assert not s.admit(2.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_interval_s": -1}, {"jitter_s": -0.1}, {"priority": 0}, {"min_interval_s": math.nan},
     {"jitter_s": math.inf}, {"priority": math.nan}],
)
def test_policy_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        StreamPolicy(**kwargs)


@settings(max_examples=40, deadline=None)
@given(min_interval=st.floats(0.5, 5.0), jitter_frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_min_interval_jitter_stays_within_bounds(min_interval: float, jitter_frac: float, seed: int) -> None:
    jitter = min_interval * jitter_frac
    fps = 10.0  # every frame a keyframe: the worst case for predictability
    s = StreamSampler(StreamPolicy(min_interval_s=min_interval, jitter_s=jitter), random.Random(seed))
    times = [i / fps for i in range(600) if s.admit(i / fps)]
    gaps = np.diff(times)
    assert len(gaps) > 5
    assert gaps.min() >= max(0.0, min_interval - jitter) - 1e-9
    assert gaps.max() <= min_interval + jitter + 1 / fps + 1e-9
    if jitter >= 0.5:  # the moments really vary
        assert len({round(g, 3) for g in gaps}) > 1


# -- the global budget ------------------------------------------------------------------------------------------
def test_fair_share_under_overload() -> None:
    clock = FakeClock()
    sched = Scheduler(2.0, clock, random.Random(1), warmup_s=0)
    streams = phases(10)  # demand 10 x 0.5/s = 5/s, budget 2/s
    for sid in streams:
        sched.add_stream(sid)
    got = run_keyframes(sched, clock, streams, 300)
    counts = [len(v) for v in got.values()]
    assert sum(counts) == pytest.approx(2.0 * 300, rel=0.05)
    for c in counts:
        assert c == pytest.approx(2.0 * 300 / 10, rel=0.15)
    stats = sched.stats()
    assert stats["dropped_budget"] == stats["offered"] - stats["admitted"] > 0
    assert sum(s["dropped_budget"] for s in stats["streams"].values()) == stats["dropped_budget"]
    json.dumps(stats)


def test_priorities_give_proportional_shares_and_nobody_starves() -> None:
    clock = FakeClock()
    sched = Scheduler(1.0, clock, random.Random(1), warmup_s=0)
    prio = {"p1": 1.0, "p2": 2.0, "p3": 3.0, "p4": 4.0}  # shares 0.1..0.4/s, all below the 0.5/s demand
    streams = {sid: (2.0, i * 0.5) for i, sid in enumerate(prio)}
    for sid, p in prio.items():
        sched.add_stream(sid, StreamPolicy(priority=p))
    got = run_keyframes(sched, clock, streams, 400)
    for sid, p in prio.items():
        assert len(got[sid]) == pytest.approx(400 * 1.0 * p / 10, rel=0.15), sid

    clock2 = FakeClock()
    sched2 = Scheduler(1.0, clock2, random.Random(1), warmup_s=0)
    streams2 = phases(8, gop=1.0)
    for i, sid in enumerate(streams2):
        sched2.add_stream(sid, StreamPolicy(priority=0.05 if i == 0 else 10.0))
    got2 = run_keyframes(sched2, clock2, streams2, 400)
    low = len(got2["s00"])
    assert low == pytest.approx(400 * 0.05 / (0.05 + 70), abs=2) and low >= 1  # tiny, but not zero
    gaps = np.diff(got2["s00"]) if low > 1 else np.array([])
    assert gaps.size == 0 or gaps.max() < 2 * 70.05 / 0.05


def test_budget_is_work_conserving() -> None:
    """A light stream gets every keyframe it has; the heavy ones share what it leaves."""
    clock = FakeClock()
    sched = Scheduler(1.0, clock, random.Random(1), warmup_s=0)
    streams = {"light": (20.0, 0.3), **{f"h{i}": (1.0, i / 4) for i in range(4)}}
    for sid in streams:
        sched.add_stream(sid)
    got = run_keyframes(sched, clock, streams, 400)
    assert len(got["light"]) == 20
    heavy = [len(got[f"h{i}"]) for i in range(4)]
    assert sum(heavy) + 20 == pytest.approx(400, rel=0.05)
    assert max(heavy) - min(heavy) <= 0.15 * max(heavy)


def test_no_budget_admits_everything() -> None:
    clock = FakeClock()
    sched = Scheduler(None, clock, random.Random(1))
    streams = phases(20, gop=0.5)
    for sid in streams:
        sched.add_stream(sid)
    got = run_keyframes(sched, clock, streams, 20)
    assert all(len(v) == 40 for v in got.values())
    assert sched.stats()["dropped_budget"] == 0


def test_new_streams_are_sampled_densely_during_warmup() -> None:
    clock = FakeClock()
    sched = Scheduler(None, clock, random.Random(1), warmup_s=20)
    sched.add_stream("a", StreamPolicy(min_interval_s=10))
    got = run_keyframes(sched, clock, {"a": (2.0, 0.0)}, 60)["a"]
    assert got == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 28, 38, 48, 58]

    clock = FakeClock()
    sched = Scheduler(1.0, clock, random.Random(1), warmup_s=30, warmup_boost=4)
    old = phases(5)
    for sid in old:
        sched.add_stream(sid)
    run_keyframes(sched, clock, old, 100)  # past their own warm-up
    start = 100.0
    sched.add_stream("new")
    streams = {**old, "new": (2.0, 0.1)}
    during = run_keyframes(sched, clock, streams, 130, start=start)
    after = run_keyframes(sched, clock, streams, 330, start=130)
    old_during = np.mean([len(during[s]) for s in old])
    assert len(during["new"]) >= 3 * old_during  # weight 4 vs 1
    old_after = np.mean([len(after[s]) for s in old])
    assert len(after["new"]) == pytest.approx(old_after, rel=0.2)


def test_boost_gives_a_matching_stream_more_samples_for_a_while() -> None:
    clock = FakeClock()
    sched = Scheduler(1.0, clock, random.Random(1), warmup_s=0, boost_factor=4, rebalance_s=1)
    streams = phases(5)
    for sid in streams:
        sched.add_stream(sid, StreamPolicy(min_interval_s=6))
    before = run_keyframes(sched, clock, streams, 100)
    sched.boost("s02", 60)
    during = run_keyframes(sched, clock, streams, 160, start=100)
    after = run_keyframes(sched, clock, streams, 300, start=160)
    others = [s for s in streams if s != "s02"]
    assert len(during["s02"]) >= 2.5 * np.mean([len(during[s]) for s in others])
    # Boosted is also dense: its 6 s min interval does not apply while boosted.
    assert min(np.diff(during["s02"])) < 6
    assert len(before["s02"]) == pytest.approx(np.mean([len(before[s]) for s in others]), rel=0.25)
    assert len(after["s02"]) == pytest.approx(np.mean([len(after[s]) for s in others]), rel=0.25)
    assert sched.stats()["streams"]["s02"]["boosted_for_s"] == 0


def test_add_remove_and_errors() -> None:
    clock = FakeClock()
    sched = Scheduler(1.0, clock, random.Random(1))
    sched.add_stream("a")
    with pytest.raises(ValueError):
        sched.add_stream("a")
    with pytest.raises(KeyError):
        sched.offer("nope", 0.0)
    assert sched.offer("a", 0.0)
    sched.remove_stream("a")
    sched.remove_stream("a")
    assert sched.streams() == [] and sched.stats()["admitted"] == 1
    with pytest.raises(ValueError):
        Scheduler(0.0)


def test_scheduler_is_thread_safe() -> None:
    sched = Scheduler(50.0, rng=random.Random(1))
    for i in range(8):
        sched.add_stream(f"s{i}")

    def worker(sid: str) -> None:
        for k in range(2000):
            sched.offer(sid, k * 0.01)

    threads = [threading.Thread(target=worker, args=(f"s{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = sched.stats()
    assert stats["offered"] == 16000
    assert stats["admitted"] + stats["dropped_budget"] + stats["skipped_interval"] == 16000


# -- queues ---------------------------------------------------------------------------------------------------
def test_queue_put_never_blocks_and_drops_the_oldest() -> None:
    q: SampleQueue[int] = SampleQueue(maxsize=2)
    assert q.put(1) and q.put(2)
    assert not q.put(3)
    assert [q.get_nowait(), q.get_nowait()] == [2, 3]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    assert q.stats()["dropped_full"] == 1 and q.stats()["got"] == 2


def test_queue_drops_stale_items_on_get() -> None:
    clock = FakeClock()
    q: SampleQueue[str] = SampleQueue(maxsize=10, max_age_s=1.0, clock=clock)
    q.put("old")
    clock.t += 0.6
    q.put("mid")
    clock.t += 0.6
    q.put("new")
    item, age = q.get_aged(timeout=0)
    assert (item, age) == ("mid", pytest.approx(0.6))
    assert q.dropped_stale == 1
    clock.t += 5
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    assert q.dropped_stale == 2 and len(q) == 0


def test_queue_close_wakes_consumers() -> None:
    q: SampleQueue[int] = SampleQueue()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            q.get(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    q.close()
    t.join(5)
    assert not t.is_alive() and isinstance(errors[0], QueueClosed)


def test_queue_with_real_threads() -> None:
    q: SampleQueue[int] = SampleQueue(maxsize=2)
    done = threading.Event()
    got: list[int] = []

    def produce(base: int) -> None:
        for k in range(5000):
            q.put(base + k)

    def consume() -> None:
        while not (done.is_set() and len(q) == 0):
            with contextlib.suppress(queue.Empty):
                got.append(q.get(timeout=0.05))

    c = threading.Thread(target=consume)
    c.start()
    producers = [threading.Thread(target=produce, args=(i * 100000,)) for i in range(4)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    done.set()
    c.join(10)
    s = q.stats()
    assert s["put"] == 20000 and s["got"] + s["dropped_full"] == 20000 and s["got"] == len(got)


def test_overload_keeps_latency_bounded_while_drops_rise() -> None:
    """20 streams, a budget, a queue of 4 with max age 1 s, and a consumer that manages 2 samples/s."""
    clock = FakeClock()
    sched = Scheduler(6.0, clock, random.Random(1), warmup_s=0)
    q: SampleQueue[tuple[str, float]] = SampleQueue(maxsize=4, max_age_s=1.0, clock=clock)
    streams = phases(20, gop=1.0)  # demand 20/s, budget 6/s, consumer 2/s
    for sid in streams:
        sched.add_stream(sid)
    t0 = clock.t
    ages: list[float] = []
    drops_over_time: list[int] = []
    next_consume = 0.0
    for t, sid in keyframe_events(streams, 120):
        while next_consume <= t:  # the consumer: one sample every 0.5 s
            clock.t = t0 + next_consume
            try:
                _, age = q.get_aged(timeout=0)
                ages.append(age)
            except queue.Empty:
                pass
            next_consume += 0.5
        clock.t = t0 + t
        if sched.offer(sid, t):
            q.put((sid, t))
        if t % 20 == 0:
            qs = q.stats()
            drops_over_time.append(qs["dropped_full"] + qs["dropped_stale"] + sched.stats()["dropped_budget"])
    assert max(ages) <= 1.0
    assert len(ages) == pytest.approx(120 * 2, rel=0.05)  # the consumer never idles
    assert all(b > a for a, b in itertools.pairwise(drops_over_time[1:]))
    assert sched.stats()["dropped_budget"] > 0 and q.stats()["dropped_full"] > 0
