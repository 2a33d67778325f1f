"""The worker process's side of the sharded supervisor (monitor/runtime/workers.py).

`worker_main` runs in each spawned worker: it builds its own pipelines and banks, runs a `LocalSupervisor`
(one thread per stream), obeys the parent's `WorkerCommand`s and sends every result back as a `WorkerEvent`
(monitor/runtime/messages.py). Its events go over a pipe of its own, written by one thread (`EventSender`): a
process that dies mid-message damages only its own pipe, and holds no lock another process waits for.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import multiprocessing.queues
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import TypeAdapter

from monitor.config.models import (
    AnalysisConfig,
    BankConfig,
    IngestConfig,
    KnownContentAnalysisConfig,
    MatchingConfig,
    SamplingConfig,
    StreamConfig,
)
from monitor.ingest import crashguard
from monitor.ingest.crashguard import CrashTable
from monitor.runtime.analyses import make_analyses
from monitor.runtime.bank_reload import ReloadResult, load_banks
from monitor.runtime.messages import (
    AddStream,
    BanksReloaded,
    Boost,
    Classified,
    ReloadBanks,
    RemoveStream,
    Sampled,
    SampleReport,
    SampleTiming,
    StateChange,
    StateChanged,
    StopWorker,
    WorkerCommand,
    WorkerEvent,
    WorkerReady,
    WorkerStatsReport,
    WorkerStopped,
)
from monitor.runtime.supervisor import LocalSupervisor
from pipelines.base import Finding, SampleInfo

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0  # how often a worker sends its sampling counters


class StatsTimer:
    """When the worker's next stats report is due: every `interval_s`, however often commands arrive (a worker
    told to boost or add streams every second still reports)."""

    def __init__(self, interval_s: float = STATS_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.next_at = clock() + interval_s

    def wait_s(self) -> float:
        """How long a wait for the next command may take before the report is due."""
        return max(0.0, self.next_at - self.clock())

    def due(self) -> bool:
        """True once per interval (then the next is an interval away)."""
        now = self.clock()
        if now < self.next_at:
            return False
        self.next_at = now + self.interval_s
        return True


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
    analyses: list[dict[str, Any]] | None = None  # None: the hash matcher alone
    store_images: bool = False


_ANALYSES: TypeAdapter[list[AnalysisConfig]] = TypeAdapter(list[AnalysisConfig])
CommandQueue: TypeAlias = "multiprocessing.queues.Queue[WorkerCommand]"  # the parent's commands to one worker


class EventSender:
    """The child's end of its event pipe. A Connection is not thread-safe, so one thread sends for all."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[WorkerEvent | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="worker-events", daemon=True)
        self.thread.start()

    def put(self, msg: WorkerEvent) -> None:
        self.queue.put(msg)

    def _run(self) -> None:
        while (msg := self.queue.get()) is not None:
            try:
                self.conn.send(msg)  # pickled whole before a byte is written: a bad message leaves the pipe intact
            except OSError:
                os._exit(1)  # the parent is gone (killed): nobody would see what this process finds
            except Exception:
                log.exception("worker: could not send a %s message to the main process", type(msg).__name__)

    def close(self) -> None:
        """Sends what is queued, then closes the pipe."""
        self.queue.put(None)
        self.thread.join()
        self.conn.close()


class QueueSink:
    """The worker's `EngineSink`: every result becomes a `WorkerEvent` for the parent."""

    def __init__(self, events: EventSender, index: int) -> None:
        self.events = events
        self.index = index

    def on_bank_reload(self, result: ReloadResult) -> None:
        """A reload's outcome in this worker, for the main process's log (a failure is seen where one looks)."""
        self.events.put(BanksReloaded(replace(result, worker=self.index)))

    def on_state(self, change: StateChange) -> None:
        # A stream thread reports a state before it opens its input: from then on its FFmpeg calls carry its id.
        if threading.current_thread() is not threading.main_thread():
            crashguard.bind_stream(change.stream_id)
        self.events.put(StateChanged(change))

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        self.events.put(Sampled(sample, findings, timing))

    def on_classified(self, sample: SampleInfo, analysis: str, findings: list[Finding], done_at: float) -> None:
        self.events.put(Classified(sample, analysis, findings, done_at))


def worker_main(index: int, spec: WorkerSpec, commands: CommandQueue, conn: multiprocessing.connection.Connection,
                table: CrashTable, crash_dump: str) -> None:
    """Runs in the child: builds the pipelines, then obeys the parent's commands until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us in order
    crashguard.install(table, Path(crash_dump))
    events = EventSender(conn)
    from monitor.ops.logs import setup_logging

    setup_logging("info", "json" if spec.log_json else "text")
    logging.getLogger("monitor").setLevel(spec.log_level)  # as quiet as the parent's "monitor" loggers
    banks = load_banks([BankConfig.model_validate(d) for d in spec.banks])
    analyses = (_ANALYSES.validate_python(spec.analyses) if spec.analyses is not None
                else [KnownContentAnalysisConfig(kind="known_content")])
    pipelines = make_analyses(analyses, banks, MatchingConfig.model_validate(spec.matching), spec.store_images)
    supervisor = LocalSupervisor(IngestConfig.model_validate(spec.ingest), SamplingConfig.model_validate(spec.sampling),
                                 pipelines, QueueSink(events, index), spec.budget_share)
    events.put(WorkerReady(index))
    stats_timer = StatsTimer()
    while True:
        cmd: WorkerCommand | None
        try:
            cmd = commands.get(timeout=stats_timer.wait_s())
        except queue.Empty:
            cmd = None
        if stats_timer.due():
            events.put(WorkerStatsReport(index, supervisor.stats()[0]))
        match cmd:
            case AddStream(stream):
                supervisor.add_stream(StreamConfig.model_validate(stream))
            case RemoveStream(stream_id):
                supervisor.remove_stream(stream_id)
            case Boost(stream_id, seconds):
                supervisor.boost(stream_id, seconds)
            case ReloadBanks(configs):
                supervisor.reload_banks([BankConfig.model_validate(d) for d in configs])
            case StopWorker():
                supervisor.stop_all()
                events.put(WorkerStopped(index))
                events.close()
                return
            case None:
                pass
