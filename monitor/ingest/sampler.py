"""Which keyframes of one stream may become samples: its settings (`StreamPolicy`) and state (`StreamSampler`).

Media time only, testable with a seeded `random.Random`:
  - every keyframe by default;
  - `min_interval_s`: skip keyframes closer than this to the last sample (a jump back in media time, e.g. a
    publisher restart, starts the interval over);
  - `jitter_s`: uniform random offset in [-jitter_s, +jitter_s] on the min interval, drawn afresh after each
    sample, so a publisher cannot predict the sampling moments;
  - `priority`: the stream's weight in the global budget (monitor/ingest/budget.py; default 1.0).

Frames between keyframes are chosen by the stream's coverage (monitor/ingest/coverage.py), not here; the
scheduler (monitor/ingest/scheduler.py) counts them in `admitted` and `extra_admitted`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypedDict

from monitor.ingest.coverage import require_finite


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """Sampling settings of one stream (immutable; the state lives in `StreamSampler`)."""

    min_interval_s: float = 0.0
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


class SamplerCounters(TypedDict):
    """A stream's sampling counters (JSON-ready)."""

    offered: int
    admitted: int
    skipped_interval: int
    extra_admitted: int
    gop_s: float | None
    last_sample_s: float | None


class StreamSampler:
    """The per-stream half of the policy, in media time. Not thread-safe: one stream, one caller (or a lock)."""

    def __init__(self, policy: StreamPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self.last_sample: float | None = None
        self.last_key: float | None = None
        self.gop_s: float | None = None  # the last gap between keyframes offered
        self._min_gap = self._draw_min_gap()
        self.offered = 0
        self.admitted = 0
        self.skipped_interval = 0  # keyframes closer than the (jittered) min interval to the last sample
        self.extra_admitted = 0  # samples between keyframes (counted by the scheduler)

    def _draw_min_gap(self) -> float:
        m, j = self.policy.min_interval_s, self.policy.jitter_s
        if m <= 0:
            return 0.0
        return max(0.0, m + self._rng.uniform(-j, j)) if j > 0 else m

    # -- the two-step offer: check (no state change but keyframe/GOP tracking), then commit if admitted --
    def check(self, media_time_s: float, dense_interval_s: float | None = None) -> bool:
        """Is this keyframe a candidate sample? False: closer than the min interval to the last sample."""
        self.offered += 1
        self._note_keyframe(media_time_s)
        last = self.last_sample
        if last is not None and media_time_s < last:
            self.last_sample = None  # the clock jumped back: start over
            last = None
        gap = self._min_gap if dense_interval_s is None else min(self._min_gap, dense_interval_s)
        if last is not None and media_time_s - last < gap:
            self.skipped_interval += 1
            return False
        return True

    def commit(self, media_time_s: float) -> None:
        self.admitted += 1
        self.last_sample = media_time_s
        self._min_gap = self._draw_min_gap()

    def admit(self, media_time_s: float) -> bool:
        """check + commit, for use without a budget."""
        if not self.check(media_time_s):
            return False
        self.commit(media_time_s)
        return True

    def _note_keyframe(self, t: float) -> None:
        last = self.last_key
        if last is not None and t > last:
            self.gop_s = t - last
        self.last_key = t

    def counters(self) -> SamplerCounters:
        return {
            "offered": self.offered,
            "admitted": self.admitted,
            "skipped_interval": self.skipped_interval,
            "extra_admitted": self.extra_admitted,
            "gop_s": self.gop_s,
            "last_sample_s": self.last_sample,
        }
