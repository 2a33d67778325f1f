"""Classifier pipelines: a model (ONNX Runtime) or a service scores samples; scores over a label's threshold are
Findings of kind "classification".

A classifier never runs on the hash path. The analysis thread `offer`s it a sample, which costs a budget check and
a queue put; the classifier's own thread takes samples of all the worker's streams in batches (up to
`batch_size`, or what came within `batch_wait_s` of the first), scores them and hands every classified sample to
the sink (hits and misses: incidents need k of n). When it falls behind, the oldest waiting sample is dropped and
counted, as is one that waited longer than `max_sample_age_s`.

Its sampling budget is its own: every `every_k`-th sample of a stream, every `dense_every`-th for the first
`new_stream_s` of a stream and for `near_match_s` after a near match (a score of `near_fraction` of a label's
threshold, or a boost from the hash path). Time comes from an injected clock. The classifier's thread runs at a
lower CPU priority (niceness +10) so that on a busy machine the hash path goes first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from pipelines.base import ClassifiedSink, Finding, Sample, SampleInfo
from pipelines.fingerprint import pdq
from pipelines.hamming import code_to_hex

log = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]
Scores = npt.NDArray[np.float32]


class ModelError(ValueError):
    """A classifier that cannot be used as configured; `field` names the config field at fault."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True, slots=True)
class LabelRule:
    name: str
    threshold: float | None  # None: scored, never a finding
    severity: str = "high"


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    every_k: int = 4
    dense_every: int = 1
    new_stream_s: float = 10.0
    near_match_s: float = 30.0
    near_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class BatchSettings:
    batch_size: int = 8
    batch_wait_s: float = 0.05
    queue_size: int = 64
    max_sample_age_s: float = 5.0


class Scorer(Protocol):
    """Scores frames: one row of len(labels) scores (0-1) per frame, or None for a frame it could not score."""

    model_id: str
    labels: tuple[str, ...]

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]: ...

    def close(self) -> None: ...


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the budget and the batcher (pure: time is passed in) -------------------------------------------------------


@dataclass(slots=True)
class _StreamBudget:
    first_at: float
    dense_until: float
    since: int  # samples offered since the last one taken


class SampleBudget:
    """Which samples of each stream the classifier takes."""

    def __init__(self, settings: BudgetSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._streams: dict[str, _StreamBudget] = {}
        self._lock = threading.Lock()

    def interval(self, stream_id: str) -> int:
        """Every how many samples this stream is classified now."""
        now = self.clock()
        with self._lock:
            st = self._streams.get(stream_id)
        if st is None or now - st.first_at < self.settings.new_stream_s or now < st.dense_until:
            return self.settings.dense_every
        return self.settings.every_k

    def want(self, stream_id: str) -> bool:
        now = self.clock()
        k = self.interval(stream_id)
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                self._streams[stream_id] = _StreamBudget(now, now, 0)
                return True  # a new stream's first sample
            st.since += 1
            if st.since >= k:
                st.since = 0
                return True
            return False

    def boost(self, stream_id: str, seconds: float) -> None:
        now = self.clock()
        with self._lock:
            st = self._streams.setdefault(stream_id, _StreamBudget(now, now, 0))
            st.dense_until = max(st.dense_until, now + seconds)

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)


T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items into batches of up to `max_batch`, or what came within `max_wait_s` of the first."""

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


# -- the pipeline -------------------------------------------------------------------------------------------


@dataclass
class ClassifierStats:
    offered: int = 0
    skipped_budget: int = 0  # not taken: the stream's every-k budget
    queued: int = 0
    dropped_full: int = 0  # the classifier fell behind: the oldest waiting sample was dropped
    dropped_stale: int = 0  # waited longer than max_sample_age_s
    classified: int = 0
    failed: int = 0  # the scorer could not score it (a service error, an open circuit)
    batches: int = 0
    findings: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True, slots=True)
class _Waiting:
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
        self._queue: queue.Queue[_Waiting] = queue.Queue(batch.queue_size)
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
        item = _Waiting(sample, self.clock())
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

    def stats(self) -> dict[str, int]:
        with self._lock:
            return self.counts.as_dict()

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
        batcher: Batcher[_Waiting] = Batcher(self.batch.batch_size, self.batch.batch_wait_s)
        while not self._stop.is_set():
            wait = batcher.wait_s(self.clock())
            ready: list[_Waiting] | None = None
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

    def run_batch(self, items: Sequence[_Waiting]) -> None:
        now = self.clock()
        fresh = [w for w in items if now - w.queued_at <= self.batch.max_sample_age_s]
        with self._lock:
            self.counts.dropped_stale += len(items) - len(fresh)
        if not fresh:
            return
        scores = self.scorer.score([w.sample.rgb for w in fresh])
        with self._lock:
            self.counts.batches += 1
        for w, row in zip(fresh, scores, strict=True):
            if row is None:
                with self._lock:
                    self.counts.failed += 1
                continue
            findings = self.findings(w.sample, row)
            with self._lock:
                self.counts.classified += 1
                self.counts.findings += len(findings)
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


# -- ONNX Runtime ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnnxSettings:
    model: Path
    labels: tuple[str, ...]
    input_size: tuple[int, int]  # width, height
    colour_order: str = "rgb"
    layout: str = "nchw"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: str = "probabilities"  # or logits_softmax, logits_sigmoid
    providers: str = "auto"
    threads: int = 1
    max_batch: int = 8


def _dim(d: object) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class OnnxScorer:
    """An ONNX model with one image input and one (N, labels) output. Raises ModelError naming the field."""

    def __init__(self, s: OnnxSettings) -> None:
        import onnxruntime as ort

        if not s.model.is_file():
            raise ModelError("model", f"no such file: {s.model}")
        self.settings = s
        self.model_id = "sha256:" + file_sha256(s.model)
        self.labels = s.labels
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = s.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if s.providers == "auto" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(s.model), opts, providers=providers)
        except Exception as exc:
            raise ModelError("model", f"not a usable ONNX model ({type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:200]})") from None
        self.providers = tuple(self.session.get_providers())
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError("model", f"needs one image input, the model has {len(inputs)}")
        if not outputs:
            raise ModelError("model", "has no output")
        inp = inputs[0]
        self.input_name = str(inp.name)
        if inp.type != "tensor(float)":
            raise ModelError("model", f"input {inp.name!r} is {inp.type}, expected tensor(float)")
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelError("input_size", f"the model's input {inp.name!r} has shape {shape}, not an image batch")
        n, a, b, c = (_dim(x) for x in shape)
        channels, h, w = (a, b, c) if s.layout == "nchw" else (c, a, b)
        if channels is not None and channels != 3:
            raise ModelError("layout", f"the model's input {shape} has {channels} channels where {s.layout} "
                                       "puts them; expected 3")
        want_w, want_h = s.input_size
        if (w is not None and w != want_w) or (h is not None and h != want_h):
            raise ModelError("input_size", f"[{want_w}, {want_h}] does not fit the model's input {shape} "
                                           f"({s.layout}: {w or '?'} wide, {h or '?'} high)")
        self.fixed_batch = n  # a model exported for batch 1 runs batches one by one
        probe = np.zeros((1, 3, want_h, want_w) if s.layout == "nchw" else (1, want_h, want_w, 3), np.float32)
        try:
            out = self.session.run([outputs[0].name], {self.input_name: probe})[0]
        except Exception as exc:
            raise ModelError("input_size", f"the model does not run on a {list(probe.shape)} input "
                                           f"({' '.join(str(exc).split())[:200]})") from None
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != 1:
            raise ModelError("model", f"output {outputs[0].name!r} has shape {list(out.shape)}; expected "
                                      "(batch, labels)")
        if out.shape[1] != len(s.labels):
            raise ModelError("labels", f"{len(s.labels)} labels configured, the model's output "
                                       f"{outputs[0].name!r} has {out.shape[1]}")
        self.output_name = str(outputs[0].name)
        self._mean = np.asarray(s.mean, np.float32)
        self._std = np.asarray(s.std, np.float32)

    def preprocess(self, frame: Frame) -> npt.NDArray[np.float32]:
        s = self.settings
        img = cv2.resize(np.ascontiguousarray(frame), s.input_size, interpolation=cv2.INTER_AREA)
        if s.colour_order == "bgr":
            img = img[:, :, ::-1]
        x = (img.astype(np.float32) * np.float32(s.scale) - self._mean) / self._std
        return np.ascontiguousarray(x.transpose(2, 0, 1) if s.layout == "nchw" else x)

    def infer(self, batch: npt.NDArray[np.float32]) -> Scores:
        """Raw model output mapped to 0-1 scores, (N, labels)."""
        if self.fixed_batch == 1 and len(batch) > 1:
            return np.concatenate([self.infer(batch[i:i + 1]) for i in range(len(batch))])
        out = np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], np.float32)
        if self.settings.output == "logits_softmax":
            e = np.exp(out - out.max(axis=1, keepdims=True))
            out = np.asarray(e / e.sum(axis=1, keepdims=True), np.float32)
        elif self.settings.output == "logits_sigmoid":
            out = np.asarray(1.0 / (1.0 + np.exp(-out)), np.float32)
        return np.asarray(out, np.float32)

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]:
        if not frames:
            return []
        scores = self.infer(np.stack([self.preprocess(f) for f in frames]))
        return list(scores)

    def close(self) -> None:
        pass
