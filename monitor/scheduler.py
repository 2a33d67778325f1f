"""Which decoded keyframes become samples: every keyframe by default, or at most one per interval."""

from __future__ import annotations


class SamplingPolicy:
    def __init__(self, min_interval_s: float = 0.0) -> None:
        self.min_interval_s = min_interval_s
        self._last: float | None = None
        self.skipped = 0

    def admit(self, media_time_s: float) -> bool:
        last = self._last
        # A clock that jumps back (publisher restart, HLS discontinuity) starts the interval over.
        if last is not None and 0 <= media_time_s - last < self.min_interval_s:
            self.skipped += 1
            return False
        self._last = media_time_s
        return True
