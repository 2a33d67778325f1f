"""`monitor bench classify`: what a classifier costs, as JSON on stdout (progress on stderr).

1. Inference cost per sample of a MobileNet-v1-shaped network (tools/monitor_tools/classifier_models.py: 224x224, about
   4.2 M parameters, random weights: it prices cost, not accuracy) on ONNX Runtime here, single (batch 1) against
   batched (4, 8, 16), with intra-op threads 1 and all cores; the preprocessing (resize and normalise a 512x288
   sample) is priced apart.
2. The hash path with and without the classifier, in one run: N synthetic streams offer samples at a fixed rate
   to the monitor's own analysis thread (KnownContentMatcher with the default probes, a 10,000-entry bank), once
   alone and once with the classifier on every 4th sample on its own thread; the time from a sample being ready
   to its findings reaching the sink, p50/p95, and what the classifier dropped. This is the in-process hash
   path. `--slow-s S` adds a third half beside a classifier made slow on purpose (S seconds a batch).
3. With `--live N`: the same A/B on live streams: nginx-rtmp, N `-c copy` publishers of a clip that shows a known
   image 2 s in every 10 s, `monitor run` (worker processes) and Mosquitto, once without and once with the
   classifier at every 4th sample; keyframe packet read to the alert's arrival at a subscriber, p50/p95.
4. With `--clean-minutes N` (on its own): N minutes of natural pictures on one live stream through the
   demonstration classifier at its defaults: samples classified, the highest score per label, incidents (none?).
The live parts are in tools/monitor_tools/bench/classify_live.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base import Finding, Sample, SampleInfo
from pipelines.classifier import Frame, Scores


def log_progress(msg: str) -> None:
    print(f"[bench classify] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 2)


def inference_cost(model: Path, quick: bool) -> dict[str, Any]:
    from pipelines.classifier import OnnxScorer, OnnxSettings

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (288, 512, 3), dtype=np.uint8) for _ in range(16)]
    labels = tuple(f"c{i}" for i in range(1000))
    out: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    for threads in sorted({1, cores}):
        scorer = OnnxScorer(OnnxSettings(model, labels, (224, 224), output="logits_softmax", threads=threads,
                                         max_batch=16))
        x = np.stack([scorer.preprocess(f) for f in frames])
        t0 = time.perf_counter()
        reps = 20 if quick else 100
        for i in range(reps):
            scorer.preprocess(frames[i % 16])
        pre = (time.perf_counter() - t0) / reps
        row: dict[str, Any] = {"providers": list(scorer.providers), "preprocess_ms_per_sample": ms(pre)}
        for b in (1, 4, 8, 16):
            scorer.infer(x[:b])  # warm
            n = max(2, (16 if quick else 64) // b)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                scorer.infer(x[:b])
                times.append((time.perf_counter() - t0) / b)
            row[f"batch_{b}_ms_per_sample"] = ms(float(np.median(times)))
        single, best = row["batch_1_ms_per_sample"], min(row[f"batch_{b}_ms_per_sample"] for b in (4, 8, 16))
        row["batched_speedup"] = round(single / best, 2) if best else None
        out[f"threads_{threads}"] = row
        log_progress(f"threads {threads}: single {single} ms/sample, best batched {best} ms/sample")
    return out


class _Sink:
    def __init__(self) -> None:
        self.lat: list[float] = []
        self.classified = 0
        self.lock = threading.Lock()
        self.ready: dict[tuple[str, float], float] = {}

    def on_state(self, change: object) -> None:
        pass

    def on_sample(self, sample: Any, findings: list[Finding], timing: Any) -> None:
        t = time.perf_counter()
        with self.lock:
            start = self.ready.pop((sample.stream_id, sample.media_time_s), None)
            if start is not None:
                self.lat.append(t - start)

    def on_classified(self, sample: SampleInfo, analysis: str, findings: list[Finding], done_at: float) -> None:
        with self.lock:
            self.classified += 1


class SleepingScorer:
    """A classifier made slow on purpose: every call takes `delay_s` (a stand-in for a service's late answers)."""

    model_id: str = "sleeping"
    labels: tuple[str, ...] = ("slow",)

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]:
        time.sleep(self.delay_s)
        return [np.zeros(1, np.float32) for _ in frames]

    def close(self) -> None:
        pass


def hash_path_ab(model: Path, streams: int, rate_per_stream: float, seconds: float,
                 slow_s: float | None = None) -> dict[str, Any]:
    """The in-process A/B (the module's docstring, 2.); with `slow_s`, a third half beside a classifier that takes
    `slow_s` a batch."""
    from monitor.config.models import MatchingConfig
    from monitor.ingest.queues import SampleQueue
    from monitor.runtime.analyses import make_matcher
    from monitor.runtime.supervisor import Analysis, QueuedSample
    from monitor_tools.classifier_models import colour_bar_card
    from pipelines.banks import Bank, Entry
    from pipelines.classifier import (
        BatchSettings,
        BudgetSettings,
        ClassifierPipeline,
        LabelRule,
        OnnxScorer,
        OnnxSettings,
    )

    rng = np.random.default_rng(1)
    n = 10_000
    bank = Bank("bench", "pdq", rng.integers(0, 256, (n, 32), dtype=np.uint8),
                [Entry(str(i + 1)) for i in range(n)])
    matcher = make_matcher([bank], MatchingConfig())
    base = colour_bar_card(512, 288)
    frames = [np.clip(base.astype(np.int16) + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
              for _ in range(8)]
    for f in frames * 3:  # warm: first lookups and allocations are not the steady state
        matcher.process(Sample("warm", 0.0, 0.0, f))
    out: dict[str, Any] = {"streams": streams, "samples_per_s_per_stream": rate_per_stream, "seconds": seconds}
    halves = [("without_classifier", False), ("with_classifier_every_4th", True)]
    if slow_s is not None:
        halves.append((f"with_classifier_taking_{slow_s:g}_s", True))
    for label, with_classifier in halves:
        sink = _Sink()
        pipelines: list[Any] = [matcher]
        clf = None
        if with_classifier and label.startswith("with_classifier_taking"):
            assert slow_s is not None
            clf = ClassifierPipeline("slow", SleepingScorer(slow_s), [LabelRule("slow", None)],
                                     BudgetSettings(every_k=4, dense_every=4),
                                     BatchSettings(batch_size=8, batch_wait_s=0.05, queue_size=64))
            clf.start(sink.on_classified)
            pipelines.append(clf)
        elif with_classifier:
            scorer = OnnxScorer(OnnxSettings(model, tuple(f"c{i}" for i in range(1000)), (224, 224),
                                             output="logits_softmax", threads=1, max_batch=8))
            clf = ClassifierPipeline("bench", scorer, [LabelRule(lbl, None) for lbl in scorer.labels],
                                     BudgetSettings(every_k=4, dense_every=4),
                                     BatchSettings(batch_size=8, batch_wait_s=0.05, queue_size=64))
            clf.start(sink.on_classified)
            pipelines.append(clf)
        q: SampleQueue[QueuedSample] = SampleQueue(64, 2.0)
        analysis = Analysis(q, pipelines, sink, 0)
        analysis.start()
        interval = 1.0 / (streams * rate_per_stream)
        t_end = time.perf_counter() + seconds
        i = 0
        next_at = time.perf_counter()
        while time.perf_counter() < t_end:
            now = time.perf_counter()
            if now < next_at:
                time.sleep(next_at - now)
            sid, mt = f"s{i % streams}", float(i // streams)
            with sink.lock:
                sink.ready[(sid, mt)] = time.perf_counter()
            q.put(QueuedSample(Sample(sid, mt, time.time(), frames[i % len(frames)]), 0.0))
            i += 1
            next_at += interval
        q.close()
        analysis.join(30)
        row: dict[str, Any] = {"offered": i, "analysed": len(sink.lat), "dropped_hash_queue": i - len(sink.lat),
                               "p50_ms": ms(pct(sink.lat, 50)), "p95_ms": ms(pct(sink.lat, 95))}
        if clf is not None:
            clf.stop()
            row["classifier"] = clf.stats()
        out[label] = row
        log_progress(f"{label}: hash path p95 {row['p95_ms']} ms over {len(sink.lat)} samples")
    a, b = out["without_classifier"]["p95_ms"], out["with_classifier_every_4th"]["p95_ms"]
    out["p95_change_pct"] = round((b - a) / a * 100, 1) if a and b is not None else None
    if slow_s is not None:
        c = out[f"with_classifier_taking_{slow_s:g}_s"]["p95_ms"]
        out["slow_p95_change_pct"] = round((c - a) / a * 100, 1) if a and c is not None else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="monitor bench classify", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions, 10 streams for 10 s")
    p.add_argument("--streams", type=int, default=None, help="streams of the hash-path A/B (default 50)")
    p.add_argument("--seconds", type=float, default=None, help="length of each half of the A/B (default 30)")
    p.add_argument("--rate", type=float, default=0.5, help="samples a second per stream in the A/B")
    p.add_argument("--skip-ab", action="store_true", help="inference cost only")
    p.add_argument("--slow-s", type=float, default=None, metavar="S",
                   help="the A/B gets a third half: beside a classifier that takes S seconds a batch")
    p.add_argument("--live", type=int, default=0, metavar="N",
                   help="also the live A/B: N streams through nginx-rtmp, monitor run and Mosquitto")
    p.add_argument("--live-seconds", type=float, default=60.0)
    p.add_argument("--live-reverse", action="store_true", help="the live half with the classifier first")
    p.add_argument("--clean-minutes", type=float, default=None, metavar="N",
                   help="only this: N minutes of natural pictures through the demonstration classifier at its "
                        "defaults; samples classified, max score per label, incidents")
    args = p.parse_args(argv)
    if args.slow_s is not None and args.slow_s <= 0:
        p.error(f"--slow-s: {args.slow_s:g} is not a positive number of seconds")
    from monitor_tools.bench.classify_live import clean_run, live_ab
    from monitor_tools.classifier_models import build_mobilenet_like

    if args.clean_minutes is not None:
        if args.clean_minutes <= 0:
            p.error(f"--clean-minutes: {args.clean_minutes:g} is not a positive number of minutes")
        with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
            clean = clean_run(Path(tmp), args.clean_minutes)
        print(json.dumps({"machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
                          "clean": clean}, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        model, params = build_mobilenet_like(Path(tmp) / "mobilenet_like.onnx")
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
            "model": {"shape": "MobileNet v1 (width 1.0), random weights", "input": [1, 3, 224, 224],
                      "parameters": params, "file_mb": round(model.stat().st_size / 2**20, 1)},
        }
        log_progress(f"model: {params} parameters")
        report["inference"] = inference_cost(model, args.quick)
        if not args.skip_ab:
            report["hash_path"] = hash_path_ab(model, args.streams or (10 if args.quick else 50), args.rate,
                                               args.seconds or (10.0 if args.quick else 30.0), args.slow_s)
        if args.live:
            report["live"] = live_ab(model, Path(tmp), args.live, args.live_seconds, args.live_reverse)
        report["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
