"""Which samples of each stream a classifier takes (pure: time comes from an injected clock).

Every `every_k`-th sample of a stream; every `dense_every`-th for the first `new_stream_s` of a stream and for a
while after a near match (`boost`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    every_k: int = 4
    dense_every: int = 1
    new_stream_s: float = 10.0
    near_match_s: float = 30.0
    near_fraction: float = 0.5


@dataclass(slots=True)
class _StreamBudget:
    first_at: float
    dense_until: float
    since: int  # samples offered since the last one taken


class SampleBudget:
    """Which samples of each stream the classifier takes."""

    def __init__(self, settings: BudgetSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._streams: dict[str, _StreamBudget] = {}
        self._lock = threading.Lock()

    def interval(self, stream_id: str) -> int:
        """Every how many samples this stream is classified now."""
        now = self.clock()
        with self._lock:
            st = self._streams.get(stream_id)
        if st is None or now - st.first_at < self.settings.new_stream_s or now < st.dense_until:
            return self.settings.dense_every
        return self.settings.every_k

    def want(self, stream_id: str) -> bool:
        now = self.clock()
        k = self.interval(stream_id)
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                self._streams[stream_id] = _StreamBudget(now, now, 0)
                return True  # a new stream's first sample
            st.since += 1
            if st.since >= k:
                st.since = 0
                return True
            return False

    def boost(self, stream_id: str, seconds: float) -> None:
        now = self.clock()
        with self._lock:
            st = self._streams.setdefault(stream_id, _StreamBudget(now, now, 0))
            st.dense_until = max(st.dense_until, now + seconds)

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)
