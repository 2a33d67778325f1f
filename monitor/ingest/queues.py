"""`SampleQueue(maxsize, max_age_s)`: the bounded hand-off between reader threads and analysis workers.

`put` never blocks (when full the oldest item is dropped and counted); `get` discards items older than
`max_age_s` (counted as stale). A slow analysis therefore costs samples, never latency (Frigate's shape: size
2, non-blocking put).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypedDict, TypeVar

T = TypeVar("T")


class QueueStats(TypedDict):
    """A queue's figures (JSON-ready)."""

    maxsize: int
    max_age_s: float | None
    depth: int
    put: int
    got: int
    dropped_full: int
    dropped_stale: int


class QueueClosed(Exception):
    """get() on a closed, empty SampleQueue."""


class SampleQueue(Generic[T]):
    """Bounded FIFO between producers (stream readers) and consumers (analysis workers). Thread-safe.

    `put` never blocks: when full, the oldest item is dropped (`dropped_full`). `get` discards items older than
    `max_age_s` by `clock` (`dropped_stale`), so a consumer never works on stale samples and latency stays
    bounded by max_age_s while the drop counters show the overload. Waiting in `get` uses real time.
    """

    def __init__(self, maxsize: int = 2, max_age_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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

    def stats(self) -> QueueStats:
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
