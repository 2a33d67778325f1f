"""Prometheus series of the classifiers, from the figures each worker process reports.

A classifier runs in every worker process and reports cumulative figures (pipelines/classifier/stats.py) with its
worker's sampling counters (monitor/runtime/messages.py WorkerStats, "classifiers"). `ClassifierMetrics` keeps the
latest figures of every pipeline instance it has seen (`run`: a restarted worker's classifier is a new run whose
counters start at 0, so totals keep the runs before it) and renders, per analysis, at scrape time:

  monitor_classifier_inferences_total{analysis,outcome}   below_threshold, over_threshold, failed
  monitor_classifier_skipped_total{analysis}              samples the classifier's budget did not take
  monitor_classifier_dropped_total{analysis,reason}       queue_full, stale
  monitor_classifier_batch_size{analysis}                 histogram: samples per scorer call
  monitor_classifier_inference_seconds{analysis}          histogram: seconds per scorer call
  monitor_classifier_max_score{analysis,label}            the highest score of each label since the start
  monitor_classifier_circuit{analysis,state}              a service's adapters (one per worker) in each state
  monitor_classifier_circuit_opened_total{analysis}       times a service's circuit opened
  monitor_classifier_service_errors_total{analysis,kind}  timeout, http_<status>, tls, connect, answer, circuit_open
  monitor_classifier_info{analysis,model_id,providers}    1 per analysis and model
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pipelines.classifier import ClassifierFigures, HistogramFigures

CIRCUIT_STATES = ("closed", "half-open", "open")


def _bucket_value(bound: float) -> str:
    return str(float(bound))


def merge_histograms(parts: Iterable[HistogramFigures]) -> HistogramFigures | None:
    """Histograms of the same buckets added up (None when there are none)."""
    out: HistogramFigures | None = None
    for h in parts:
        if out is None:
            out = {"bounds": list(h["bounds"]), "counts": list(h["counts"]), "sum": h["sum"], "count": h["count"]}
            continue
        if h["bounds"] != out["bounds"]:
            continue  # another version's buckets: never mixed
        out["counts"] = [a + b for a, b in zip(out["counts"], h["counts"], strict=True)]
        out["sum"] += h["sum"]
        out["count"] += h["count"]
    return out


def _add_histogram(fam: HistogramMetricFamily, analysis: str, h: HistogramFigures | None) -> None:
    if h is None:
        return
    cumulative, buckets = 0, []
    for bound, n in zip([*h["bounds"], float("inf")], h["counts"], strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else _bucket_value(bound), float(cumulative)))
    fam.add_metric([analysis], buckets, h["sum"])


class ClassifierMetrics(Collector):
    """The classifier series, rendered from the workers' latest figures at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], ClassifierFigures] = {}  # (analysis, run) -> its latest figures
        self._current: dict[tuple[str, str], ClassifierFigures] = {}  # the runs in the last update
        registry.register(self)

    def update(self, workers: Sequence[Mapping[str, Any]]) -> None:
        """The workers' latest stats (monitor/runtime/messages.py WorkerStats, one per worker process)."""
        current: dict[tuple[str, str], ClassifierFigures] = {}
        for worker in workers:
            classifiers: Mapping[str, ClassifierFigures] = worker.get("classifiers") or {}
            for analysis, fig in classifiers.items():
                if "run" in fig:
                    current[(analysis, fig["run"])] = fig
        with self._lock:
            self._runs.update(current)
            self._current = current

    def describe(self) -> Iterator[Metric]:
        """The families this collector renders (the registry checks their names against every other's)."""
        yield from self._families({}, {})

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            runs, current = dict(self._runs), dict(self._current)
        yield from self._families(runs, current)

    def _families(self, runs: Mapping[tuple[str, str], ClassifierFigures],
                  current: Mapping[tuple[str, str], ClassifierFigures]) -> Iterator[Metric]:
        by_analysis: dict[str, list[ClassifierFigures]] = {}
        for (analysis, _), fig in sorted(runs.items()):
            by_analysis.setdefault(analysis, []).append(fig)
        inferences = CounterMetricFamily("monitor_classifier_inferences", "Samples a classifier scored, by "
                                         "outcome (below_threshold, over_threshold, failed)",
                                         labels=["analysis", "outcome"])
        skipped = CounterMetricFamily("monitor_classifier_skipped", "Samples the classifier's budget did not "
                                      "take (every k-th sample of a stream)", labels=["analysis"])
        dropped = CounterMetricFamily("monitor_classifier_dropped", "Samples the classifier dropped from its "
                                      "queue (queue_full: it fell behind; stale: waited too long)",
                                      labels=["analysis", "reason"])
        max_score = GaugeMetricFamily("monitor_classifier_max_score", "The highest score of each label since the "
                                      "start", labels=["analysis", "label"])
        circuit = GaugeMetricFamily("monitor_classifier_circuit", "A classification service's adapters (one per "
                                    "worker process) in each circuit state", labels=["analysis", "state"])
        opened = CounterMetricFamily("monitor_classifier_circuit_opened", "Times a classification service's "
                                     "circuit opened", labels=["analysis"])
        errors = CounterMetricFamily("monitor_classifier_service_errors", "Requests to a classification service "
                                     "that gave no scores, by kind", labels=["analysis", "kind"])
        info = GaugeMetricFamily("monitor_classifier_info", "The model each analysis runs and its execution "
                                 "providers", labels=["analysis", "model_id", "providers"])
        batch_size = HistogramMetricFamily("monitor_classifier_batch_size", "Samples per classifier call",
                                           labels=["analysis"])
        inference_s = HistogramMetricFamily("monitor_classifier_inference_seconds", "Seconds per classifier call "
                                            "(one batch)", labels=["analysis"])
        for analysis, figs in by_analysis.items():
            below = sum(f["classified"] - f["hit_samples"] for f in figs)
            inferences.add_metric([analysis, "below_threshold"], below)
            inferences.add_metric([analysis, "over_threshold"], sum(f["hit_samples"] for f in figs))
            inferences.add_metric([analysis, "failed"], sum(f["failed"] for f in figs))
            skipped.add_metric([analysis], sum(f["skipped_budget"] for f in figs))
            dropped.add_metric([analysis, "queue_full"], sum(f["dropped_full"] for f in figs))
            dropped.add_metric([analysis, "stale"], sum(f["dropped_stale"] for f in figs))
            best: dict[str, float] = {}
            for f in figs:
                for label, score in f["max_score"].items():
                    best[label] = max(best.get(label, 0.0), score)
            for label, score in sorted(best.items()):
                max_score.add_metric([analysis, label], score)
            services = [f["service"] for f in figs if "service" in f]
            if services:
                states = dict.fromkeys(CIRCUIT_STATES, 0)
                for (a, _), f in current.items():
                    if a == analysis and "service" in f:
                        states[f["service"]["circuit"]] = states.get(f["service"]["circuit"], 0) + 1
                for state, n in states.items():
                    circuit.add_metric([analysis, state], n)
                opened.add_metric([analysis], sum(s["circuit_opened"] for s in services))
                kinds: dict[str, int] = {}
                for s in services:
                    for kind, n in s["errors"].items():
                        kinds[kind] = kinds.get(kind, 0) + n
                for kind, n in sorted(kinds.items()):
                    errors.add_metric([analysis, kind], n)
            latest = figs[-1]
            models = {(f["model_id"], f.get("providers", "")) for f in figs
                      if (analysis, f["run"]) in current} or {(latest["model_id"], latest.get("providers", ""))}
            for model_id, providers in sorted(models):
                info.add_metric([analysis, model_id, providers], 1)
            _add_histogram(batch_size, analysis, merge_histograms(f["batch_size"] for f in figs))
            _add_histogram(inference_s, analysis, merge_histograms(f["inference_s"] for f in figs))
        yield from (inferences, skipped, dropped, max_score, circuit, opened, errors, info, batch_size, inference_s)
