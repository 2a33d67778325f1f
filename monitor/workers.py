"""Streams sharded across worker processes, one per core by default; decoding in threads inside each.

Each worker process runs the ordinary `Supervisor` (one thread per stream) with its own copy of the pipelines
and banks, so fingerprinting and matching happen next to the decoder and only small results cross processes:
state changes and (sample report, findings, timing) tuples. Incidents, MQTT and evidence stay in the main
process. A worker that dies (an FFmpeg crash takes its process down) is restarted with its streams.
Processes are spawned, not forked: the parent runs an event loop and client threads that must not be cloned.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from typing import Any

from monitor.config import BankConfig, IngestConfig, MatchingConfig, SamplingConfig, StreamConfig
from monitor.supervisor import (
    EngineSink,
    SampleReport,
    SampleTiming,
    StateChange,
    Supervisor,
    load_banks,
    make_matcher,
)
from monitor.urls import redact_url
from pipelines.base import Finding

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, as plain picklable data."""

    ingest: dict[str, Any]
    sampling: dict[str, Any]
    banks: list[dict[str, Any]]
    matching: dict[str, Any]
    log_level: int
    log_json: bool
    budget_share: float  # each worker holds its part of the global sample budget


class _QueueSink:
    def __init__(self, events: Any) -> None:
        self.events = events

    def on_state(self, change: StateChange) -> None:
        self.events.put(("state", change))

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        self.events.put(("sample", sample, findings, timing))


def _worker_main(index: int, spec: WorkerSpec, commands: Any, events: Any) -> None:
    """Runs in the child: builds the pipelines, then obeys add/remove/stop until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us in order
    from monitor.cli import setup_logging

    setup_logging("info", "json" if spec.log_json else "text")
    logging.getLogger("monitor").setLevel(spec.log_level)  # as quiet as the parent's "monitor" loggers
    banks = load_banks([BankConfig.model_validate(d) for d in spec.banks])
    supervisor = Supervisor(IngestConfig.model_validate(spec.ingest), SamplingConfig.model_validate(spec.sampling),
                            [make_matcher(banks, MatchingConfig.model_validate(spec.matching))], _QueueSink(events),
                            spec.budget_share)
    events.put(("ready", index))
    while True:
        try:
            cmd = commands.get(timeout=STATS_INTERVAL_S)
        except queue.Empty:
            events.put(("stats", index, supervisor.stats()[0]))
            continue
        if cmd[0] == "add":
            supervisor.add_stream(StreamConfig.model_validate(cmd[1]))
        elif cmd[0] == "remove":
            supervisor.remove_stream(cmd[1])
        elif cmd[0] == "boost":
            supervisor.boost(cmd[1], cmd[2])
        elif cmd[0] == "banks":
            supervisor.reload_banks([BankConfig.model_validate(d) for d in cmd[1]])
        elif cmd[0] == "stop":
            supervisor.stop_all()
            events.put(("stopped", index))
            return


class ShardedSupervisor:
    """The `Supervisor` interface over N worker processes."""

    def __init__(self, n_workers: int, ingest: IngestConfig, sampling: SamplingConfig,
                 banks: Sequence[BankConfig], matching: MatchingConfig, sink: EngineSink,
                 log_json: bool = False) -> None:
        self.n = max(1, n_workers)
        self.spec = WorkerSpec(ingest.model_dump(mode="json"), sampling.model_dump(mode="json"),
                               [b.model_dump(mode="json") for b in banks], matching.model_dump(mode="json"),
                               logging.getLogger("monitor").getEffectiveLevel(), log_json, 1.0 / self.n)
        self.sink = sink
        self.ctx = mp.get_context("spawn")
        self.events: Any = self.ctx.Queue()
        self.procs: list[BaseProcess | None] = [None] * self.n
        self.commands: list[Any] = [None] * self.n
        self.streams: dict[str, StreamConfig] = {}
        self.shard_of: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self.restarts = 0
        self.worker_stats: dict[int, dict[str, Any]] = {}
        self._stopping = False
        self._lock = threading.Lock()
        self._pump = threading.Thread(target=self._pump_events, name="worker-events", daemon=True)

    def start(self) -> None:
        for i in range(self.n):
            self._spawn(i)
        self._pump.start()

    def _spawn(self, i: int) -> None:
        self.commands[i] = self.ctx.Queue()
        proc = self.ctx.Process(target=_worker_main, args=(i, self.spec, self.commands[i], self.events),
                                name=f"monitor-worker-{i}", daemon=True)
        proc.start()
        self.procs[i] = proc

    def _pump_events(self) -> None:
        """Hands worker results to the engine, and restarts a worker process that died."""
        while True:
            try:
                msg = self.events.get(timeout=0.5)
            except queue.Empty:
                if self._stopping and all(p is None or not p.is_alive() for p in self.procs):
                    return  # every worker has stopped and its last messages were handed over
                if not self._stopping:
                    self._watchdog()
                continue
            except (EOFError, OSError):
                return
            if msg[0] == "state":
                self.sink.on_state(msg[1])
            elif msg[0] == "sample":
                self.sink.on_sample(msg[1], msg[2], msg[3])
            elif msg[0] == "stats":
                self.worker_stats[msg[1]] = msg[2]

    def _watchdog(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is None or proc.is_alive() or self._stopping:
                continue
            lost = [sid for sid, shard in self.shard_of.items() if shard == i]
            log.error("worker process %d died (exit code %s); restarting it with its %d streams",
                      i, proc.exitcode, len(lost))
            self.restarts += 1
            self._spawn(i)
            for sid in lost:
                self.commands[i].put(("add", self.streams[sid].model_dump(mode="json")))

    def add_stream(self, stream: StreamConfig) -> None:
        with self._lock:
            if stream.id in self.shard_of:
                raise ValueError(f"stream {stream.id!r} is already monitored")
            counts = [0] * self.n
            for shard in self.shard_of.values():
                counts[shard] += 1
            shard = counts.index(min(counts))  # the least loaded worker
            self.shard_of[stream.id] = shard
            self.streams[stream.id] = stream
            self.urls[stream.id] = redact_url(stream.url)
        self.commands[shard].put(("add", stream.model_dump(mode="json")))

    def remove_stream(self, stream_id: str) -> None:
        with self._lock:
            shard = self.shard_of.pop(stream_id, None)
            self.streams.pop(stream_id, None)
        if shard is not None:
            self.commands[shard].put(("remove", stream_id))

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self.shard_of

    def boost(self, stream_id: str, seconds: float) -> None:
        shard = self.shard_of.get(stream_id)
        if shard is not None:
            self.commands[shard].put(("boost", stream_id, seconds))

    def stats(self) -> list[dict[str, Any]]:
        """The latest counters each worker sent (every few seconds)."""
        return list(self.worker_stats.values())

    def reload_banks(self, banks: Sequence[BankConfig]) -> None:
        data = [b.model_dump(mode="json") for b in banks]
        self.spec = replace(self.spec, banks=data)  # a restarted worker loads these too
        for q in self.commands:
            if q is not None:
                q.put(("banks", data))

    def stream_ids(self) -> list[str]:
        return list(self.shard_of)

    def dead_streams(self) -> list[str]:
        return [sid for sid, shard in self.shard_of.items()
                if (p := self.procs[shard]) is None or not p.is_alive()]

    def stop_all(self, timeout_s: float = 15.0) -> None:
        self._stopping = True
        for q in self.commands:
            if q is not None:
                q.put(("stop",))
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            if proc is not None:
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("worker %s did not stop in time; terminating it", proc.name)
                    proc.terminate()
                    proc.join(2)
        self._pump.join(5)
