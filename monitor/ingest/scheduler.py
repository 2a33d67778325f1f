"""Which decoded frames become samples, for many streams: `Scheduler`, thread-safe (one lock; every call is
O(streams) at worst), testable with a fake clock (`clock`) and a seeded `random.Random` (`rng`).

It puts together, per stream, the keyframe policy (monitor/ingest/sampler.py: min interval, jitter, priority)
and the stream's coverage between keyframes (monitor/ingest/coverage.py), and over all streams two budgets
shared by weighted max-min fairness (monitor/ingest/budget.py): samples per second, and packets decoded
between keyframes per second.

    sched = Scheduler(budget_per_s=20.0)                 # None: no global budget
    sched.add_stream("cam1", StreamPolicy(min_interval_s=1.0, jitter_s=0.3), CoveragePolicy())
    sched.key("cam1", t, size, info, wall)               # a key packet: take it as a sample?
    sched.packet("cam1", t, size, wall)                  # a non-key packet: a frame time to decode to, or None
    sched.forward("cam1", packets)                       # may this many packets be decoded forward?
    sched.sampled("cam1", t, keyframe, thumb, wall)      # a sample was decoded: why it was taken
    sched.boost("cam1", 30.0)                            # recent near-match: denser and heavier for 30 s
    sched.stats()                                        # JSON-ready counters, per stream and in total
    sched.remove_stream("cam1")

  The reader's side of these calls is monitor/ingest/reader.py (FrameSampler). New streams are sampled densely
  for their first `warmup_s` seconds (wall clock): their weight is multiplied by `warmup_boost` and their min
  interval is lowered to `dense_min_interval_s`. `boost()` does the same with `boost_factor` for the given
  seconds. Samples then go through a SampleQueue (monitor/ingest/queues.py) to the analyses.
"""

from __future__ import annotations

import functools
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np
import numpy.typing as npt

from monitor.ingest.budget import Clock, SampleBudget
from monitor.ingest.coverage import CoveragePolicy, StreamCoverage, require_finite
from monitor.ingest.packets import KeyInfo
from monitor.ingest.sampler import SamplerCounters, StreamPolicy, StreamSampler


class SamplingTotals(TypedDict):
    """Sampling counters summed over the streams (those removed included)."""

    admitted: int
    offered: int
    skipped_interval: int
    dropped_budget: int


class StreamStats(SamplerCounters):
    """One stream's figures (JSON-ready); the coverage's only when it samples between keyframes."""

    dropped_budget: int
    extra_deferred: int
    priority: float
    weight: float
    warming_up: bool
    boosted_for_s: float
    share_per_s: float | None
    demand_per_s: float | None
    forward_packets: int
    forward_refused: int
    blind_interval_s: NotRequired[float]
    blind_now_s: NotRequired[float]
    escalated: NotRequired[bool]
    escalations: NotRequired[int]
    evasion_score: NotRequired[float]
    samples_by_reason: NotRequired[dict[str, int]]
    signals: NotRequired[dict[str, int]]


class SchedulerStats(SamplingTotals):
    """`Scheduler.stats()`: the budget, the totals and every stream's figures (JSON-ready: no infinities)."""

    budget_per_s: float | None
    water_level_per_weight: float | None
    streams: dict[str, StreamStats]


@dataclass
class _Stream:
    sampler: StreamSampler
    added_at: float
    coverage: StreamCoverage | None = None  # None: keyframes only (sampling.mode: keyframes)
    boosted_until: float = -math.inf
    dropped_budget: int = 0
    extra_deferred: int = 0  # wanted frames between keyframes put off because the stream had no token
    forward_packets: int = 0  # packets decoded forward (between keyframes) for wanted frames
    forward_refused: int = 0  # forward decodes the decode budget refused


class Scheduler:
    """Per-stream policies plus a global budget shared fairly. Thread-safe. See the module docstring."""

    def __init__(self, budget_per_s: float | None = None, clock: Clock = time.monotonic,
                 rng: random.Random | None = None, *, warmup_s: float = 10.0, warmup_boost: float = 4.0,
                 boost_factor: float = 4.0, dense_min_interval_s: float = 0.0, burst_s: float = 2.0,
                 demand_tau_s: float = 10.0, rebalance_s: float = 1.0,
                 forward_budget_per_s: float | None = None) -> None:
        for name, v in (("warmup_s", warmup_s), ("warmup_boost", warmup_boost), ("boost_factor", boost_factor),
                        ("dense_min_interval_s", dense_min_interval_s)):
            require_finite(name, v)
            if v < 0:
                raise ValueError(f"{name} must be >= 0")
        if warmup_boost < 1 or boost_factor < 1:
            raise ValueError("warmup_boost and boost_factor must be >= 1")
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()  # seeded from os.urandom: unpredictable
        self.warmup_s = warmup_s
        self.warmup_boost = warmup_boost
        self.boost_factor = boost_factor
        self.dense_min_interval_s = dense_min_interval_s
        self.budget = SampleBudget(budget_per_s, clock=clock, burst_s=burst_s, demand_tau_s=demand_tau_s,
                                   rebalance_s=rebalance_s, rng=random.Random(self.rng.getrandbits(64)))
        # Packets decoded between keyframes, per second, shared by the same water filling: a stream that
        # needs forward decoding (intra refresh, long GOPs, escalation) cannot take what the others need.
        self.forward_budget = SampleBudget(forward_budget_per_s, clock=clock, burst_s=burst_s,
                                           demand_tau_s=demand_tau_s, rebalance_s=rebalance_s,
                                           rng=random.Random(self.rng.getrandbits(64)))
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._removed: SamplingTotals = {"admitted": 0, "dropped_budget": 0, "skipped_interval": 0, "offered": 0}

    # -- streams ----------------------------------------------------------------------------------------------
    def add_stream(self, stream_id: str, policy: StreamPolicy | None = None,
                   coverage: CoveragePolicy | None = None) -> None:
        """`coverage`: sample between keyframes by that policy (monitor/ingest/coverage.py); None: keyframes only."""
        with self._lock:
            if stream_id in self._streams:
                raise ValueError(f"stream {stream_id!r} is already scheduled")
            now = self.clock()
            # Each stream gets its own generator, seeded from the scheduler's: reproducible under a seeded rng.
            sampler = StreamSampler(policy or StreamPolicy(), random.Random(self.rng.getrandbits(64)))
            st = _Stream(sampler, now)
            if coverage is not None:
                st.coverage = StreamCoverage(coverage, random.Random(self.rng.getrandbits(64)),
                                             budget=functools.partial(self._forward_take, stream_id))
            self._streams[stream_id] = st
            self.budget.add(stream_id, self._weight(st, now))
            self.forward_budget.add(stream_id, self._weight(st, now))

    def remove_stream(self, stream_id: str) -> None:
        with self._lock:
            st = self._streams.pop(stream_id, None)
            if st is None:
                return
            c = st.sampler
            self._removed["admitted"] += c.admitted
            self._removed["offered"] += c.offered
            self._removed["skipped_interval"] += c.skipped_interval
            self._removed["dropped_budget"] += st.dropped_budget
            self.budget.remove(stream_id)
            self.forward_budget.remove(stream_id)

    def streams(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def _get(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise KeyError(f"stream {stream_id!r} is not scheduled (add_stream first)") from None

    def _warming(self, st: _Stream, now: float) -> bool:
        return now - st.added_at < self.warmup_s

    def _boosted(self, st: _Stream, now: float) -> bool:
        return now < st.boosted_until

    def _weight(self, st: _Stream, now: float) -> float:
        factor = 1.0
        if self._warming(st, now):
            factor = max(factor, self.warmup_boost)
        if self._boosted(st, now):
            factor = max(factor, self.boost_factor)
        return st.sampler.policy.priority * factor

    def _refresh_weights(self, now: float) -> None:
        for sid, st in self._streams.items():
            w = self._weight(st, now)
            self.budget.set_weight(sid, w)
            self.forward_budget.set_weight(sid, w)

    # -- the reader's calls for sampling between keyframes (monitor/ingest/reader.py FrameSampler) ----------------
    def start(self, stream_id: str, live: bool) -> None:
        with self._lock:
            cov = self._get(stream_id).coverage
            if cov is not None:
                cov.start(live)

    def key(self, stream_id: str, t: float, size: int, info: KeyInfo, wall: float) -> bool:
        """A key-flagged packet: take it? (clean ones only; the min interval and the sample budget apply)"""
        with self._lock:
            cov = self._get(stream_id).coverage
            if cov is not None and not cov.key(t, size, info, wall):
                return False
        if not info.clean:
            return False
        return self.offer(stream_id, t)

    def packet(self, stream_id: str, t: float, size: int, wall: float, reordered: bool = False) -> float | None:
        """A non-key packet: the stream time of a wanted frame, or None (keyframes only, nothing wanted, or no
        sample token yet: the want stays and is asked for again with the next packet)."""
        with self._lock:
            st = self._get(stream_id)
            if st.coverage is None:
                return None
            target = st.coverage.packet(t, size, wall, reordered)
            if target is None or not self.budget.limited:
                return target
            now = self.clock()
            self._refresh_weights(now)
            if self.budget.time_to_token(stream_id, now) > 0:
                st.extra_deferred += 1
                return None
            return target

    def forward(self, stream_id: str, packets: int) -> bool:
        with self._lock:
            cov = self._get(stream_id).coverage
            return True if cov is None else cov.forward(packets)

    def _forward_take(self, stream_id: str, packets: int) -> bool:
        """The decode budget (called by the stream's coverage, under the lock)."""
        st = self._streams[stream_id]
        now = self.clock()
        self.forward_budget.note_demand(stream_id, now, packets)
        if not self.forward_budget.try_take(stream_id, now, packets):
            st.forward_refused += 1
            return False
        st.forward_packets += packets
        return True

    def sampled(self, stream_id: str, t: float, keyframe: bool, thumb: npt.NDArray[np.float32] | None,
                wall: float) -> str:
        """A sample was decoded; returns why it was taken. Frames between keyframes count against the sample
        budget here (keyframes did in `key`)."""
        with self._lock:
            st = self._get(stream_id)
            if st.coverage is None:
                return "key"
            if not keyframe:
                now = self.clock()
                self.budget.note_demand(stream_id, now)
                self.budget.try_take(stream_id, now)
                st.sampler.admitted += 1
                st.sampler.extra_admitted += 1
                # Not the min interval's reference: that bounds keyframes (the cheapest samples), and a
                # keyframe right after a forward-decoded sample must still be taken.
            return st.coverage.sampled(t, keyframe, thumb, wall)

    # -- the reader's calls -------------------------------------------------------------------------------------
    def offer(self, stream_id: str, media_time_s: float) -> bool:
        """Take this keyframe as a sample? Call on every clean key packet (it also measures the GOP)."""
        with self._lock:
            now = self.clock()
            st = self._get(stream_id)
            self._refresh_weights(now)
            dense = self._warming(st, now) or self._boosted(st, now)
            if not st.sampler.check(media_time_s, self.dense_min_interval_s if dense else None):
                return False
            self.budget.note_demand(stream_id, now)
            if not self.budget.try_take(stream_id, now):
                st.dropped_budget += 1
                return False
            st.sampler.commit(media_time_s)
            return True

    def boost(self, stream_id: str, seconds: float) -> None:
        """A recent near-match: sample this stream densely and with `boost_factor` weight for `seconds`."""
        require_finite("seconds", seconds)
        with self._lock:
            st = self._get(stream_id)
            now = self.clock()
            st.boosted_until = max(st.boosted_until, now + max(0.0, seconds))
            self._refresh_weights(now)

    # -- reporting --------------------------------------------------------------------------------------------
    def stats(self) -> SchedulerStats:
        """Counters per stream and in total (JSON-ready: no infinities)."""
        with self._lock:
            now = self.clock()
            per: dict[str, StreamStats] = {}
            totals = SamplingTotals(**self._removed)
            for sid, st in self._streams.items():
                c = st.sampler.counters()
                share = self.budget.share(sid) if self.budget.limited else None
                demand = self.budget.demand(sid, now)
                stream: StreamStats = {
                    "offered": c["offered"],
                    "admitted": c["admitted"],
                    "skipped_interval": c["skipped_interval"],
                    "extra_admitted": c["extra_admitted"],
                    "gop_s": c["gop_s"],
                    "last_sample_s": c["last_sample_s"],
                    "dropped_budget": st.dropped_budget,
                    "extra_deferred": st.extra_deferred,
                    "priority": st.sampler.policy.priority,
                    "weight": self._weight(st, now),
                    "warming_up": self._warming(st, now),
                    "boosted_for_s": max(0.0, st.boosted_until - now) if self._boosted(st, now) else 0.0,
                    "share_per_s": share,
                    "demand_per_s": None if math.isinf(demand) else demand,
                    "forward_packets": st.forward_packets,
                    "forward_refused": st.forward_refused,
                }
                if st.coverage is not None:
                    _add_coverage_stats(stream, st.coverage, time.time())
                per[sid] = stream
                totals["admitted"] += c["admitted"]
                totals["offered"] += c["offered"]
                totals["skipped_interval"] += c["skipped_interval"]
                totals["dropped_budget"] += st.dropped_budget
            level = self.budget.level
            return {
                "budget_per_s": self.budget.rate,
                "water_level_per_weight": None if math.isinf(level) else level,
                **totals,
                "streams": per,
            }


def _add_coverage_stats(stream: StreamStats, cov: StreamCoverage, wall: float) -> None:
    c = cov.counters
    stream["blind_interval_s"] = round(cov.blind_max, 3)
    stream["blind_now_s"] = round(cov.blind_now(), 3)
    stream["escalated"] = cov.escalated(wall)
    stream["escalations"] = c.escalations
    stream["evasion_score"] = round(cov.score(wall), 3)
    stream["samples_by_reason"] = dict(c.samples)
    stream["signals"] = dict(c.signals)
