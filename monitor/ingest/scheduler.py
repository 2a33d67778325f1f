"""Which decoded frames become samples: a policy per stream, a sample budget shared fairly, bounded queues.

Three layers, each usable alone and testable with a fake clock (`clock`) and a seeded `random.Random` (`rng`):

`StreamPolicy` (frozen settings) and `StreamSampler` (its state for one stream), media time only:
  - every keyframe by default;
  - `min_interval_s`: skip keyframes closer than this to the last sample (a jump back in media time, e.g. a
    publisher restart, starts the interval over);
  - `max_interval_s`: when the stream's GOP (measured between the last two keyframes offered, so not during
    the first GOP) is longer than this, the sampler asks for extra, non-key samples every max_interval_s
    (+- jitter) after the keyframe: `wants_extra(t)`. Gaps stay within max_interval_s + jitter_s + one frame,
    or + a margin of min(0.5 s, max_interval_s / 4) before a keyframe (no extra is asked for when the next
    keyframe is expected within that margin of the target: it will serve);
  - `jitter_s`: uniform random offset in [-jitter_s, +jitter_s], drawn afresh after each sample, on the min
    interval and on every extra-sample time, so a publisher cannot predict the sampling moments;
  - `priority`: the stream's weight in the global budget (default 1.0).

`SampleBudget`, wall clock: samples per second shared by weighted max-min fairness. Each stream has a token
  bucket whose rate is its weight times a "water level" chosen so that the rates of the streams that want more
  than their share, plus the measured demand (decayed average over `demand_tau_s`) of the streams that want
  less, add up to the budget (water filling, recomputed every `rebalance_s` and on any change of streams or
  weights). Under overload every stream keeps a share proportional to its weight, none starves, what a light
  stream leaves is shared by the others, and refused samples are counted as drops: latency does not grow. The
  budget holds on average; a burst is bounded by the bucket sizes (`burst_s` of each stream's rate, at least 2
  samples), and a light stream whose demand jumps may overshoot its old estimate until the decayed average
  catches up (seconds, not minutes). When the budget exceeds the total demand nothing is refused.

`Scheduler`: the two together for many streams, thread-safe (one lock; every call is O(streams) at worst):

    sched = Scheduler(budget_per_s=20.0)                 # None: no global budget
    sched.add_stream("cam1", StreamPolicy(max_interval_s=2.0, jitter_s=0.3))
    sched.offer("cam1", media_time_s, is_keyframe=True)  # -> bool: take this frame as a sample?
    sched.wants_extra("cam1", media_time_s)              # -> float | None: decode forward to this media time
    sched.boost("cam1", 30.0)                            # recent near-match: denser and heavier for 30 s
    sched.stats()                                        # JSON-ready counters, per stream and in total
    sched.remove_stream("cam1")

  New streams are sampled densely for their first `warmup_s` seconds (wall clock): their weight is multiplied
  by `warmup_boost` and their min interval is lowered to `dense_min_interval_s`. `boost()` does the same with
  `boost_factor` for the given seconds.

How a reader uses it (the order matters; see `wants_extra`):
  1. On each key packet, before decoding it, with t = packet.pts * time_base:
     `take = offer(id, t, is_keyframe=True)` (this also records the keyframe, from which the GOP is measured),
     then `target = wants_extra(id, t)`.
  2. target is None: keyframe-only mode for this GOP (skip_frame NONKEY; decode, drain and flush the key packet
     only if `take`; a keyframe that is not taken need not be decoded at all).
     target is a time: decode this GOP forward: skip_frame DEFAULT, decode the key packet WITHOUT draining or
     flushing (the following P-frames need it as a reference) and every following packet; the first frame
     with time >= target is offered with `offer(id, t_frame, is_keyframe=False)`; then ask
     `wants_extra(id, t_frame)` again for the next target, and go back to keyframe-only mode when it is None.
  3. A frame with is_keyframe=False is only admitted when it answers a pending `wants_extra` target.
  `read_with_extras` in tests/unit/test_scheduler.py is a tested reference of this loop (forward-decoded frames are
  bit-identical to a full decode's).

`SampleQueue(maxsize, max_age_s)`: between reader threads and analysis workers. `put` never blocks (when
  full the oldest item is dropped and counted); `get` discards items older than `max_age_s` (counted as stale).
  A slow analysis therefore costs samples, never latency (Frigate's shape: size 2, non-blocking put).

`SamplingPolicy(min_interval_s).admit(media_time_s) -> bool` is kept for the existing supervisor: one stream,
  no budget.
"""

from __future__ import annotations

import functools
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from monitor.ingest.coverage import CoveragePolicy, StreamCoverage, require_finite
from monitor.ingest.packets import KeyInfo

Clock = Callable[[], float]
T = TypeVar("T")

# Extra samples are not asked for when the next keyframe is expected within this margin of the target:
# the keyframe will serve, and forward decoding for a few frames would be wasted CPU.
EXTRA_MARGIN_MAX_S = 0.5


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """Sampling settings of one stream (immutable; the state lives in `StreamSampler`)."""

    min_interval_s: float = 0.0
    max_interval_s: float | None = None
    jitter_s: float = 0.0
    priority: float = 1.0

    def __post_init__(self) -> None:
        require_finite("min_interval_s", self.min_interval_s)
        require_finite("jitter_s", self.jitter_s)
        require_finite("priority", self.priority)
        if self.min_interval_s < 0:
            raise ValueError("min_interval_s must be >= 0")
        if self.jitter_s < 0:
            raise ValueError("jitter_s must be >= 0")
        if self.priority <= 0:
            raise ValueError("priority must be > 0")
        if self.max_interval_s is not None:
            require_finite("max_interval_s", self.max_interval_s)
            if self.max_interval_s <= 0:
                raise ValueError("max_interval_s must be > 0")
            if self.jitter_s >= self.max_interval_s:
                raise ValueError("jitter_s must be smaller than max_interval_s")
            if self.min_interval_s > self.max_interval_s:
                raise ValueError("min_interval_s must not exceed max_interval_s")

    @property
    def extra_margin_s(self) -> float:
        return 0.0 if self.max_interval_s is None else min(EXTRA_MARGIN_MAX_S, self.max_interval_s / 4)


class StreamSampler:
    """The per-stream half of the policy, in media time. Not thread-safe: one stream, one caller (or a lock)."""

    def __init__(self, policy: StreamPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self.last_sample: float | None = None
        self.last_key: float | None = None
        self.gop_s: float | None = None  # the last gap between keyframes offered
        self._min_gap = self._draw_min_gap()
        self._extra: tuple[float, float] | None = None  # (asked at, target) of the pending extra sample
        self.offered = 0
        self.admitted = 0
        self.skipped_interval = 0  # keyframes closer than the (jittered) min interval to the last sample
        self.skipped_unrequested = 0  # non-key frames offered without a pending extra target
        self.extra_requested = 0
        self.extra_admitted = 0

    def _draw_min_gap(self) -> float:
        m, j = self.policy.min_interval_s, self.policy.jitter_s
        if m <= 0:
            return 0.0
        return max(0.0, m + self._rng.uniform(-j, j)) if j > 0 else m

    def _draw_extra_gap(self) -> float:
        assert self.policy.max_interval_s is not None
        j = self.policy.jitter_s
        return self.policy.max_interval_s + (self._rng.uniform(-j, j) if j > 0 else 0.0)

    # -- the two-step offer: check (no state change but keyframe/GOP tracking), then commit if admitted --
    def check(self, media_time_s: float, is_keyframe: bool, dense_interval_s: float | None = None) -> str | None:
        """None if the frame is a candidate sample, else the reason it is skipped ("interval"/"unrequested")."""
        self.offered += 1
        if is_keyframe:
            self._note_keyframe(media_time_s)
            last = self.last_sample
            if last is not None and media_time_s < last:
                self.last_sample = None  # the clock jumped back: start over
                last = None
            gap = self._min_gap if dense_interval_s is None else min(self._min_gap, dense_interval_s)
            if last is not None and media_time_s - last < gap:
                self.skipped_interval += 1
                return "interval"
            return None
        extra = self._extra
        if extra is None or media_time_s < extra[1] or (self.last_key is not None and media_time_s < self.last_key):
            self.skipped_unrequested += 1
            return "unrequested"
        return None

    def commit(self, media_time_s: float, is_keyframe: bool) -> None:
        self.admitted += 1
        if not is_keyframe:
            self.extra_admitted += 1
        self.last_sample = media_time_s
        self._min_gap = self._draw_min_gap()
        if not is_keyframe:
            self._extra = None  # one frame answers one target; the reader asks again

    def admit(self, media_time_s: float, is_keyframe: bool = True) -> bool:
        """check + commit, for use without a budget."""
        if self.check(media_time_s, is_keyframe) is not None:
            return False
        self.commit(media_time_s, is_keyframe)
        return True

    def _note_keyframe(self, t: float) -> None:
        last = self.last_key
        if last is not None and t > last:
            self.gop_s = t - last
        self.last_key = t
        self._extra = None  # a new GOP: targets from the last one are void

    @property
    def next_key_expected(self) -> float | None:
        if self.last_key is None or self.gop_s is None:
            return None
        return self.last_key + self.gop_s

    def wants_extra(self, media_time_s: float, not_before: float | None = None) -> float | None:
        """Media time of the next extra sample after the frame at `media_time_s`, or None.

        None when: no max interval; the GOP is not known yet (two keyframes are needed) or not longer than
        the max interval; or the next keyframe is expected before the target (within a small margin).
        Asking twice at the same media time returns the same target. `not_before` delays the target (the
        budget uses it so a stream without tokens does not decode forward for nothing).
        """
        p = self.policy
        if p.max_interval_s is None or self.gop_s is None or self.gop_s <= p.max_interval_s:
            return None
        if self.last_key is None or media_time_s < self.last_key:
            return None
        if self._extra is not None and self._extra[0] == media_time_s:
            return self._extra[1]
        target = media_time_s + self._draw_extra_gap()
        if not_before is not None:
            target = max(target, not_before)
        next_key = self.next_key_expected
        if next_key is not None and target >= next_key - p.extra_margin_s:
            self._extra = None
            return None
        self._extra = (media_time_s, target)
        self.extra_requested += 1
        return target

    def counters(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "admitted": self.admitted,
            "skipped_interval": self.skipped_interval,
            "skipped_unrequested": self.skipped_unrequested,
            "extra_requested": self.extra_requested,
            "extra_admitted": self.extra_admitted,
            "gop_s": self.gop_s,
            "last_sample_s": self.last_sample,
        }


class SamplingPolicy:
    """One stream, no budget: the original `SamplingPolicy(min_interval_s).admit(media_time_s)`."""

    def __init__(self, min_interval_s: float = 0.0, *, max_interval_s: float | None = None, jitter_s: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self.sampler = StreamSampler(StreamPolicy(min_interval_s, max_interval_s, jitter_s), rng)

    @property
    def min_interval_s(self) -> float:
        return self.sampler.policy.min_interval_s

    @property
    def skipped(self) -> int:
        return self.sampler.skipped_interval + self.sampler.skipped_unrequested

    def admit(self, media_time_s: float, is_keyframe: bool = True) -> bool:
        return self.sampler.admit(media_time_s, is_keyframe)

    def wants_extra(self, media_time_s: float) -> float | None:
        return self.sampler.wants_extra(media_time_s)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Bucket:
    weight: float
    added_at: float
    tokens: float = 1.0
    rate: float = math.inf
    last: float = 0.0
    demand_count: float = 0.0  # exponentially decayed count of candidate samples
    demand_at: float = 0.0

    def capacity(self, burst_s: float) -> float:
        return math.inf if math.isinf(self.rate) else max(2.0, self.rate * burst_s)

    def refill(self, now: float, burst_s: float) -> None:
        if not math.isinf(self.rate) and now > self.last:
            self.tokens = min(self.capacity(burst_s), self.tokens + (now - self.last) * self.rate)
        self.last = max(self.last, now)


class SampleBudget:
    """Samples per second shared by weighted max-min fairness (water filling over measured demand).

    Not thread-safe by itself; `Scheduler` holds the lock. `rate_per_s=None` means no budget.
    """

    def __init__(self, rate_per_s: float | None, *, clock: Clock = time.monotonic, burst_s: float = 2.0,
                 demand_tau_s: float = 10.0, rebalance_s: float = 1.0, rng: random.Random | None = None) -> None:
        if rate_per_s is not None:
            require_finite("budget_per_s", rate_per_s)
            if rate_per_s <= 0:
                raise ValueError("budget_per_s must be > 0 (or None for no budget)")
        self.rate = rate_per_s
        self.clock = clock
        self.burst_s = burst_s
        self.tau = demand_tau_s
        self.rebalance_s = rebalance_s
        self.rng = rng if rng is not None else random.Random()
        self._b: dict[str, _Bucket] = {}
        self._rebalanced_at = -math.inf
        self._dirty = True
        self.level: float = math.inf  # the water level: rate per unit of weight for streams held to their share

    @property
    def limited(self) -> bool:
        return self.rate is not None

    def add(self, key: str, weight: float) -> None:
        now = self.clock()
        # One token for the first sample, plus a random fraction: streams added together (a server restart)
        # must not take their samples in lockstep, or the budget arrives as bursts.
        self._b[key] = _Bucket(weight=weight, added_at=now, last=now, demand_at=now, tokens=1.0 + self.rng.random())
        self._dirty = True

    def remove(self, key: str) -> None:
        if self._b.pop(key, None) is not None:
            self._dirty = True

    def set_weight(self, key: str, weight: float) -> None:
        b = self._b[key]
        if b.weight != weight:
            b.weight = weight
            self._dirty = True

    def demand(self, key: str, now: float) -> float:
        """Estimated candidate samples per second (inf until there is something to measure)."""
        b = self._b[key]
        age = now - b.added_at
        if age <= 0 or b.demand_count <= 0:
            return math.inf
        decayed = b.demand_count * math.exp(-(now - b.demand_at) / self.tau)
        return decayed / (self.tau * (1.0 - math.exp(-age / self.tau)))

    def note_demand(self, key: str, now: float, units: float = 1.0) -> None:
        b = self._b[key]
        b.demand_count = b.demand_count * math.exp(-(now - b.demand_at) / self.tau) + units
        b.demand_at = now

    def rebalance(self, now: float) -> None:
        """Water filling: the level L such that sum(min(demand_i, L * w_i)) == budget."""
        self._rebalanced_at = now
        self._dirty = False
        for b in self._b.values():
            b.refill(now, self.burst_s)
        if self.rate is None or not self._b:
            self.level = math.inf
        else:
            items = sorted(((self.demand(k, now), b.weight) for k, b in self._b.items()),
                           key=lambda dw: dw[0] / dw[1])
            total_weight = sum(w for _, w in items)
            remaining, weight_left = self.rate, total_weight
            level = math.inf
            for d, w in items:
                if weight_left > 1e-12 and d > remaining / weight_left * w:  # wants more than the level gives
                    level = remaining / weight_left
                    break
                remaining -= d
                weight_left -= w
            if math.isinf(level):
                # Every stream wants less than its share: each may use its demand plus a weighted part of the
                # rest, so a stream whose demand grows is not held back until the estimate catches up.
                level = max(d / w for d, w in items) + max(0.0, remaining) / total_weight
            self.level = level
        for b in self._b.values():
            b.rate = self.level * b.weight
            b.tokens = min(b.capacity(self.burst_s), b.tokens)

    def _maybe_rebalance(self, now: float) -> None:
        if self._dirty or now - self._rebalanced_at >= self.rebalance_s:
            self.rebalance(now)

    def try_take(self, key: str, now: float, units: float = 1.0) -> bool:
        """Take `units` tokens. A stream holding at least one token may take more than it holds (its bucket goes
        into debt, repaid at its rate before it can take again): a forward decode of 60 packets is one
        decision, and on average the budget still holds."""
        if self.rate is None:
            return True
        self._maybe_rebalance(now)
        b = self._b[key]
        b.refill(now, self.burst_s)
        if b.tokens < 1.0:
            return False  # over its fair share
        b.tokens -= units
        return True

    def time_to_token(self, key: str, now: float) -> float:
        """Seconds until the stream's own bucket holds a token (0 now, inf never)."""
        if self.rate is None:
            return 0.0
        self._maybe_rebalance(now)
        b = self._b[key]
        b.refill(now, self.burst_s)
        if b.tokens >= 1.0 or math.isinf(b.rate):
            return 0.0
        return math.inf if b.rate <= 0 else (1.0 - b.tokens) / b.rate

    def share(self, key: str) -> float | None:
        r = self._b[key].rate
        return None if math.isinf(r) else r


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Stream:
    sampler: StreamSampler
    added_at: float
    coverage: StreamCoverage | None = None  # None: keyframes only (sampling.mode: keyframes)
    boosted_until: float = -math.inf
    dropped_budget: int = 0
    extra_deferred: int = 0  # extra targets pushed later because the stream had no token
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
        self._removed: dict[str, int] = {"admitted": 0, "dropped_budget": 0, "skipped_interval": 0,
                                         "skipped_unrequested": 0, "offered": 0}

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
            self._removed["skipped_unrequested"] += c.skipped_unrequested
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
        return self.offer(stream_id, t, is_keyframe=True)

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
    def offer(self, stream_id: str, media_time_s: float, is_keyframe: bool = True) -> bool:
        """Take this frame as a sample? Keyframes: call on every key packet (it also measures the GOP)."""
        with self._lock:
            now = self.clock()
            st = self._get(stream_id)
            self._refresh_weights(now)
            dense = self._warming(st, now) or self._boosted(st, now)
            if st.sampler.check(media_time_s, is_keyframe, self.dense_min_interval_s if dense else None):
                return False
            self.budget.note_demand(stream_id, now)
            if not self.budget.try_take(stream_id, now):
                st.dropped_budget += 1
                return False
            st.sampler.commit(media_time_s, is_keyframe)
            return True

    def wants_extra(self, stream_id: str, media_time_s: float) -> float | None:
        """The media time the reader should decode forward to for an extra (non-key) sample, or None.

        Call right after `offer` of a keyframe (with its time) and after each extra frame offered (with that
        frame's time). Under a budget, a stream whose bucket is empty gets a later target (or None), so it does
        not decode frames that would be refused.
        """
        with self._lock:
            now = self.clock()
            st = self._get(stream_id)
            not_before = None
            if self.budget.limited:
                self._refresh_weights(now)
                wait = self.budget.time_to_token(stream_id, now)
                if wait > 0:
                    # Media time runs at wall-clock speed on a live stream.
                    not_before = media_time_s + wait if math.isfinite(wait) else math.inf
                    st.extra_deferred += 1
            return st.sampler.wants_extra(media_time_s, not_before)

    def boost(self, stream_id: str, seconds: float) -> None:
        """A recent near-match: sample this stream densely and with `boost_factor` weight for `seconds`."""
        require_finite("seconds", seconds)
        with self._lock:
            st = self._get(stream_id)
            now = self.clock()
            st.boosted_until = max(st.boosted_until, now + max(0.0, seconds))
            self._refresh_weights(now)

    # -- reporting --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters per stream and in total (JSON-ready: no infinities)."""
        with self._lock:
            now = self.clock()
            per: dict[str, Any] = {}
            totals = dict(self._removed)
            for sid, st in self._streams.items():
                c = st.sampler.counters()
                share = self.budget.share(sid) if self.budget.limited else None
                demand = self.budget.demand(sid, now)
                per[sid] = {
                    **c,
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
                    **(_coverage_stats(st.coverage, time.time()) if st.coverage is not None else {}),
                }
                for k in ("admitted", "offered", "skipped_interval", "skipped_unrequested"):
                    totals[k] += c[k]
                totals["dropped_budget"] += st.dropped_budget
            level = self.budget.level
            return {
                "budget_per_s": self.budget.rate,
                "water_level_per_weight": None if math.isinf(level) else level,
                **totals,
                "streams": per,
            }


def _coverage_stats(cov: StreamCoverage, wall: float) -> dict[str, Any]:
    c = cov.counters
    return {
        "blind_interval_s": round(cov.blind_max, 3),
        "blind_now_s": round(cov.blind_now(), 3),
        "escalated": cov.escalated(wall),
        "escalations": c.escalations,
        "evasion_score": round(cov.score(wall), 3),
        "samples_by_reason": dict(c.samples),
        "signals": dict(c.signals),
    }


# ---------------------------------------------------------------------------------------------------------------
class QueueClosed(Exception):
    """get() on a closed, empty SampleQueue."""


class SampleQueue(Generic[T]):
    """Bounded FIFO between producers (stream readers) and consumers (analysis workers). Thread-safe.

    `put` never blocks: when full, the oldest item is dropped (`dropped_full`). `get` discards items older than
    `max_age_s` by `clock` (`dropped_stale`), so a consumer never works on stale samples and latency stays
    bounded by max_age_s while the drop counters show the overload. Waiting in `get` uses real time.
    """

    def __init__(self, maxsize: int = 2, max_age_s: float | None = None, clock: Clock = time.monotonic) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError("max_age_s must be > 0 (or None)")
        self.maxsize = maxsize
        self.max_age_s = max_age_s
        self.clock = clock
        self.put_count = 0
        self.got = 0
        self.dropped_full = 0
        self.dropped_stale = 0
        self._items: deque[tuple[float, T]] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> bool:
        """Never blocks. Returns False if the oldest item had to be dropped to make room."""
        with self._cond:
            if self._closed:
                raise QueueClosed("put on a closed queue")
            dropped = False
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped_full += 1
                dropped = True
            self._items.append((self.clock(), item))
            self.put_count += 1
            self._cond.notify()
            return not dropped

    def _pop_fresh(self) -> tuple[T, float] | None:
        now = self.clock()
        while self._items:
            put_at, item = self._items.popleft()
            age = now - put_at
            if self.max_age_s is not None and age > self.max_age_s:
                self.dropped_stale += 1
                continue
            self.got += 1
            return item, age
        return None

    def get_aged(self, timeout: float | None = None) -> tuple[T, float]:
        """(item, seconds it waited in the queue). Raises queue.Empty after `timeout`, QueueClosed if closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                got = self._pop_fresh()
                if got is not None:
                    return got
                if self._closed:
                    raise QueueClosed("queue closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                self._cond.wait(remaining)

    def get(self, timeout: float | None = None) -> T:
        return self.get_aged(timeout)[0]

    def get_nowait(self) -> T:
        with self._cond:
            got = self._pop_fresh()
            if got is None:
                raise QueueClosed("queue closed") if self._closed else queue.Empty
            return got[0]

    def close(self) -> None:
        """Wake every waiting consumer; items still queued can be taken, then get raises QueueClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "maxsize": self.maxsize,
                "max_age_s": self.max_age_s,
                "depth": len(self._items),
                "put": self.put_count,
                "got": self.got,
                "dropped_full": self.dropped_full,
                "dropped_stale": self.dropped_stale,
            }


__all__ = [
    "QueueClosed",
    "SampleBudget",
    "SampleQueue",
    "SamplingPolicy",
    "Scheduler",
    "StreamPolicy",
    "StreamSampler",
]
