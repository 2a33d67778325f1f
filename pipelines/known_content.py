"""Known-content matching: fingerprint the sample, look it up in every bank, report findings.

Besides the plain hash of the frame, the matcher looks up the probes of pipelines.robust: the frame without black
bars, its 8 rotations/mirrors, detected inner pictures (picture-in-picture), corner overlays evened out and corner
insets inpainted, the frame re-toned by a few gammas, the frame re-extended as the crop of a larger original, turned
back by 2 degrees, edge strips (bands, chat columns) smeared over, the content window and the frame with its layout
filled in where a stream's samples show a fixed layout (pipelines/layout.py, per stream), optionally fixed crops and
quadrants.
Each switch is a keyword argument; the defaults are the recommended configuration (docs/eval-images.md).
A sample yields at most one Finding per (bank, entry): the probe at the smallest distance, whose hash is the
Finding's `sample_hash` (so `distance` is the distance between `sample_hash` and the entry).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.banks import Bank, Entry
from pipelines.base import Finding, Sample
from pipelines.hamming import code_to_hex
from pipelines.layout import LayoutTracker
from pipelines.robust import Probe, RobustOptions, compute_probes, layout_probes


@dataclass
class MatcherStats:
    samples: int = 0
    low_quality: int = 0  # skipped: no view with PDQ quality at the minimum (flat, black, blurred frames)
    findings: int = 0
    probes: int = 0  # lookups per bank, summed over samples
    by_variant: Counter[str] = field(default_factory=Counter)  # findings per Match.variant ('full:identity', ...)


@dataclass(frozen=True, slots=True)
class Match:
    """A finding and the probe that made it."""

    finding: Finding
    view: str  # 'full', 'stripped', 'box1', 'crop90_tl', 'pip_c', ...
    shown_as: str  # how the stream shows the entry's picture: 'identity', 'flip_h' (mirrored), 'rot90', ...

    @property
    def variant(self) -> str:
        return f"{self.view}:{self.shown_as}"


class KnownContentMatcher:
    """Pipeline over a set of banks. Banks can be swapped whole at any time (reload)."""

    name = "known_content"

    def __init__(
        self,
        banks: Sequence[Bank],
        min_quality: int = 50,
        *,
        strip_bars: bool = True,
        dihedral: bool = True,
        boxes: bool = True,
        crops: bool = False,
        pip: bool = False,
        tones: bool = True,
        reextend: bool = True,
        strips: bool = True,
        tilts: bool = True,
        layout: bool = True,
    ) -> None:
        self._banks: tuple[Bank, ...] = tuple(banks)
        self.min_quality = min_quality
        self.options = RobustOptions(strip_bars=strip_bars, dihedral=dihedral, crops=crops, pip=pip, boxes=boxes,
                                     tones=tones, reextend=reextend, strips=strips, tilts=tilts)
        self.stats = MatcherStats()
        # per-stream layout models (pipelines/layout.py); None: off
        self.layouts: LayoutTracker | None = LayoutTracker() if layout else None
        self._lock = threading.Lock()

    @property
    def banks(self) -> tuple[Bank, ...]:
        return self._banks

    def set_banks(self, banks: Sequence[Bank]) -> None:
        self._banks = tuple(banks)  # one reference swap: a sample sees the old set or the new, never a mix

    def process(self, sample: Sample) -> list[Finding]:
        return [m.finding for m in self.process_detailed(sample)]

    def process_detailed(self, sample: Sample) -> list[Match]:
        """Findings with the view and dihedral variant that matched (until Finding carries them itself)."""
        banks = self._banks
        signals = {b.signal_type for b in banks} | {"pdq"}
        probes = compute_probes(sample.rgb, self.options, signals)
        if self.layouts is not None:
            with self._lock:  # one model per stream; a stream's samples come in order
                found = self.layouts.observe(sample.stream_id, sample.rgb)
            if found is not None:
                probes += layout_probes(sample.rgb, found, signals)
        # PDQ quality gates every signal, per view: below it a view carries too little structure to match on.
        usable = [p for p in probes if p.quality >= self.min_quality]
        with self._lock:
            self.stats.samples += 1
            self.stats.probes += len(usable)
            if not usable:
                self.stats.low_quality += 1
        if not usable:
            return []
        matches: list[Match] = []
        for bank in banks:
            # entry_id -> (distance, probe, entry): the nearest probe wins; on a tie the earlier probe (the plain
            # full frame comes first). Dict order is first-found order, and the sort below is stable.
            best: dict[str, tuple[int, Probe, Entry]] = {}
            results = bank.lookup_many(np.stack([p.codes[bank.signal_type] for p in usable]))
            for probe, hits in zip(usable, results, strict=True):
                for m in hits:
                    prev = best.get(m.entry.entry_id)
                    if prev is None or m.distance < prev[0]:
                        best[m.entry.entry_id] = (m.distance, probe, m.entry)
            for entry_id, (distance, probe, entry) in sorted(best.items(), key=lambda kv: kv[1][0]):
                finding = Finding(
                    pipeline=self.name,
                    stream_id=sample.stream_id,
                    media_time_s=sample.media_time_s,
                    received_at=sample.received_at,
                    bank=bank.name,
                    entry_id=entry_id,
                    signal_type=bank.signal_type,
                    distance=distance,
                    threshold=bank.threshold,
                    quality=probe.quality,
                    sample_hash=code_to_hex(probe.codes[bank.signal_type]),
                    entry_label=entry.label,
                    entry_tags=entry.tags,
                    entry_frame_s=entry.frame_s,
                    variant=f"{probe.view}:{probe.shown_as}",
                )
                matches.append(Match(finding, probe.view, probe.shown_as))
        if matches:
            with self._lock:
                self.stats.findings += len(matches)
                self.stats.by_variant.update(m.variant for m in matches)
        return matches
