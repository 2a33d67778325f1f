"""A stream actor: one shard of streams (the ordinary `LocalSupervisor` and its stream threads) on one Ray node.

The class is plain Python; the Ray supervisor (monitor/cluster/supervisor.py) makes it a Ray actor with
`ray.remote(StreamActor).options(...)`, so this module imports without Ray installed. Its methods return at once:
Ray runs the calls of one caller in order on a synchronous actor, so an add, a remove and a boost keep their order.

Results wait in an `EventBuffer` until the engine takes them (`poll`): the typed messages of
monitor/runtime/messages.py, with a `Load` report each time (the actor's heartbeat). The buffer is bounded: a full
buffer holds up the analysis thread that reports (back-pressure: the stream's sample queue then drops old
samples, counted there) and drops an event only when the engine has not taken any for `BLOCK_S` (counted, and
reported in every `Load`). Banks come from the object store (monitor/cluster/banks.py): the codes are read
where they lie, shared by the actors of a node.

A detached actor (`cluster.detach_actors`) outlives the monitor that started it: the next monitor re-attaches to
it (`attach`: its streams, their states, the settings it was built with) and goes on polling. One that no
monitor polls for `orphan_after_s` stops its streams and ends itself, so a monitor that is gone for good does not
leave streams being read forever.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from monitor.cluster.banks import BankData, fetch_banks
from monitor.cluster.coordinator import Load
from monitor.config.models import (
    AnalysisConfig,
    BankConfig,
    IngestConfig,
    KnownContentAnalysisConfig,
    MatchingConfig,
    SamplingConfig,
    StreamConfig,
)
from monitor.runtime.analyses import make_analyses
from monitor.runtime.bank_reload import BankReloader, ReloadResult
from monitor.runtime.messages import (
    BanksReloaded,
    Classified,
    Sampled,
    SampleReport,
    SampleTiming,
    StateChange,
    StateChanged,
    WorkerEvent,
    WorkerStats,
)
from monitor.runtime.supervisor import LocalSupervisor
from monitor.runtime.worker_process import WorkerSpec
from pipelines.banks import Bank
from pipelines.base import Finding, SampleInfo

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)

BLOCK_S = 2.0  # a reporting thread waits this long for room in a full buffer before its event is dropped
STATS_EVERY_S = 5.0  # sampling counters go with a poll this often
ORPHAN_CHECK_S = 5.0  # a detached actor looks this often whether a monitor still polls it
_ANALYSES: TypeAdapter[list[AnalysisConfig]] = TypeAdapter(list[AnalysisConfig])


@dataclass(frozen=True, slots=True)
class ActorBatch:
    """One poll's answer: the events in order, the actor's load, and its sampling counters now and then."""

    actor_id: str
    events: list[WorkerEvent]
    load: Load
    stats: WorkerStats | None = None


class EventBuffer:
    """The actor's bounded queue of events for the engine, with back-pressure and a drop counter; thread-safe."""

    def __init__(self, capacity: int, block_s: float = BLOCK_S) -> None:
        self.capacity = capacity
        self.block_s = block_s
        self.dropped = 0
        self._items: collections.deque[tuple[float, WorkerEvent]] = collections.deque()
        self._cond = threading.Condition()

    def put(self, event: WorkerEvent) -> bool:
        """False: dropped, the buffer stayed full for `block_s`."""
        with self._cond:
            if len(self._items) >= self.capacity and not self._cond.wait_for(
                    lambda: len(self._items) < self.capacity, self.block_s):
                self.dropped += 1
                return False
            self._items.append((time.time(), event))
            if len(self._items) == 1:
                self._cond.notify_all()  # a `take` waiting on an empty buffer
            return True

    def take(self, most: int, wait_s: float = 0.0) -> list[WorkerEvent]:
        """At most `most` events, oldest first; on an empty buffer it waits up to `wait_s` for the first one."""
        with self._cond:
            if not self._items and wait_s > 0:
                self._cond.wait_for(lambda: bool(self._items), wait_s)
            n = min(most, len(self._items))
            out = [self._items.popleft()[1] for _ in range(n)]
            self._cond.notify_all()
            return out

    def oldest_age_s(self) -> float:
        with self._cond:
            return time.time() - self._items[0][0] if self._items else 0.0

    def __len__(self) -> int:
        return len(self._items)


class BufferSink:
    """The actor's `EngineSink`: every result becomes a `WorkerEvent` in the buffer; samples are counted."""

    def __init__(self, buffer: EventBuffer, index: int) -> None:
        self.buffer = buffer
        self.index = index
        self.samples = 0
        self.lag_s = 0.0  # the largest key-packet-to-analysed delay since the last poll
        self._lock = threading.Lock()

    def on_state(self, change: StateChange) -> None:
        self.buffer.put(StateChanged(change))

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        with self._lock:
            self.samples += 1
            self.lag_s = max(self.lag_s, timing.done_at - sample.received_at)
        self.buffer.put(Sampled(sample, findings, timing))

    def on_classified(self, sample: SampleInfo, analysis: str, findings: list[Finding], done_at: float) -> None:
        self.buffer.put(Classified(sample, analysis, findings, done_at))

    def on_bank_reload(self, result: ReloadResult) -> None:
        self.buffer.put(BanksReloaded(result))

    def measured(self) -> tuple[int, float]:
        """Samples and the largest lag since the previous call."""
        with self._lock:
            out = (self.samples, self.lag_s)
            self.samples, self.lag_s = 0, 0.0
            return out


class StreamActor:
    """Runs streams on this node for the engine; every method returns at once."""

    def __init__(self, actor_id: str, index: int, spec: WorkerSpec, banks: Sequence[ObjectRef[BankData]],
                 queue_size: int, orphan_after_s: float | None = None) -> None:
        from monitor.ops.logs import setup_logging

        setup_logging("info", "json" if spec.log_json else "text")
        logging.getLogger("monitor").setLevel(spec.log_level)
        self.actor_id = actor_id
        self.buffer = EventBuffer(queue_size)
        self.sink = BufferSink(self.buffer, index)
        self.bank_refs = list(banks)
        loaded = self._banks()
        analyses = (_ANALYSES.validate_python(spec.analyses) if spec.analyses is not None
                    else [KnownContentAnalysisConfig(kind="known_content")])
        pipelines = make_analyses(analyses, loaded, MatchingConfig.model_validate(spec.matching),
                                  spec.store_images)
        self.supervisor = LocalSupervisor(IngestConfig.model_validate(spec.ingest),
                                          SamplingConfig.model_validate(spec.sampling), pipelines, self.sink,
                                          spec.budget_share)
        # reloads read the newest published banks from the object store instead of the files
        self.supervisor.bank_reloader = BankReloader(self.supervisor.pipelines, self.sink.on_bank_reload,
                                                     loader=lambda _configs, _previous: self._banks())
        self._cpu0, self._wall0 = time.process_time(), time.monotonic()
        self._stats_at = 0.0
        self.last_load = Load()
        self.node_id = _node_id()
        self.settings = spec_digest(spec)
        self.polled_at = time.monotonic()
        self.orphaned = False
        if orphan_after_s is not None:
            threading.Thread(target=self._watch_orphan, args=(orphan_after_s,), name="orphan-watch",
                             daemon=True).start()

    def _banks(self) -> list[Bank]:
        return fetch_banks(self.bank_refs)

    def ready(self) -> str:
        """Answers once the constructor has run (banks read, pipelines built)."""
        return self.actor_id

    def add_stream(self, stream: dict[str, object]) -> None:
        config = StreamConfig.model_validate(stream)
        if self.supervisor.has_stream(config.id) and config.id not in self.supervisor.dead_streams():
            return  # a repeated add (the engine moved it here twice): it already runs
        self.supervisor.add_stream(config)

    def remove_stream(self, stream_id: str) -> None:
        self.supervisor.remove_stream(stream_id)

    def boost(self, stream_id: str, seconds: float) -> None:
        self.supervisor.boost(stream_id, seconds)

    def reload_banks(self, banks: Sequence[ObjectRef[BankData]], configs: list[dict[str, object]]) -> None:
        """New references published by the engine: read them (no copy of the codes) and swap them in whole."""
        self.bank_refs = list(banks)
        self.supervisor.reload_banks([BankConfig.model_validate(c) for c in configs])

    def poll(self, most: int = 5000, wait_s: float = 0.0) -> ActorBatch:
        """The events waiting for the engine (oldest first, at most `most`) and the load now: the heartbeat. With
        none waiting it waits up to `wait_s` for one (a long poll: an idle actor costs a call per `wait_s`, an
        event goes out as soon as it is there; calls queued behind it run after it)."""
        events = self.buffer.take(most, wait_s)
        now_cpu, now = time.process_time(), time.monotonic()
        self.polled_at = now
        wall = max(1e-6, now - self._wall0)
        samples, lag = self.sink.measured()
        live = self.supervisor.stream_ids()
        load = Load(samples / wall, (now_cpu - self._cpu0) / wall, max(lag, self.buffer.oldest_age_s()),
                    len(live) - len(self.supervisor.dead_streams()), self.buffer.dropped, len(self.buffer), now_cpu)
        self._cpu0, self._wall0 = now_cpu, now
        self.last_load = load
        stats = None
        if now - self._stats_at >= STATS_EVERY_S:
            self._stats_at = now
            stats = self.supervisor.stats()[0]
        return ActorBatch(self.actor_id, events, load, stats)

    def status(self) -> dict[str, object]:
        """For `monitor cluster status`: its streams and what its buffer holds (no events are taken)."""
        load = self.last_load
        return {"actor": self.actor_id, "node": self.node_id, "streams": sorted(self.supervisor.stream_ids()),
                "dead": sorted(self.supervisor.dead_streams()), "queued": len(self.buffer),
                "dropped": self.buffer.dropped, "samples_per_s": round(load.samples_per_s, 3),
                "cpu": round(load.cpu, 3), "lag_s": round(load.lag_s, 3)}

    def stop(self) -> ActorBatch:
        """Stops every stream (what is queued is analysed first); the last events come back."""
        self.supervisor.stop_all()
        return ActorBatch(self.actor_id, self.buffer.take(len(self.buffer)), Load())

    def attach(self) -> dict[str, object]:
        """A monitor takes this actor over: its node, the digest of the settings it was built with, and each
        stream's config and state (a dead reader: `alive` false). Each running stream's state goes into the
        buffer too, after what it said while no monitor polled, so the new monitor learns where it stands."""
        self.polled_at = time.monotonic()
        streams: dict[str, object] = {}
        dead = set(self.supervisor.dead_streams())
        for sid, worker in list(self.supervisor.workers.items()):
            streams[sid] = {"config": worker.stream.model_dump(mode="json"), "state": worker.state.value,
                            "alive": sid not in dead}
            if sid not in dead:
                self.buffer.put(StateChanged(StateChange(sid, worker.state, f"re-attached to {self.actor_id}",
                                                         time.time(), 0)))
        return {"actor": self.actor_id, "node": self.node_id, "settings": self.settings, "streams": streams}

    def _watch_orphan(self, orphan_after_s: float) -> None:
        """Ends this (detached) actor once no monitor has polled it for `orphan_after_s`."""
        while True:
            time.sleep(min(ORPHAN_CHECK_S, orphan_after_s))
            idle = time.monotonic() - self.polled_at
            if idle < orphan_after_s:
                continue
            log.warning("stream actor %s: no monitor polled it for %.0f s; stopping its %d streams and ending",
                        self.actor_id, idle, len(self.supervisor.stream_ids()))
            self.orphaned = True
            self.supervisor.stop_all()
            _exit_actor()
            return


def spec_digest(spec: WorkerSpec) -> str:
    """What an actor was built with, as a short digest: a monitor re-attaches only to actors built as it would
    build them (the monitor's version, ingest, sampling, matching, analyses); the budget share and logging
    settings do not count."""
    from monitor import __version__

    key = asdict(replace(spec, budget_share=1.0, log_level=0, log_json=False, banks=[]))
    return hashlib.sha256(json.dumps([__version__, key], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _exit_actor() -> None:
    """This actor's process ends (from a thread of its own: Ray's exit_actor works only inside a call)."""
    try:
        import ray

        if ray.is_initialized():
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
    except Exception as exc:  # outside Ray (the unit tests) there is nothing to end
        log.debug("ending the actor: %s", exc)



def _node_id() -> str:
    """The Ray node this actor runs on ("" outside Ray: the unit tests build the class directly)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except ImportError:
        return ""
