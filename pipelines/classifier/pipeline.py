"""The classifier pipeline: samples offered on the analysis thread, scored in batches on the classifier's own
thread, findings for the labels over their threshold.

`offer` costs a budget check (pipelines/classifier/budget.py) and a queue put; the classifier's thread takes
samples of all the worker's streams in batches (up to `batch_size`, or what came within `batch_wait_s` of the
first), scores them and hands every classified sample to the sink (hits and misses: incidents need k of n). When
it falls behind, the oldest waiting sample is dropped and counted, as is one that waited longer than
`max_sample_age_s`. The thread runs at a lower CPU priority (niceness +10) so that on a busy machine the hash
path goes first.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np

from pipelines.base import ClassifiedSink, Finding, Sample, SampleInfo
from pipelines.classifier.budget import BudgetSettings, SampleBudget
from pipelines.classifier.scorer import FigureReporting, ModelError, Scorer, Scores
from pipelines.classifier.stats import (
    BATCH_SIZE_BOUNDS,
    INFERENCE_S_BOUNDS,
    ClassifierFigures,
    Histogram,
    new_run,
)
from pipelines.fingerprint import pdq
from pipelines.hamming import code_to_hex

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LabelRule:
    name: str
    threshold: float | None  # None: scored, never a finding
    severity: str = "high"


@dataclass(frozen=True, slots=True)
class BatchSettings:
    batch_size: int = 8
    batch_wait_s: float = 0.05
    queue_size: int = 64
    max_sample_age_s: float = 5.0


T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items into batches of up to `max_batch`, or what came within `max_wait_s` of the first (pure:
    time is passed in)."""

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.items: list[T] = []
        self.first_at: float | None = None

    def add(self, item: T, now: float) -> list[T] | None:
        """Adds an item; returns the batch when it is full."""
        if self.first_at is None:
            self.first_at = now
        self.items.append(item)
        return self.flush() if len(self.items) >= self.max_batch else None

    def wait_s(self, now: float) -> float | None:
        """How long until the open batch is due (None: no batch open)."""
        if self.first_at is None:
            return None
        return max(0.0, self.first_at + self.max_wait_s - now)

    def due(self, now: float) -> bool:
        return self.first_at is not None and now - self.first_at >= self.max_wait_s

    def flush(self) -> list[T]:
        out, self.items, self.first_at = self.items, [], None
        return out


@dataclass
class ClassifierStats:
    offered: int = 0
    skipped_budget: int = 0  # not taken: the stream's every-k budget
    queued: int = 0
    dropped_full: int = 0  # the classifier fell behind: the oldest waiting sample was dropped
    dropped_stale: int = 0  # waited longer than max_sample_age_s
    classified: int = 0
    hit_samples: int = 0  # classified with at least one label over its threshold
    failed: int = 0  # the scorer could not score it (a service error, an open circuit)
    batches: int = 0
    findings: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A sample in the classifier's queue, with when it was queued."""

    sample: Sample
    queued_at: float


class ClassifierPipeline:
    """A BatchedPipeline over a Scorer (pipelines/base.py)."""

    def __init__(self, name: str, scorer: Scorer, rules: Sequence[LabelRule], budget: BudgetSettings,
                 batch: BatchSettings, clock: Callable[[], float] = time.monotonic, nice: int = 10,
                 keep_images: bool = False) -> None:
        if tuple(r.name for r in rules) != scorer.labels:
            raise ModelError("labels", f"{len(rules)} labels configured, the scorer has {len(scorer.labels)}")
        self.name = name
        self.scorer = scorer
        self.rules = tuple(rules)
        self.batch = batch
        self.budget = SampleBudget(budget, clock)
        self.near_fraction = budget.near_fraction
        self.near_match_s = budget.near_match_s
        self.clock = clock
        self.nice = nice  # added to the classifier thread's niceness (0: as the hash path)
        self.keep_images = keep_images  # evidence.store_images: findings carry the sample as PNG
        self.counts = ClassifierStats()
        self.run_id = new_run()  # the figures of this instance (pipelines/classifier/stats.py)
        self.max_score = dict.fromkeys(scorer.labels, 0.0)
        self.batch_sizes = Histogram(BATCH_SIZE_BOUNDS)
        self.inference_s = Histogram(INFERENCE_S_BOUNDS)
        self._queue: queue.Queue[Waiting] = queue.Queue(batch.queue_size)
        self._lock = threading.Lock()
        self._sink: ClassifiedSink | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model_id(self) -> str:
        return self.scorer.model_id

    # -- called on the analysis thread: never blocks ------------------------------------------------------
    def offer(self, sample: Sample) -> None:
        with self._lock:
            self.counts.offered += 1
        if not self.budget.want(sample.stream_id):
            with self._lock:
                self.counts.skipped_budget += 1
            return
        item = Waiting(sample, self.clock())
        while True:
            try:
                self._queue.put_nowait(item)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()  # the oldest goes: fresh samples matter more
                    with self._lock:
                        self.counts.dropped_full += 1
                except queue.Empty:
                    pass
        with self._lock:
            self.counts.queued += 1

    def boost(self, stream_id: str, seconds: float) -> None:
        self.budget.boost(stream_id, seconds)

    def forget(self, stream_id: str) -> None:
        self.budget.forget(stream_id)

    def stats(self) -> ClassifierFigures:
        """Every figure since the pipeline was built, JSON-ready (pipelines/classifier/stats.py)."""
        with self._lock:
            c = self.counts
            out: ClassifierFigures = {
                "run": self.run_id, "model_id": self.model_id, "offered": c.offered,
                "skipped_budget": c.skipped_budget, "queued": c.queued, "dropped_full": c.dropped_full,
                "dropped_stale": c.dropped_stale, "classified": c.classified, "hit_samples": c.hit_samples,
                "failed": c.failed, "batches": c.batches, "findings": c.findings, "max_score": dict(self.max_score),
                "batch_size": self.batch_sizes.figures(), "inference_s": self.inference_s.figures()}
        if isinstance(self.scorer, FigureReporting):
            extra = self.scorer.figures()
            if "providers" in extra:
                out["providers"] = extra["providers"]
            if "service" in extra:
                out["service"] = extra["service"]
        return out

    # -- the classifier's thread ------------------------------------------------------------------------
    def start(self, sink: ClassifiedSink) -> None:
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name=f"classify-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.scorer.close()

    def _run(self) -> None:
        if self.nice:
            try:  # Linux: per thread. The hash path's threads win the CPU whenever both want it.
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except (OSError, AttributeError):
                log.debug("classifier %s: could not lower its thread's priority", self.name)
        batcher: Batcher[Waiting] = Batcher(self.batch.batch_size, self.batch.batch_wait_s)
        while not self._stop.is_set():
            wait = batcher.wait_s(self.clock())
            ready: list[Waiting] | None = None
            try:
                item = self._queue.get(timeout=0.2 if wait is None else max(wait, 0.001))
                ready = batcher.add(item, self.clock())
            except queue.Empty:
                pass
            if ready is None and batcher.due(self.clock()):
                ready = batcher.flush()
            if ready:
                try:
                    self.run_batch(ready)
                except Exception:  # a scorer bug must not end classification of every stream
                    log.exception("classifier %s: a batch of %d samples failed", self.name, len(ready))
        rest = batcher.flush()
        if rest:
            self.run_batch(rest)

    def run_batch(self, items: Sequence[Waiting]) -> None:
        now = self.clock()
        fresh = [w for w in items if now - w.queued_at <= self.batch.max_sample_age_s]
        with self._lock:
            self.counts.dropped_stale += len(items) - len(fresh)
        if not fresh:
            return
        t0 = time.perf_counter()
        scores = self.scorer.score([w.sample.rgb for w in fresh])
        took = time.perf_counter() - t0
        with self._lock:
            self.counts.batches += 1
            self.batch_sizes.observe(len(fresh))
            self.inference_s.observe(took)
        for w, row in zip(fresh, scores, strict=True):
            if row is None:
                with self._lock:
                    self.counts.failed += 1
                continue
            findings = self.findings(w.sample, row)
            with self._lock:
                self.counts.classified += 1
                self.counts.hit_samples += 1 if findings else 0
                self.counts.findings += len(findings)
                for label, score in zip(self.scorer.labels, row.tolist(), strict=True):
                    if score > self.max_score[label]:
                        self.max_score[label] = round(float(score), 6)
            if self._sink is not None:
                s = w.sample
                self._sink(SampleInfo(s.stream_id, s.media_time_s, s.received_at), self.name, findings, time.time())

    def findings(self, sample: Sample, row: Scores) -> list[Finding]:
        """The labels at or over their threshold; a near match makes the stream's sampling dense."""
        out: list[Finding] = []
        near = False
        sample_hash: tuple[str, int] | None = None
        image: bytes | None = None
        for rule, score in zip(self.rules, row.tolist(), strict=True):
            if rule.threshold is None:
                continue
            if score >= rule.threshold * self.near_fraction:
                near = True
            if score < rule.threshold:
                continue
            if sample_hash is None:
                code, quality = pdq(sample.rgb)
                sample_hash = (code_to_hex(code), quality)
                if self.keep_images:
                    ok, png = cv2.imencode(".png", np.ascontiguousarray(sample.rgb[:, :, ::-1]))
                    image = png.tobytes() if ok else None
            out.append(Finding(
                pipeline=self.name, stream_id=sample.stream_id, media_time_s=sample.media_time_s,
                received_at=sample.received_at, bank=self.name, entry_id=rule.name, signal_type="classifier",
                distance=0, threshold=0, quality=sample_hash[1], sample_hash=sample_hash[0], entry_label=rule.name,
                kind="classification", label=rule.name, score=round(float(score), 4),
                score_threshold=rule.threshold, model_id=self.model_id, severity=rule.severity,
                image_png=image))
        if near and self.near_match_s:
            self.budget.boost(sample.stream_id, self.near_match_s)
        return out

    def process(self, sample: Sample) -> list[Finding]:
        """Synchronous scoring of one sample (tests, tools); the monitor uses offer()."""
        row = self.scorer.score([sample.rgb])[0]
        return [] if row is None else self.findings(sample, row)

