"""Streams sharded across worker processes, one per core by default; decoding in threads inside each.

Each worker process runs the ordinary `LocalSupervisor` (one thread per stream) with its own copy of the
pipelines and banks, so fingerprinting and matching happen next to the decoder and only small results cross
processes: the typed messages of monitor/runtime/messages.py (`WorkerEvent` up, `WorkerCommand` down), each side
dispatching on the message's type; the worker's side is monitor/runtime/worker_process.py. Incidents, MQTT and
evidence stay in the main process. Processes are spawned, not forked: the parent runs an event loop and client
threads that must not be cloned. Each worker sends its events over a pipe of its own, written by one thread: a
process that dies mid-message damages only its own pipe, and holds no lock another process waits for.

A worker that dies (an FFmpeg crash takes its process down) is restarted with its streams, except a hostile one:
when a worker dies of a fatal signal, `monitor/ingest/crashguard.py` tells which of its streams was inside FFmpeg (the
faulting thread's, or failing that each one that was decoding) and each of those gets a strike. A stream with
CRASH_STRIKES strikes within CRASH_WINDOW_S is quarantined: not restarted, reported FAILED with a detail that
says so (and in the log and the `monitor_streams_quarantined` counter), while the other streams of that worker
come back as usual. Strikes are kept by stream id, so they survive the restart and a remove and re-add. A
quarantined stream added again (a new publish, discovery, a config reload) within QUARANTINE_COOLDOWN_S of its
quarantine is refused with the same FAILED state; after that it starts afresh.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from pathlib import Path

from monitor.common.urls import redact_url
from monitor.config.models import (
    AnalysisConfig,
    BankConfig,
    IngestConfig,
    MatchingConfig,
    SamplingConfig,
    StreamConfig,
)
from monitor.ingest import crashguard
from monitor.ingest.crashguard import CrashTable, Suspects
from monitor.runtime.messages import (
    AddStream,
    BanksReloaded,
    Boost,
    Classified,
    ReloadBanks,
    RemoveStream,
    Sampled,
    StateChange,
    StateChanged,
    StopWorker,
    StreamState,
    WorkerCommand,
    WorkerEvent,
    WorkerReady,
    WorkerStats,
    WorkerStatsReport,
    WorkerStopped,
)
from monitor.runtime.protocol import EngineSink
from monitor.runtime.worker_process import CommandQueue, WorkerSpec, worker_main

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 0.5  # how often the parent looks for dead workers, however busy the event pipes are
CRASH_STRIKES = 2  # crashes of its worker blamed on one stream ...
CRASH_WINDOW_S = 600.0  # ... within this long quarantine it
QUARANTINE_COOLDOWN_S = 1800.0  # a quarantined stream added again before this is refused
# Signals a process gets from its own fault (a segfault, an FFmpeg assertion's abort()); SIGKILL and SIGTERM come
# from outside (the OOM killer, an operator) and blame nobody.
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)


@dataclass
class Quarantine:
    until: float  # unix time: added again before this, the stream is refused
    detail: str


class ShardedSupervisor:
    """The `Supervisor` protocol (monitor/runtime/protocol.py) over N worker processes."""

    def __init__(self, n_workers: int, ingest: IngestConfig, sampling: SamplingConfig,
                 banks: Sequence[BankConfig], matching: MatchingConfig, sink: EngineSink,
                 log_json: bool = False, quarantine_cooldown_s: float = QUARANTINE_COOLDOWN_S,
                 analyses: Sequence[AnalysisConfig] | None = None, store_images: bool = False) -> None:
        self.n = max(1, n_workers)
        self.spec = WorkerSpec(ingest.model_dump(mode="json"), sampling.model_dump(mode="json"),
                               [b.model_dump(mode="json") for b in banks], matching.model_dump(mode="json"),
                               logging.getLogger("monitor").getEffectiveLevel(), log_json, 1.0 / self.n,
                               None if analyses is None else [a.model_dump(mode="json") for a in analyses],
                               store_images)
        self.sink = sink
        self.quarantine_cooldown_s = quarantine_cooldown_s
        self.ctx = mp.get_context("spawn")
        self.procs: list[BaseProcess | None] = [None] * self.n
        self.commands: list[CommandQueue | None] = [None] * self.n
        self.conns: list[multiprocessing.connection.Connection | None] = [None] * self.n
        self.tables: list[CrashTable | None] = [None] * self.n
        self.streams: dict[str, StreamConfig] = {}
        self.shard_of: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self.restarts = 0
        self.strikes: dict[str, list[float]] = {}  # stream id -> monotonic times of crashes blamed on it
        self.quarantine: dict[str, Quarantine] = {}  # by stream id, kept across remove and re-add
        self.held: set[str] = set()  # quarantined streams still registered (FAILED, not running)
        self.quarantined_total = 0
        self.worker_stats: dict[int, WorkerStats] = {}
        self._stopping = False
        self._lock = threading.Lock()
        self._crash_dir = Path(tempfile.mkdtemp(prefix="monitor-crash-"))
        self._pump = threading.Thread(target=self._pump_events, name="worker-events", daemon=True)

    def start(self) -> None:
        for i in range(self.n):
            self._spawn(i)
        self._pump.start()

    def _dump_path(self, i: int) -> Path:
        return self._crash_dir / f"worker-{i}.txt"

    def _spawn(self, i: int) -> CommandQueue:
        commands: CommandQueue = self.ctx.Queue()
        receiver, sender = self.ctx.Pipe(duplex=False)
        table = CrashTable(self.ctx)
        self._dump_path(i).unlink(missing_ok=True)  # what is there after a crash is that crash's
        proc = self.ctx.Process(target=worker_main, args=(i, self.spec, commands, sender, table,
                                                           str(self._dump_path(i))),
                                name=f"monitor-worker-{i}", daemon=True)
        proc.start()
        sender.close()  # the child holds its own copy: the pipe ends (EOF) when the child does
        self.procs[i], self.commands[i], self.conns[i], self.tables[i] = proc, commands, receiver, table
        return commands

    def _send(self, i: int, cmd: WorkerCommand) -> None:
        commands = self.commands[i]
        if commands is None:
            raise RuntimeError("the sharded supervisor is not started")
        commands.put(cmd)

    def _broadcast(self, cmd: WorkerCommand) -> None:
        for commands in self.commands:
            if commands is not None:
                commands.put(cmd)

    def _handle(self, msg: WorkerEvent) -> None:
        match msg:
            case StateChanged(change):
                self.sink.on_state(change)
            case Sampled(sample, findings, timing):
                self.sink.on_sample(sample, findings, timing)
            case Classified(sample, analysis, findings, done_at):
                on_classified = getattr(self.sink, "on_classified", None)
                if on_classified is not None:
                    on_classified(sample, analysis, findings, done_at)
            case WorkerStatsReport(worker, stats):
                self.worker_stats[worker] = stats
            case BanksReloaded(result):
                report = getattr(self.sink, "on_bank_reload", None)
                if report is not None:
                    report(result)
            case WorkerReady() | WorkerStopped():
                pass  # the pipe's end says more: a worker is watched by its process, not by these

    def _receive(self, i: int, conn: multiprocessing.connection.Connection) -> bool:
        """One message from worker i handed over; False once its pipe has ended (after its last message)."""
        try:
            msg = conn.recv()
        except Exception:  # EOF, or a message cut short by the worker's death
            conn.close()
            if self.conns[i] is conn:
                self.conns[i] = None
            return False
        self._handle(msg)
        return True

    def _pump_events(self) -> None:
        """Hands worker results to the engine, and restarts a worker process that died."""
        next_watch = time.monotonic() + WATCHDOG_INTERVAL_S
        while True:
            conns = {c: i for i, c in enumerate(self.conns) if c is not None}
            if not conns and self._stopping:
                return  # every worker has stopped and its last messages were handed over
            if not conns:
                time.sleep(WATCHDOG_INTERVAL_S)
            for c in multiprocessing.connection.wait(list(conns), timeout=WATCHDOG_INTERVAL_S) if conns else ():
                if isinstance(c, multiprocessing.connection.Connection):
                    self._receive(conns[c], c)
            if not self._stopping and time.monotonic() >= next_watch:
                next_watch = time.monotonic() + WATCHDOG_INTERVAL_S
                self._watchdog()

    def _watchdog(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is None or proc.is_alive() or self._stopping:
                continue
            conn = self.conns[i]
            while conn is not None and self._receive(i, conn):
                pass  # what it said before it died comes first
            self._restart(i, proc)

    def _restart(self, i: int, proc: BaseProcess) -> None:
        code = proc.exitcode
        sig = signal.Signals(-code) if code is not None and code < 0 else None
        how = f"killed by {sig.name}" if sig is not None else f"exit code {code}"
        table = self.tables[i]
        suspects = (crashguard.read_suspects(table, self._dump_path(i))
                    if sig in CRASH_SIGNALS and table is not None else None)
        with self._lock:
            lost = [sid for sid, shard in self.shard_of.items() if shard == i]
            quarantined = self._strike(suspects, lost, how) if suspects is not None else []
            for sid in quarantined:
                del self.shard_of[sid]
                self.held.add(sid)
            restart = [self.streams[sid] for sid in lost if sid not in quarantined]
            self.restarts += 1
            commands = self._spawn(i)
            for stream in restart:
                commands.put(AddStream(stream.model_dump(mode="json")))
        log.error("worker process %d died (%s)%s; restarting it with its %d streams%s", i, how,
                  f"; {suspects.describe()}" if suspects is not None else "", len(restart),
                  f" ({len(quarantined)} quarantined: {', '.join(quarantined)})" if quarantined else "")
        if suspects is not None and suspects.traceback:
            log.error("worker process %d: the faulting thread was at:\n%s", i, suspects.traceback)
        for sid in quarantined:
            q = self.quarantine[sid]
            log.error("stream %s %s", sid, q.detail, extra={"stream_id": sid})
            self.sink.on_state(StateChange(sid, StreamState.FAILED, q.detail, time.time(), 0))

    def _strike(self, suspects: Suspects, lost: list[str], how: str) -> list[str]:
        """Counts the crash against the streams blamed for it; returns those that now are quarantined."""
        now = time.monotonic()
        for sid in [s for s, times in self.strikes.items() if now - times[-1] >= CRASH_WINDOW_S]:
            del self.strikes[sid]  # hook-added streams come and go: keep only recent strikes
        out = []
        for sid in dict.fromkeys(c.stream_id for c in suspects.blamed if c.stream_id in lost):
            times = [t for t in self.strikes.get(sid, []) if now - t < CRASH_WINDOW_S] + [now]
            self.strikes[sid] = times
            if len(times) < CRASH_STRIKES:
                continue
            kind = next(c.kind for c in suspects.blamed if c.stream_id == sid)
            until = time.time() + self.quarantine_cooldown_s
            self.quarantine[sid] = Quarantine(until, (
                f"quarantined: its input crashed the worker process {len(times)} times within "
                f"{CRASH_WINDOW_S / 60:g} min (last: {how} in FFmpeg {kind}); not restarted, added again no "
                f"earlier than {datetime.fromtimestamp(until, UTC).isoformat(timespec='seconds')}"))
            self.quarantined_total += 1
            out.append(sid)
        return out

    def add_stream(self, stream: StreamConfig) -> None:
        with self._lock:
            if stream.id in self.shard_of or stream.id in self.held:
                raise ValueError(f"stream {stream.id!r} is already monitored")
            self.streams[stream.id] = stream
            self.urls[stream.id] = redact_url(stream.url)
            q = self.quarantine.get(stream.id)
            if q is not None and time.time() >= q.until:
                del self.quarantine[stream.id]  # the cool-down is over: a fresh start (recent strikes stay)
                q = None
            if q is None:
                counts = [0] * self.n
                for shard in self.shard_of.values():
                    counts[shard] += 1
                shard = counts.index(min(counts))  # the least loaded worker
                self.shard_of[stream.id] = shard
                self._send(shard, AddStream(stream.model_dump(mode="json")))
                return
            self.held.add(stream.id)
        log.warning("stream %s: not started, still %s", stream.id, q.detail, extra={"stream_id": stream.id})
        self.sink.on_state(StateChange(stream.id, StreamState.FAILED, q.detail, time.time(), 0))

    def remove_stream(self, stream_id: str) -> None:
        with self._lock:
            shard = self.shard_of.pop(stream_id, None)
            self.streams.pop(stream_id, None)
            held = stream_id in self.held
            self.held.discard(stream_id)
        if shard is not None:
            self._send(shard, RemoveStream(stream_id))
        if held:  # no thread of its own to say so
            self.sink.on_state(StateChange(stream_id, StreamState.ENDED, "removed", time.time(), 0))

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self.shard_of or stream_id in self.held

    def boost(self, stream_id: str, seconds: float) -> None:
        shard = self.shard_of.get(stream_id)
        if shard is not None:
            self._send(shard, Boost(stream_id, seconds))

    def stats(self) -> list[WorkerStats]:
        """The latest counters each worker sent (every few seconds)."""
        return list(self.worker_stats.values())

    def reload_banks(self, banks: Sequence[BankConfig]) -> None:
        data = [b.model_dump(mode="json") for b in banks]
        self.spec = replace(self.spec, banks=data)  # a restarted worker loads these too
        self._broadcast(ReloadBanks(data))

    def stream_ids(self) -> list[str]:
        with self._lock:
            return [*self.shard_of, *self.held]

    def dead_streams(self) -> list[str]:
        """Streams whose worker process is gone, and quarantined ones (their last state says FAILED)."""
        with self._lock:
            return [*(sid for sid, shard in self.shard_of.items()
                      if (p := self.procs[shard]) is None or not p.is_alive()), *self.held]

    def stop_all(self, timeout_s: float = 15.0) -> None:
        self._stopping = True
        self._broadcast(StopWorker())
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            if proc is not None:
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("worker %s did not stop in time; terminating it", proc.name)
                    proc.terminate()
                    proc.join(2)
        self._pump.join(5)
        shutil.rmtree(self._crash_dir, ignore_errors=True)
