"""What the parts of `monitor eval` share: its targets and constants, statistics helpers, progress on stderr."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

SAMPLES_PER_HOUR = 1800  # one sample every 2 s
BANK_SIZE = 1_000_000
PRECISION_TARGET = 0.9999
# The targets at the default configuration (precision >= 99.99%): transform -> minimum recall.
RECALL_TARGETS: dict[str, float] = {
    "reencode": 0.99, "downscale": 0.99, "gamma": 0.99, "watermark": 0.99,
    "letterbox": 0.95, "pillarbox": 0.95, "mirror": 0.95,
    "crop10": 0.70,
}
REPORTED_ONLY = ("pip",)
KEYFRAME_LATENCY_TARGET_S = 0.5  # p95, over RTMP
APPEARANCE_LATENCY_SLACK_S = 0.5  # p95 <= one GOP + this
FALSE_ALERT_HOURS_TARGET = 10.0  # 0 false alerts in at least this many stream-hours (1M bank, estimated)
QUICK_TRANSFORMS = ("none", "reencode", "mirror", "letterbox", "crop10")
LEAD_IN_S = {"tcp": 4.0, "rtmp": 10.0, "hls": 10.0}  # no appearance before the monitor is watching


# -- small helpers ---------------------------------------------------------------------------------------------


def iso_time(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3), "max": round(float(a.max()), 3),
            "mean": round(float(a.mean()), 3)}


def wilson_low(k: int, n: int, z: float = 1.96) -> float | None:
    """Lower end of the 95% Wilson interval of a proportion k/n."""
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def binom_tail(n: int, t: int) -> float:
    """P(Binomial(n, 1/2) <= t): a random code within distance t of a given one."""
    return sum(math.comb(n, k) for k in range(t + 1)) / 2.0**n


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, label: str, total: float, out: TextIO | None = None, enabled: bool = True) -> None:
        self.label, self.total = label, max(total, 1e-9)
        self.out = out or sys.stderr
        self.enabled = enabled
        self.tty = self.out.isatty()
        self._last_decile = -1
        self._t0 = time.monotonic()

    def update(self, done: float, note: str = "") -> None:
        if not self.enabled:
            return
        frac = min(1.0, max(0.0, done / self.total))
        if self.tty:
            bar = "#" * int(frac * 30)
            self.out.write(f"\r{self.label:<10} [{bar:<30}] {100 * frac:5.1f}%  {note}\x1b[K")
            self.out.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.out.write(f"{self.label:<10} {100 * frac:5.1f}%  {note}\n")
                self.out.flush()

    def close(self, note: str = "") -> None:
        if not self.enabled:
            return
        self.update(self.total, note or f"done in {time.monotonic() - self._t0:.0f} s")
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def say(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[eval] {msg}", file=sys.stderr, flush=True)
