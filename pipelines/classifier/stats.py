"""What a classifier reports about itself: counters, two histograms, the service's circuit, as JSON-ready dicts.

A worker process sends these to the main process every few seconds (monitor/runtime/messages.py WorkerStats,
under "classifiers"), which turns them into Prometheus series (monitor/ops/classifier_metrics.py). Every figure is
cumulative since the pipeline was built; `run` names that pipeline instance, so that the main process can add up
the figures of a worker that was restarted (its counters start at 0 again under a new run) with those before.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Sequence
from typing import NotRequired, TypedDict

# Upper bounds of the buckets; a last bucket above the largest bound is implied (Prometheus' +Inf).
BATCH_SIZE_BOUNDS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)
INFERENCE_S_BOUNDS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                         10.0)


class HistogramFigures(TypedDict):
    bounds: list[float]  # upper bounds, ascending
    counts: list[int]  # observations per bucket (not cumulative), len(bounds) + 1: the last is above every bound
    sum: float
    count: int


class ServiceFigures(TypedDict):
    """A classification service's adapter (monitor/runtime/classify_service.py)."""

    circuit: str  # closed, open, half-open
    circuit_opened: int  # times the circuit opened
    errors: dict[str, int]  # by kind: timeout, http_503, tls, connect, answer, circuit_open


class ClassifierFigures(TypedDict):
    run: str  # this pipeline instance
    model_id: str
    offered: int  # samples the analysis thread offered
    skipped_budget: int  # not taken: the stream's every-k budget
    queued: int
    dropped_full: int  # the classifier fell behind: the oldest waiting sample was dropped
    dropped_stale: int  # waited longer than max_sample_age_s
    classified: int  # scored: below every threshold, or over one (hit_samples)
    hit_samples: int  # classified samples with at least one label over its threshold
    failed: int  # the scorer could not score it (a service error, an open circuit)
    batches: int
    findings: int  # labels over their threshold, all samples
    max_score: dict[str, float]  # per label, the highest score since the start
    batch_size: HistogramFigures  # samples per scorer call
    inference_s: HistogramFigures  # seconds per scorer call (a batch)
    providers: NotRequired[str]  # an ONNX model's execution providers, in order of preference
    service: NotRequired[ServiceFigures]


class Histogram:
    """Fixed buckets, counted in this process (not thread-safe: its owner locks)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def figures(self) -> HistogramFigures:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum, "count": self.count}


def new_run() -> str:
    """A name for one pipeline instance."""
    return uuid.uuid4().hex[:16]
