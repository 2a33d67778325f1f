"""Known-content matching: fingerprint the sample, look it up in every bank, report findings."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.banks import Bank
from pipelines.base import Finding, Sample
from pipelines.fingerprint import pdq, phash
from pipelines.hamming import Codes, code_to_hex


@dataclass
class MatcherStats:
    samples: int = 0
    low_quality: int = 0  # skipped: PDQ quality below the minimum (flat, black, blurred frames)
    findings: int = 0


class KnownContentMatcher:
    """Pipeline over a set of banks. Banks can be swapped whole at any time (reload)."""

    name = "known_content"

    def __init__(self, banks: Sequence[Bank], min_quality: int = 50) -> None:
        self._banks: tuple[Bank, ...] = tuple(banks)
        self.min_quality = min_quality
        self.stats = MatcherStats()
        self._lock = threading.Lock()

    def set_banks(self, banks: Sequence[Bank]) -> None:
        self._banks = tuple(banks)  # one reference swap: a sample sees the old set or the new, never a mix

    def process(self, sample: Sample) -> list[Finding]:
        banks = self._banks
        with self._lock:
            self.stats.samples += 1
        code, quality = pdq(sample.rgb)
        # PDQ quality gates both signals: below it the frame carries too little structure to match on.
        if quality < self.min_quality:
            with self._lock:
                self.stats.low_quality += 1
            return []
        codes: dict[str, Codes] = {"pdq": code}
        findings: list[Finding] = []
        for bank in banks:
            if bank.signal_type not in codes:
                codes[bank.signal_type] = phash(sample.rgb)
            probe = codes[bank.signal_type]
            hex_probe = code_to_hex(probe)
            for m in bank.lookup(probe):
                findings.append(
                    Finding(
                        pipeline=self.name,
                        stream_id=sample.stream_id,
                        media_time_s=sample.media_time_s,
                        received_at=sample.received_at,
                        bank=bank.name,
                        entry_id=m.entry.entry_id,
                        signal_type=bank.signal_type,
                        distance=m.distance,
                        threshold=bank.threshold,
                        quality=quality,
                        sample_hash=hex_probe,
                        entry_label=m.entry.label,
                        entry_tags=m.entry.tags,
                    )
                )
        if findings:
            with self._lock:
                self.stats.findings += len(findings)
        return findings
