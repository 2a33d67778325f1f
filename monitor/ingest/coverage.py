"""Sampling that covers what a viewer sees, not what the encoder marks as a keyframe.

A keyframe-only sampler lets the publisher choose what the monitor sees: keyframes showing a harmless picture
and the frames after them the real one, periodic intra refresh (no keyframe decodes on its own), long GOPs with
the picture between two keyframes. `StreamCoverage` decides, per stream, which moments besides keyframes become
samples; the reader (monitor/ingest/reader.py) keeps the packets since the last keyframe and decodes forward to a
wanted moment only when asked, so an ordinary stream costs little more than keyframes.

Reasons for a sample between keyframes (each is a `reason` in the counters):
  - `interval`: no representative sample for `max_interval_s` (+- jitter) of stream time (long GOPs, intra
    refresh, keyframes refused by the budget);
  - `change`: a non-key packet much larger than the stream's usual ones (`change_ratio` times the baseline):
    the encoder paid for a new picture; it is sampled `settle_s` later, when the encoder has refined it;
  - `jump`: a timestamp step over `jump_s`: the frame before it stays on screen for the whole step;
  - `audit`: random moments, on average every `audit_mean_s`, drawn from a generator seeded from the OS
    (nothing a publisher can read or compute predicts them);
  - `wall`: on a live stream, wall-clock time since the last sample over `wall_max_interval_s` (a publisher whose
    timestamps run slow would otherwise stretch every interval);
  - `escalated`: a stream that keeps looking evasive is sampled every `escalated_interval_s` for `escalation_s`.

Evasion signals raise a score that decays with `score_tau_s`; at `escalate_score` the stream is escalated:
  - `change_after_key` (1.0): a picture change within `after_key_s` of a keyframe: the keyframe showed something
    else for a moment (natural cuts get a keyframe of their own from the encoder's scene-cut detection);
  - `hidden_change` (2.0): a sample between keyframes looks unlike the keyframe of its GOP, though no packet
    size said so (rate control flattened to hide changes);
  - `heavy_bframes` (3.0: at once): B-frames as large as the P-frames of their GOP, on average (B-frames predict
    from both sides and cost a fraction of a P-frame, unless they show what the P-frames do not);
  - `flat_keyframes` (1.0 per GOP): keyframes no larger than twice the usual non-key packet (forced flat rate);
  - `timestamp_jump` (1.0), `clock_drift` (1.0): timestamps that jump, or run at another pace than the wall
    clock of a live stream;
  - `recovery_point` and `long_gop` are reported, not scored (intra refresh and long GOPs are legitimate
    low-latency or archival settings; they are covered by `interval` samples).

The blind interval is the longest stretch of stream time between two consecutive samples (a sample taken for
a timestamp jump covers the jump: its frame stayed on screen); `blind_now` is the stretch since the last one.
It says nothing of a picture change between two samples that no packet betrays: such a change is found only
by the audits, and once found (`hidden_change`) the stream is escalated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from monitor.ingest.packets import KeyInfo, PacketSizes

SIGNAL_WEIGHTS = {
    "change_after_key": 1.0,
    "hidden_change": 2.0,
    "flat_keyframes": 1.0,
    "timestamp_jump": 1.0,
    "clock_drift": 1.0,
    "heavy_bframes": 3.0,
    "recovery_point": 0.0,
    "long_gop": 0.0,
}
THUMB_DIFF_CHANGED = 40.0  # mean absolute difference (0-255) of two 16x9 grey thumbnails: another picture
LONG_GOP_S = 5.0
KEY_LATE_S = 0.25  # a keyframe this late is not waited for any longer
HEAVY_B_MIN = 9  # B-frames in a GOP (and a third as many P-frames) before their sizes are compared
DRIFT_WINDOW_S = 10.0  # wall seconds over which a live stream's timestamp pace is compared to the wall clock


def require_finite(name: str, v: float) -> None:
    """Policies refuse NaN and infinities with the setting's name (shared by monitor/ingest/scheduler.py)."""
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")


@dataclass(frozen=True, slots=True)
class CoveragePolicy:
    max_interval_s: float = 2.0
    jitter_s: float = 0.2
    audit_mean_s: float | None = 15.0
    change_ratio: float = 3.0
    change_min_key_fraction: float = 0.05  # a change packet is also at least this part of a usual keyframe
    settle_s: float = 0.1
    settle_max_s: float = 0.5
    after_key_s: float = 0.2
    jump_s: float = 0.5
    wall_max_interval_s: float = 4.0
    escalate_score: float = 3.0
    score_tau_s: float = 60.0
    escalation_s: float = 120.0
    escalated_interval_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_interval_s", "jitter_s", "change_ratio", "settle_s", "settle_max_s",
                     "after_key_s", "jump_s", "wall_max_interval_s", "escalate_score", "score_tau_s",
                     "escalation_s", "escalated_interval_s"):
            v = getattr(self, name)
            require_finite(name, v)
            if v < 0 or (v == 0 and name in ("max_interval_s", "change_ratio", "score_tau_s",
                                               "escalated_interval_s", "wall_max_interval_s")):
                raise ValueError(f"{name} must be > 0" if v == 0 else f"{name} must be >= 0")
        if self.jitter_s >= self.max_interval_s:
            raise ValueError("jitter_s must be smaller than max_interval_s")
        if self.audit_mean_s is not None and not (self.audit_mean_s > 0 and math.isfinite(self.audit_mean_s)):
            raise ValueError("audit_mean_s must be > 0 (or None: no audits)")


def thumbnail(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """16x9 grey means of a frame (block averages; cheap enough for every sample)."""
    small = rgb[::4, ::4]  # every 4th pixel: a 512x288 sample costs ~0.1 ms
    h, w = small.shape[:2]
    grey = small.mean(axis=2, dtype=np.float32) if small.ndim == 3 else small.astype(np.float32)
    ys = np.linspace(0, h, 10).astype(int)
    xs = np.linspace(0, w, 17).astype(int)
    sums = np.add.reduceat(np.add.reduceat(grey, ys[:-1], axis=0), xs[:-1], axis=1)
    counts = np.outer(np.diff(ys), np.diff(xs)).astype(np.float32)
    out: npt.NDArray[np.float32] = (sums / np.maximum(counts, 1.0)).astype(np.float32)
    return out


@dataclass
class _Want:
    target: float
    reason: str
    first: float  # when the want began (a change's target moves later, up to settle_max_s after this)
    cover_until: float | None = None  # a jump: the sampled frame stays on screen until here


@dataclass
class CoverageCounters:
    samples: dict[str, int] = field(default_factory=dict)  # by reason (key, interval, change, ...)
    signals: dict[str, int] = field(default_factory=dict)
    wanted: int = 0
    changes: int = 0  # picture changes seen in packet sizes
    refused_budget: int = 0  # forward decodes refused by the decode budget
    escalations: int = 0


class StreamCoverage:
    """Per-stream state, in stream time (seconds, monotonic: see `StreamClock`). Not thread-safe."""

    def __init__(self, policy: CoveragePolicy, rng: random.Random | None = None,
                 budget: Callable[[int], bool] | None = None) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._budget = budget  # forward decode of n packets allowed?
        self.sizes = PacketSizes()
        self.counters = CoverageCounters()
        self.blind_max = 0.0
        self.live = False
        self._reset_epoch()
        self.escalated_until = -math.inf  # wall clock
        self._score = 0.0
        self._score_at = 0.0

    # -- an epoch is one connection: blind stretches do not span reconnects ---------------------------------
    def _reset_epoch(self) -> None:
        self.now: float | None = None  # stream time of the last packet
        self.last_key: float | None = None
        self.gop_s: float | None = None
        self.last_sample: float | None = None
        self.last_sample_wall: float | None = None
        self.cover_end: float | None = None  # the screen is covered up to here by representative samples
        self._burst_at: float | None = None  # first packet of the last change burst
        self._gop_types = [0, 0, 0, 0]  # this GOP: B-frames, their bytes, P-frames, their bytes
        self._heavy_b_signalled = False
        self._key_thumb: npt.NDArray[np.float32] | None = None  # the GOP's keyframe sample
        self._gop_had_change = False
        self._want: _Want | None = None
        self._interval_gap = self._draw_gap()
        self._escalated_gap = self._draw_escalated_gap()
        self._next_audit: float | None = None
        self._drift: tuple[float, float] | None = None  # (wall, stream time) at the start of the window
        self._refresh = False  # recovery points seen: intra refresh

    def start(self, live: bool) -> None:
        """A new connection (reader) for this stream."""
        self.live = live
        self._reset_epoch()

    def _draw_gap(self) -> float:
        j = self.policy.jitter_s
        return self.policy.max_interval_s + (self._rng.uniform(-j, j) if j > 0 else 0.0)

    def _draw_escalated_gap(self) -> float:
        e = self.policy.escalated_interval_s
        return e * self._rng.uniform(0.75, 1.25)

    def _draw_audit(self, t: float) -> float | None:
        mean = self.policy.audit_mean_s
        if mean is None:
            return None
        return t + max(0.5, self._rng.expovariate(1.0 / mean))

    # -- signals and escalation ---------------------------------------------------------------------------
    def signal(self, name: str, wall: float) -> None:
        c = self.counters.signals
        c[name] = c.get(name, 0) + 1
        weight = SIGNAL_WEIGHTS.get(name, 1.0)
        if weight <= 0:
            return
        p = self.policy
        self._score = self._score * math.exp(-max(0.0, wall - self._score_at) / p.score_tau_s) + weight
        self._score_at = wall
        if self._score >= p.escalate_score:
            if not self.escalated(wall):
                self.counters.escalations += 1
            self.escalated_until = wall + p.escalation_s

    def escalated(self, wall: float) -> bool:
        return wall < self.escalated_until

    def score(self, wall: float) -> float:
        return self._score * math.exp(-max(0.0, wall - self._score_at) / self.policy.score_tau_s)

    # -- the reader's calls -------------------------------------------------------------------------------
    def key(self, t: float, size: int, info: KeyInfo, wall: float) -> bool:
        """A key-flagged packet at stream time t. True: it may be taken as a sample on its own (clean)."""
        self._advance(t, wall)
        if info.recovery_point:
            if not self._refresh:
                self._refresh = True
                self.signal("recovery_point", wall)
            self._note_delta(size)  # an intra refresh "keyframe" is an ordinary slice: no key baseline
            return False
        self.sizes.add_key(size)
        if self.last_key is not None and t > self.last_key:
            self.gop_s = t - self.last_key
            if self.gop_s > LONG_GOP_S:
                self.signal("long_gop", wall)
        self.last_key = t
        self._gop_types = [0, 0, 0, 0]
        self._heavy_b_signalled = False
        self._gop_had_change = False
        self._key_thumb = None
        base = self.sizes.delta_baseline
        if self.sizes.keys >= 3 and base is not None and self.sizes.deltas >= 30 and size < 2.0 * base:
            self.signal("flat_keyframes", wall)
        if self._want is not None and self._want.reason in ("interval", "audit", "wall", "escalated"):
            self._want = None  # the keyframe serves (if it is taken)
        return info.clean

    def packet(self, t: float, size: int, wall: float, reordered: bool = False) -> float | None:
        """A non-key packet at stream time t (`reordered`: a B-frame): the stream time of a wanted sample (decode
        forward to the first frame at or after it), or None."""
        prev = self.now
        self._advance(t, wall)
        p = self.policy
        self._frame_types(size, reordered, wall)
        ratio = self.sizes.ratio(size)
        key_base = self.sizes.key_baseline
        big = (ratio is not None and ratio >= p.change_ratio and self.sizes.deltas >= 8
               and (key_base is None or size >= p.change_min_key_fraction * key_base))
        self._note_delta(size)
        if big:
            self._change(t, wall)
        if prev is not None and t - prev > p.jump_s:
            self.signal("timestamp_jump", wall)
            self._set_want(_Want(prev, "jump", t, cover_until=t))
        if self.last_sample is None:
            if self._refresh and self._want is None:
                self._set_want(_Want(t, "interval", t))
            return self._target()
        # Targets are the wanted moments themselves, not this packet's time: packets come in decode order, and
        # with B-frames the frames shown before this one arrive after it.
        since = t - self.last_sample
        if self.escalated(wall) and since >= self._escalated_gap:
            self._set_want(_Want(self.last_sample + self._escalated_gap, "escalated", t))
        elif since >= self._interval_gap and not self._key_soon(t):
            self._set_want(_Want(self.last_sample + self._interval_gap, "interval", t))
        elif (self.live and self.last_sample_wall is not None
              and wall - self.last_sample_wall >= p.wall_max_interval_s):
            self._set_want(_Want(t, "wall", t))
        if self._next_audit is None:
            self._next_audit = self._draw_audit(t)
        elif t >= self._next_audit:
            self._set_want(_Want(self._next_audit, "audit", t))
            self._next_audit = self._draw_audit(t)
        return self._target()

    def forward(self, packets: int) -> bool:
        """May the reader decode `packets` packets forward for the wanted sample? (the decode budget)"""
        if self._budget is None or packets <= 0 or self._budget(packets):
            return True
        self.counters.refused_budget += 1
        self._want = None
        return False

    def sampled(self, t: float, keyframe: bool, thumb: npt.NDArray[np.float32] | None, wall: float) -> str:
        """A sample at stream time t was produced; returns its reason."""
        want = self._want
        reason = "key" if keyframe else (want.reason if want is not None else "interval")
        c = self.counters.samples
        c[reason] = c.get(reason, 0) + 1
        cover_from = t
        if want is not None and not keyframe and t >= want.target - 1e-6:
            if want.cover_until is not None:
                cover_from = max(t, want.cover_until)
            self._want = None
        if keyframe:
            self._key_thumb = thumb
        elif (thumb is not None and self._key_thumb is not None and not self._gop_had_change
              and float(np.abs(thumb - self._key_thumb).mean()) > THUMB_DIFF_CHANGED):
            self.signal("hidden_change", wall)
        gap = 0.0 if self.cover_end is None else max(0.0, t - self.cover_end)
        self.blind_max = max(self.blind_max, gap)
        self.cover_end = cover_from if self.cover_end is None else max(self.cover_end, cover_from)
        self.last_sample = t
        self.last_sample_wall = wall
        self._interval_gap = self._draw_gap()
        self._escalated_gap = self._draw_escalated_gap()
        return reason

    def blind_now(self) -> float:
        if self.now is None or self.cover_end is None:
            return 0.0
        return max(0.0, self.now - self.cover_end)

    # -- internals ----------------------------------------------------------------------------------------
    def _frame_types(self, size: int, reordered: bool, wall: float) -> None:
        """B-frames predict from both sides and cost a fraction of a P-frame. B-frames that cost as much as the
        P-frames around them carry what those do not show: a picture on the B-frames only."""
        g = self._gop_types
        if reordered:
            g[0] += 1
            g[1] += size
        else:
            g[2] += 1
            g[3] += size
        if (not self._heavy_b_signalled and g[0] >= HEAVY_B_MIN and g[2] >= HEAVY_B_MIN // 3
                and g[1] / g[0] >= g[3] / g[2]):
            self._heavy_b_signalled = True
            self.signal("heavy_bframes", wall)

    def _note_delta(self, size: int) -> None:
        self.sizes.add_delta(size)

    def _change(self, t: float, wall: float) -> None:
        """A large packet at t. One burst of them (until the baseline has caught up, or `settle_max_s` after its
        first packet) is one change: one sample, one signal."""
        p = self.policy
        self._gop_had_change = True
        if self._burst_at is not None and t - self._burst_at <= p.settle_max_s:
            w = self._want
            if w is not None and w.reason == "change":
                w.target = min(max(w.target, t + p.settle_s), w.first + p.settle_max_s)
            return
        self._burst_at = t
        self.counters.changes += 1
        if self.last_key is not None and 0 <= t - self.last_key <= p.after_key_s:
            self.signal("change_after_key", wall)
        w = self._want
        if w is not None and w.reason == "change":
            w.target = min(max(w.target, t + p.settle_s), w.first + p.settle_max_s)
        else:
            self._set_want(_Want(t + p.settle_s, "change", t))

    def _set_want(self, want: _Want) -> None:
        """Keep the earliest target (one pending want at a time; a later reason never delays an earlier one)."""
        if self._want is None or want.target < self._want.target:
            if self._want is None:
                self.counters.wanted += 1
            self._want = want

    def _target(self) -> float | None:
        return None if self._want is None else self._want.target

    def _key_soon(self, t: float) -> bool:
        """The next keyframe is due within a small margin (or a little late): it will serve. The GOP is the
        last one measured (max_interval_s before there is one). Never on intra refresh: its keys give no
        picture."""
        if self._refresh or self.last_key is None:
            return False
        due = self.last_key + (self.gop_s if self.gop_s is not None else self.policy.max_interval_s)
        margin = min(0.5, self.policy.max_interval_s / 4)
        return due - margin <= t <= due + KEY_LATE_S

    def _advance(self, t: float, wall: float) -> None:
        self.now = t if self.now is None else max(self.now, t)
        if not self.live:
            return
        if self._drift is None:
            self._drift = (wall, t)
            return
        w0, t0 = self._drift
        if wall - w0 >= DRIFT_WINDOW_S:
            pace = (t - t0) / (wall - w0)
            if pace < 0.5 or pace > 2.0:
                self.signal("clock_drift", wall)
            self._drift = (wall, t)


class StreamClock:
    """Stream time from a publisher's timestamps: monotonic in decode order. Forward jumps are kept (the frame
    before a jump stays on screen for the whole step); a backward jump (a restart, a loop, a hostile encoder) is
    folded into a forward step of one frame, so intervals measured in stream time cannot be reset by it.

    `offset(dts)` is called once per packet in decode order; a packet's stream time is its pts plus the offset.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._last: float | None = None
        self._frame_s = 1.0 / 30

    def offset(self, dts: float) -> float:
        if self._last is None:
            self._last = dts
            return 0.0
        t = dts + self._offset
        step = t - self._last
        if step < 0:
            self._offset -= step - self._frame_s
            t = dts + self._offset
        elif 0 < step < 0.2:
            self._frame_s = 0.9 * self._frame_s + 0.1 * step
        self._last = t
        return self._offset
