"""Classifier metrics: the figures a classifier reports (pipelines/classifier/stats.py), how the main process renders
them from several workers and across a worker's restart (monitor/ops/classifier_metrics.py), the execution
provider choice, and a slow classifier leaving the hash path's findings on time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.app.health import MetricDeltas
from monitor.config.models import MatchingConfig
from monitor.ingest.queues import SampleQueue
from monitor.ops.metrics import Metrics
from monitor.runtime.analyses import make_matcher
from monitor.runtime.supervisor import Analysis, QueuedSample
from monitor_tools.classifier_models import build_testcard_model
from pipelines.banks import Bank, Entry
from pipelines.base import Finding
from pipelines.classifier import (
    BatchSettings,
    BudgetSettings,
    ClassifierFigures,
    ClassifierPipeline,
    Frame,
    LabelRule,
    OnnxScorer,
    OnnxSettings,
    Scores,
    ServiceFigures,
)
from pipelines.classifier.onnx_model import choose_providers
from pipelines.classifier.stats import BATCH_SIZE_BOUNDS, Histogram
from pipelines.fingerprint import pdq
from tests.unit.test_classifier import RULES, Clock, CountingScorer, sample


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_histogram_buckets_are_upper_bounds() -> None:
    h = Histogram((1, 2, 4))
    for v in (1, 1.5, 2, 3, 9):
        h.observe(v)
    assert h.figures() == {"bounds": [1, 2, 4], "counts": [1, 2, 1, 1], "sum": 16.5, "count": 5}


def test_a_classifier_reports_batches_latency_hits_and_max_scores() -> None:
    clock = Clock()
    clf = ClassifierPipeline("tc", CountingScorer(delay_s=0.02), RULES, BudgetSettings(every_k=2, dense_every=2,
                                                                                       new_stream_s=0),
                             BatchSettings(batch_size=8, batch_wait_s=0.05), clock)
    for i in range(6):  # every 2nd of a stream: 0 (its first), 2, 4
        clf.offer(sample("s", float(i), 255 if i < 4 else 40))
    items = []
    while not clf._queue.empty():
        items.append(clf._queue.get_nowait())
    clf.run_batch(items)
    st = clf.stats()
    assert (st["offered"], st["skipped_budget"], st["queued"], st["classified"]) == (6, 3, 3, 3)
    assert st["hit_samples"] == 2 and st["findings"] == 2  # two white samples over testcard's 0.6
    assert st["max_score"] == {"testcard": 1.0, "other": pytest.approx(1 - 40 / 255, abs=1e-4)}
    assert st["batch_size"]["count"] == 1 and st["batch_size"]["counts"][BATCH_SIZE_BOUNDS.index(4)] == 1
    assert st["inference_s"]["count"] == 1 and st["inference_s"]["sum"] >= 0.02
    assert st["run"] and st["model_id"] == CountingScorer.model_id and "service" not in st


def figures(run: str, *, classified: int = 0, hits: int = 0, failed: int = 0, skipped: int = 0, full: int = 0,
            stale: int = 0, batches: Sequence[int] = (), max_score: float = 0.0,
            service: ServiceFigures | None = None) -> ClassifierFigures:
    bs, lat = Histogram(BATCH_SIZE_BOUNDS), Histogram((0.01, 0.1))
    for b in batches:
        bs.observe(b)
        lat.observe(0.05)
    fig: ClassifierFigures = {
        "run": run, "model_id": "sha256:ab", "offered": classified + skipped, "skipped_budget": skipped,
        "queued": classified, "dropped_full": full, "dropped_stale": stale, "classified": classified,
        "hit_samples": hits, "failed": failed, "batches": len(batches), "findings": hits,
        "max_score": {"flagged": max_score}, "batch_size": bs.figures(), "inference_s": lat.figures(),
        "providers": "CPUExecutionProvider"}
    if service is not None:
        fig["service"] = service
    return fig


def worker(**classifiers: ClassifierFigures) -> dict[str, Any]:
    return {"scheduler": {"streams": {}}, "queue": {"dropped_full": 0, "dropped_stale": 0},
            "classifiers": classifiers}


def test_metrics_add_up_workers_and_keep_a_restarted_workers_counts() -> None:
    metrics = Metrics()
    deltas = MetricDeltas(metrics)
    svc_open: ServiceFigures = {"circuit": "open", "circuit_opened": 1, "errors": {"http_503": 5, "circuit_open": 2}}
    svc_ok: ServiceFigures = {"circuit": "closed", "circuit_opened": 0, "errors": {"timeout": 1}}
    deltas.dropped([worker(m=figures("a1", classified=10, hits=2, skipped=30, full=1, batches=[4, 4, 2],
                                     max_score=0.7)),
                    worker(m=figures("b1", classified=5, failed=1, stale=2, batches=[5], max_score=0.2),
                           svc=figures("s1", failed=7, service=svc_open))])
    # worker 0 restarts: its classifier is a new run, counting from 0; worker 1 goes on
    deltas.dropped([worker(m=figures("a2", classified=1, batches=[1], max_score=0.1)),
                    worker(m=figures("b1", classified=6, failed=1, stale=2, batches=[5, 1], max_score=0.2),
                           svc=figures("s1", failed=7, service=svc_open)),
                    worker(svc=figures("s2", failed=1, service=svc_ok))])
    got = samples_of(generate_latest(metrics.registry).decode())

    def v(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert v("monitor_classifier_inferences_total", analysis="m", outcome="below_threshold") == 8 + 1 + 6
    assert v("monitor_classifier_inferences_total", analysis="m", outcome="over_threshold") == 2
    assert v("monitor_classifier_inferences_total", analysis="m", outcome="failed") == 1
    assert v("monitor_classifier_skipped_total", analysis="m") == 30
    assert v("monitor_classifier_dropped_total", analysis="m", reason="queue_full") == 1
    assert v("monitor_classifier_dropped_total", analysis="m", reason="stale") == 2
    assert v("monitor_classifier_batch_size_count", analysis="m") == 3 + 1 + 2
    assert v("monitor_classifier_batch_size_sum", analysis="m") == 10 + 1 + 6
    assert v("monitor_classifier_batch_size_bucket", analysis="m", le="1.0") == 2
    assert v("monitor_classifier_batch_size_bucket", analysis="m", le="4.0") == 5
    assert v("monitor_classifier_batch_size_bucket", analysis="m", le="+Inf") == 6
    assert v("monitor_classifier_inference_seconds_bucket", analysis="m", le="0.1") == 6
    assert v("monitor_classifier_max_score", analysis="m", label="flagged") == 0.7
    assert v("monitor_classifier_circuit", analysis="svc", state="open") == 1  # one adapter per worker
    assert v("monitor_classifier_circuit", analysis="svc", state="closed") == 1
    assert v("monitor_classifier_circuit", analysis="svc", state="half-open") == 0
    assert v("monitor_classifier_circuit_opened_total", analysis="svc") == 1
    assert v("monitor_classifier_service_errors_total", analysis="svc", kind="http_503") == 5
    assert v("monitor_classifier_service_errors_total", analysis="svc", kind="timeout") == 1
    assert v("monitor_classifier_info", analysis="m", model_id="sha256:ab", providers="CPUExecutionProvider") == 1
    assert not any(k[0] == "monitor_classifier_circuit" and ("analysis", "m") in k[1] for k in got)


def test_no_classifier_no_series_and_the_names_are_registered() -> None:
    metrics = Metrics()
    MetricDeltas(metrics).dropped([worker()])
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE monitor_classifier_inferences_total counter" in text
    assert "monitor_classifier_inferences_total{" not in text
    with pytest.raises(ValueError, match="Duplicated"):  # the registry knows the names
        from prometheus_client import Counter

        Counter("monitor_classifier_skipped", "x", registry=metrics.registry)


# -- execution providers ----------------------------------------------------------------------------------------


def test_cuda_is_asked_first_only_when_offered_and_not_turned_off() -> None:
    cuda_cpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cuda_cpu) == cuda_cpu
    assert choose_providers("cpu", cuda_cpu) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_the_provider_choice_is_logged_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = build_testcard_model(tmp_path / "testcard.onnx")
    with caplog.at_level(logging.INFO, logger="pipelines.classifier.onnx_model"):
        scorer = OnnxScorer(OnnxSettings(model, ("testcard", "other"), (64, 64)))
    (line,) = [r.getMessage() for r in caplog.records if "execution providers" in r.getMessage()]
    assert "testcard.onnx" in line and "CPUExecutionProvider" in line and "providers: auto" in line
    assert scorer.figures() == {"providers": ",".join(scorer.providers)}
    clf = ClassifierPipeline("tc", scorer, [LabelRule("testcard", 0.6), LabelRule("other", None)],
                             BudgetSettings(), BatchSettings())
    assert clf.stats()["providers"].endswith("CPUExecutionProvider")


def test_an_unavailable_cuda_is_not_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What onnxruntime is asked for when it offers CUDA (the CUDA provider itself is not run here: no GPU)."""
    import onnxruntime as ort

    asked: list[list[str]] = []
    real = ort.InferenceSession

    def session(path: str, opts: object, providers: list[str]) -> object:
        asked.append(list(providers))
        return real(path, opts, providers=["CPUExecutionProvider"])

    model = build_testcard_model(tmp_path / "testcard.onnx")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    OnnxScorer(OnnxSettings(model, ("testcard", "other"), (64, 64)))
    OnnxScorer(OnnxSettings(model, ("testcard", "other"), (64, 64), providers="cpu"))
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]]


# -- a slow classifier and the hash path ------------------------------------------------------------------------


class SlowScorer:
    """A model that takes `delay_s` a batch (a stand-in for a service answering after 2 s)."""

    model_id = "slow"
    labels = ("testcard", "other")

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]:
        self.calls += 1
        time.sleep(self.delay_s)
        return [np.array([0.0, 1.0], np.float32) for _ in frames]

    def close(self) -> None:
        pass


class TimingSink:
    def __init__(self) -> None:
        self.ready: dict[tuple[str, float], float] = {}
        self.latency: list[float] = []
        self.matched = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def on_state(self, change: object) -> None:
        pass

    def on_sample(self, sample: Any, findings: list[Finding], timing: object) -> None:
        with self.lock:
            self.latency.append(time.perf_counter() - self.ready.pop((sample.stream_id, sample.media_time_s)))
            self.matched += sum(1 for f in findings if f.kind == "match")


def hash_path_latencies(slow_s: float | None, n: int = 60) -> tuple[list[float], int, ClassifierFigures | None]:
    """n samples of 6 streams through the monitor's analysis thread (the hash matcher on a bank holding the picture),
    with or without a classifier that takes `slow_s` a batch; sample ready -> findings at the sink, in s."""
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)
    picture = np.ascontiguousarray(np.repeat(np.repeat(picture[::20, ::20], 20, 0), 20, 1)[:180, :320])
    code, _ = pdq(picture)
    bank = Bank("known", "pdq", np.stack([code]), [Entry("1")])
    pipelines: list[Any] = [make_matcher([bank], MatchingConfig())]
    clf = None
    if slow_s is not None:
        clf = ClassifierPipeline("slow", SlowScorer(slow_s), [LabelRule("testcard", 0.5), LabelRule("other", None)],
                                 BudgetSettings(every_k=1), BatchSettings(batch_size=2, batch_wait_s=0.01,
                                                                          queue_size=4, max_sample_age_s=1.0))
        clf.start(lambda *a: None)
        pipelines.append(clf)
    sink = TimingSink()
    q: SampleQueue[QueuedSample] = SampleQueue(64, 5.0)
    analysis = Analysis(q, pipelines, sink, 0)
    analysis.start()
    for i in range(n):
        sid, t = f"s{i % 6}", float(i)
        with sink.lock:
            sink.ready[(sid, t)] = time.perf_counter()
        q.put(QueuedSample(_sample(sid, t, picture), 0.0))
        time.sleep(0.02)
    q.close()
    analysis.join(30)
    stats = None
    if clf is not None:
        stats = clf.stats()
        clf.stop(0.1)
    return sink.latency, sink.matched, stats


def _sample(sid: str, t: float, rgb: np.ndarray[Any, np.dtype[np.uint8]]) -> Any:
    from pipelines.base import Sample

    return Sample(sid, t, time.time(), rgb)


def test_a_classifier_taking_two_seconds_a_batch_leaves_hash_findings_on_time() -> None:
    base, base_matched, _ = hash_path_latencies(None)
    slow, slow_matched, st = hash_path_latencies(2.0)
    assert base_matched == slow_matched == 60  # every sample matched the bank, with or without the classifier
    p95_base, p95_slow = float(np.percentile(base, 95)), float(np.percentile(slow, 95))
    # The classifier's 2 s per batch never reaches the hash path: its findings come within the same few ms.
    assert p95_slow < max(0.25, 3 * p95_base), (p95_base, p95_slow)
    # every sample was offered to it, and it fell behind (stuck in its first batch): the oldest dropped, counted
    assert st is not None and st["queued"] == 60 and st["dropped_full"] >= 60 - 4 - 2 - 1, st


def test_a_worker_reports_its_stats_however_often_commands_arrive() -> None:
    """monitor/runtime/worker_process.py: commands every second (boosts, streams added) do not starve the report."""
    from monitor.runtime.worker_process import StatsTimer

    clock = Clock(0.0)
    timer = StatsTimer(5.0, clock)
    reports = []
    for second in range(1, 13):  # a command each second, every wait cut short
        assert timer.wait_s() <= 5.0
        clock.t = float(second)
        if timer.due():
            reports.append(second)
    assert reports == [5, 10]
    clock.t = 20.0
    assert timer.wait_s() == 0.0 and timer.due() and timer.wait_s() == 5.0
