"""One worker thread per stream: read keyframes, sample, run the pipelines, reconnect on failure.

A stream's failure stays inside its thread; the supervisor only hears state changes and findings. The
`LocalSupervisor` here runs them in this process (`workers: 0`, and inside each worker process of
monitor/runtime/workers.py); both implement the `Supervisor` protocol of monitor/runtime/protocol.py.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monitor.common import memory
from monitor.common.backoff import backoff_delay
from monitor.common.urls import redact_url
from monitor.config.models import BankConfig, IngestConfig, SamplingConfig, StreamConfig
from monitor.ingest.coverage import CoveragePolicy
from monitor.ingest.packets import KeyInfo
from monitor.ingest.queues import QueueClosed, SampleQueue
from monitor.ingest.reader import IngestError, KeyframeReader, is_hls_url, is_live_url
from monitor.ingest.sampler import StreamPolicy
from monitor.ingest.scheduler import Scheduler
from monitor.runtime.bank_reload import BankReloader
from monitor.runtime.messages import SampleReport, SampleTiming, StateChange, StreamState, WorkerStats
from monitor.runtime.protocol import EngineSink
from pipelines.base import BatchedPipeline, Finding, Pipeline, Sample, SampleInfo
from pipelines.registry import AnyPipeline

log = logging.getLogger(__name__)


REPLAY_WINDOW_S = 300.0  # an HLS media time this far behind the last sample is a publisher restart, not a replay
DENSE_MIN_INTERVAL_S = 0.25  # new and boosted streams: keyframes up to 4 a second


@dataclass(frozen=True, slots=True)
class QueuedSample:
    """A sample waiting for the analysis threads, with what decoding it cost (benchmarks feed `Analysis` these)."""

    sample: Sample
    decode_s: float


class BoundSampler:
    """The scheduler, seen by one stream's reader (monitor/ingest/reader.py FrameSampler)."""

    def __init__(self, scheduler: Scheduler, stream_id: str) -> None:
        self.scheduler = scheduler
        self.stream_id = stream_id

    def start(self, live: bool) -> None:
        self.scheduler.start(self.stream_id, live)

    def key(self, t: float, size: int, info: KeyInfo, wall: float) -> bool:
        return self.scheduler.key(self.stream_id, t, size, info, wall)

    def packet(self, t: float, size: int, wall: float, reordered: bool) -> float | None:
        return self.scheduler.packet(self.stream_id, t, size, wall, reordered)

    def forward(self, packets: int) -> bool:
        return self.scheduler.forward(self.stream_id, packets)

    def sampled(self, t: float, keyframe: bool, thumb: npt.NDArray[np.float32], wall: float) -> str:
        return self.scheduler.sampled(self.stream_id, t, keyframe, thumb, wall)


class StreamWorker(threading.Thread):
    """Reads one stream and queues its samples; never waits for the analysis (a slow one costs samples)."""

    def __init__(self, stream: StreamConfig, ingest: IngestConfig, scheduler: Scheduler,
                 samples: SampleQueue[QueuedSample], sink: EngineSink) -> None:
        super().__init__(name=f"stream-{stream.id}", daemon=True)
        self.stream = stream
        self.ingest = ingest
        self.scheduler = scheduler
        self.queue = samples
        self.sink = sink
        self.stop_event = threading.Event()
        self.state = StreamState.CONNECTING
        self.samples = 0
        self._rng = random.Random()

    def _set(self, state: StreamState, detail: str, attempt: int, retry_in: float | None = None) -> None:
        self.state = state
        change = StateChange(self.stream.id, state, detail, time.time(), attempt, retry_in)
        level = logging.INFO if state in (StreamState.LIVE, StreamState.ENDED, StreamState.CONNECTING) else (
            logging.WARNING)
        log.log(level, "stream %s: %s%s", self.stream.id, state.value, f" ({detail})" if detail else "",
                extra={"stream_id": self.stream.id})
        self.sink.on_state(change)

    def run(self) -> None:
        attempt = 0
        live = is_live_url(self.stream.url)
        url_shown = redact_url(self.stream.url)
        sampler = BoundSampler(self.scheduler, self.stream.id)
        hls = is_hls_url(self.stream.url)
        last_sampled: float | None = None  # across reconnects: an HLS reopen replays the last segment
        while not self.stop_event.is_set():
            attempt += 1
            self._set(StreamState.CONNECTING, url_shown, attempt)
            reader = KeyframeReader(self.stream.url, self.ingest, self.stop_event, sampler)
            got_frame = False
            try:
                for frame in reader.frames():
                    if hls and last_sampled is not None and 0 <= last_sampled - frame.media_time_s < REPLAY_WINDOW_S:
                        continue  # already analysed before the reopen (a real restart starts far back at 0)
                    if not got_frame:  # live again only with new pictures, not the replayed last segment
                        got_frame = True
                        attempt = 0  # a working connection resets the backoff
                        self._set(StreamState.LIVE, "", attempt)
                    last_sampled = frame.media_time_s
                    self.samples += 1
                    sample = Sample(self.stream.id, frame.media_time_s, frame.received_at, frame.rgb)
                    with contextlib.suppress(QueueClosed):
                        self.queue.put(QueuedSample(sample, frame.decoded_at - frame.received_at))
                if self.stop_event.is_set():
                    break
                if not live:
                    self._set(StreamState.ENDED, "end of file", attempt)
                    return
                # FFmpeg's HLS reader ends quietly when the playlist stops updating: that is a stall, not an end.
                stalled = hls
                detail = "playlist stopped updating (no new segment)" if hls else "stream ended (publisher stopped?)"
            except IngestError as exc:
                if not exc.retryable:
                    self._set(StreamState.FAILED, exc.reason, attempt)
                    return
                detail, stalled = exc.reason, exc.stalled
            if self.stop_event.is_set():
                break
            delay = backoff_delay(max(attempt, 1), self.ingest.backoff_initial_s, self.ingest.backoff_max_s,
                                  self._rng)
            state = StreamState.STALLED if stalled else StreamState.RECONNECTING
            self._set(state, f"{detail}; retry in {delay:.1f} s", attempt, delay)
            self.stop_event.wait(delay)
        self._set(StreamState.ENDED, "removed", attempt)


class Analysis(threading.Thread):
    """Runs the pipelines on queued samples, oldest first; samples older than the queue's limit are dropped."""

    def __init__(self, samples: SampleQueue[QueuedSample], pipelines: Sequence[AnyPipeline], sink: EngineSink,
                 index: int) -> None:
        super().__init__(name=f"analysis-{index}", daemon=True)
        self.queue = samples
        self.batched = tuple(p for p in pipelines if isinstance(p, BatchedPipeline))
        self.pipelines: tuple[Pipeline, ...] = tuple(p for p in pipelines if not isinstance(p, BatchedPipeline))
        self.sink = sink

    def run(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                continue
            except QueueClosed:
                return
            self.process(item.sample, item.decode_s)

    def process(self, sample: Sample, decode_s: float) -> None:
        findings: list[Finding] = []
        stages: list[tuple[str, float]] = []
        for batched in self.batched:  # a queue put each: classifiers never delay the hash path
            try:
                batched.offer(sample)
            except Exception:
                log.exception("stream %s: offering a sample to %s failed", sample.stream_id, batched.name)
        for pipeline in self.pipelines:
            t0 = time.perf_counter()
            try:
                findings += pipeline.process(sample)
            except Exception:  # an analysis bug must not stop the stream being watched
                log.exception("stream %s: pipeline %s failed on a sample", sample.stream_id, pipeline.name)
            stages.append((pipeline.name, time.perf_counter() - t0))
        report = SampleReport(sample.stream_id, sample.media_time_s, sample.received_at)
        self.sink.on_sample(report, findings, SampleTiming(decode_s, tuple(stages), time.time()))


def _no_classified_sink(sample: SampleInfo, analysis: str, findings: list[Finding], done_at: float) -> None:
    if findings:
        log.warning("stream %s: %d %s findings dropped (the sink takes no classifications)", sample.stream_id,
                    len(findings), analysis)


class LocalSupervisor:
    """Starts and stops stream worker threads in this process; streams can be added and removed while running."""

    quarantined_total = 0  # nothing is quarantined without worker processes to crash

    def __init__(self, ingest: IngestConfig, sampling: SamplingConfig, pipelines: Sequence[AnyPipeline],
                 sink: EngineSink, budget_share: float = 1.0) -> None:
        self.ingest = ingest
        self.sampling = sampling
        self.pipelines = tuple(pipelines)
        self.sink = sink
        self.batched = [p for p in self.pipelines if isinstance(p, BatchedPipeline)]
        on_classified = getattr(sink, "on_classified", None)
        for b in self.batched:
            b.start(on_classified if on_classified is not None else _no_classified_sink)
        self.bank_reloader = BankReloader(self.pipelines, getattr(sink, "on_bank_reload", None))
        self.workers: dict[str, StreamWorker] = {}
        self._stopping: list[StreamWorker] = []  # removed streams whose threads may still be reading
        self.urls: dict[str, str] = {}
        budget = sampling.budget_per_s * budget_share if sampling.budget_per_s else None
        self.scheduler = Scheduler(budget, warmup_s=sampling.warmup_s, warmup_boost=sampling.warmup_boost,
                                   boost_factor=sampling.boost_factor,
                                   dense_min_interval_s=min(sampling.min_interval_s, DENSE_MIN_INTERVAL_S),
                                   forward_budget_per_s=sampling.forward_budget_per_s)
        self.queue: SampleQueue[QueuedSample] = SampleQueue(sampling.queue_size, sampling.max_sample_age_s)
        self.analysis = [Analysis(self.queue, self.pipelines, sink, i) for i in range(sampling.analysis_threads)]
        for a in self.analysis:
            a.start()
        # Reader threads each inside FFmpeg: arenas bounded before the first starts, free memory given back
        # (monitor/common/memory.py: about 1.5 MB a 720p reader).
        memory.cap_arenas()
        self._trimmer = memory.Trimmer()
        self._trimmer.start()

    def _policy(self, stream: StreamConfig) -> StreamPolicy:
        s = self.sampling
        return StreamPolicy(min_interval_s=s.min_interval_s, jitter_s=min(s.jitter_s, s.min_interval_s),
                            priority=stream.priority)

    def _coverage(self) -> CoveragePolicy | None:
        s = self.sampling
        if s.mode == "keyframes":
            return None
        return CoveragePolicy(max_interval_s=s.max_interval_s, jitter_s=s.jitter_s,
                              audit_mean_s=s.audit_interval_s, change_ratio=s.change_ratio,
                              escalation_s=s.escalation_s, escalated_interval_s=s.escalated_interval_s,
                              wall_max_interval_s=2 * s.max_interval_s)

    def add_stream(self, stream: StreamConfig) -> None:
        old = self.workers.get(stream.id)
        if old is not None and old.is_alive():
            raise ValueError(f"stream {stream.id!r} is already monitored")
        self.scheduler.remove_stream(stream.id)  # a stream that ended and is added again starts afresh
        self.scheduler.add_stream(stream.id, self._policy(stream), self._coverage())
        worker = StreamWorker(stream, self.ingest, self.scheduler, self.queue, self.sink)
        self.workers[stream.id] = worker
        self.urls[stream.id] = redact_url(stream.url)
        worker.start()

    def remove_stream(self, stream_id: str) -> None:
        worker = self.workers.pop(stream_id, None)
        if worker is not None:
            worker.stop_event.set()
            # Joined by stop_all: a reader thread still inside FFmpeg when the interpreter exits crashes it.
            self._stopping = [w for w in self._stopping if w.is_alive()] + [worker]
        self.scheduler.remove_stream(stream_id)
        for b in self.batched:
            b.forget(stream_id)

    def boost(self, stream_id: str, seconds: float) -> None:
        """A recent near-match: sample this stream densely for a while."""
        with contextlib.suppress(KeyError):
            self.scheduler.boost(stream_id, seconds)
        for b in self.batched:  # a near match on the hash path: the classifiers look closer too
            b.boost(stream_id, seconds)

    def stats(self) -> list[WorkerStats]:
        """Sampling counters (one entry: this process), the same shape as the sharded supervisor's."""
        return [{"scheduler": self.scheduler.stats(), "queue": self.queue.stats(),
                 "classifiers": {b.name: b.stats() for b in self.batched}}]

    def has_stream(self, stream_id: str) -> bool:
        """Added and not removed (its thread may have ended: see dead_streams)."""
        return stream_id in self.workers

    def stream_ids(self) -> list[str]:
        return list(self.workers)

    def dead_streams(self) -> list[str]:
        """Streams whose worker thread ended (its last state says whether that was expected)."""
        return [sid for sid, w in self.workers.items() if not w.is_alive()]

    def start(self) -> None:
        """Threads start with each stream; nothing to do (the sharded supervisor starts processes here)."""

    def reload_banks(self, banks: Sequence[BankConfig]) -> None:
        """Build the new banks in the background, then swap them in whole (samples never wait for a load); one
        reload at a time, the newest wins, each result reported to the sink (monitor/runtime/bank_reload.py)."""
        self.bank_reloader.request(banks)

    def stop_all(self, timeout_s: float = 10.0) -> None:
        for w in self.workers.values():
            w.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for w in [*self.workers.values(), *self._stopping]:
            w.join(max(0.0, deadline - time.monotonic()))
        self.queue.close()  # the analysis threads finish what is queued, then end
        for a in self.analysis:
            a.join(max(0.0, deadline - time.monotonic()))
        for b in self.batched:  # classifies what it holds, then ends
            b.stop()
        self._trimmer.stop()
