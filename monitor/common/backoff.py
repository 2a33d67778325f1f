"""The one reconnect backoff: exponential from an initial delay, doubling, capped, with jitter down to half.

Used by every loop that reconnects to something: the stream readers (monitor/runtime/supervisor.py) and the
MQTT connection loop (monitor/delivery/connection.py: the node's publisher, the console's printer and TUI).
The jitter spreads reconnects so a restarted server is not hit by every client at once; a working connection
resets the count (`Backoff.reset`).
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """The wait before reconnect `attempt` (1 = the first retry): `initial * 2**(attempt-1)`, capped at
    `maximum`, times a uniform jitter in [0.5, 1.0]. Attempts below 1 count as 1."""
    base = min(maximum, initial * (2 ** max(0, attempt - 1)))
    return float(base * rng.uniform(0.5, 1.0))


class Backoff:
    """The retry count of one reconnect loop: `next()` after each failure gives the wait before the next try,
    `reset()` after a working connection starts again from `initial`."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum <= 0:
            raise ValueError(f"backoff delays must be > 0 (initial {initial}, maximum {maximum})")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0  # failures since the last working connection
        self._rng = rng if rng is not None else random.Random()

    def next(self) -> float:
        """Count one more failure; the jittered wait before the next try."""
        self.attempt += 1
        return backoff_delay(self.attempt, self.initial, self.maximum, self._rng)

    def reset(self) -> None:
        """A connection worked: the next failure waits about `initial` again."""
        self.attempt = 0
