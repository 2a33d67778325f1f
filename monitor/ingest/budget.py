"""Samples per second shared by weighted max-min fairness: `SampleBudget` (wall clock, injected `clock`).

Each stream has a token bucket whose rate is its weight times a "water level" chosen so that the rates of the
streams that want more than their share, plus the measured demand (decayed average over `demand_tau_s`) of the
streams that want less, add up to the budget (water filling, recomputed every `rebalance_s` and on any change
of streams or weights). Under overload every stream keeps a share proportional to its weight, none starves,
what a light stream leaves is shared by the others, and refused samples are counted as drops: latency does not
grow. The budget holds on average; a burst is bounded by the bucket sizes (`burst_s` of each stream's rate, at
least 2 samples), and a light stream whose demand jumps may overshoot its old estimate until the decayed
average catches up (seconds, not minutes). When the budget exceeds the total demand nothing is refused.

The scheduler (monitor/ingest/scheduler.py) keeps two: samples, and packets decoded between keyframes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from monitor.ingest.coverage import require_finite

Clock = Callable[[], float]


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

