"""The `Supervisor` protocol (monitor/runtime/protocol.py) over stream actors on a Ray cluster.

The engine holds a `RaySupervisor` as it holds the local ones; nothing above it changes. It starts stream actors
(monitor/cluster/actor.py) on the cluster's nodes, `cpus_per_actor` CPUs each, pinned to their node; the
`Coordinator` (monitor/cluster/coordinator.py) decides which actor runs which stream. One pump thread polls every
actor for its events (in order, at most `BATCH` a call) and hands them to the engine exactly as the sharded
supervisor does; each answer is also that actor's heartbeat and load report. It looks for joined and leaving
nodes every `node_poll_s`: a joined node gets actors, a leaving one is drained.

An actor that has not answered for `dead_after_s` (a crash, its node killed: Ray's own health check takes ~16 s)
is killed and its streams are started on the others; meanwhile each of them reports `reconnecting`. Whatever had
reached the engine is the engine's (its outbox); a stream restarted elsewhere may repeat the last seconds, which
the incident book folds into the open incident. An actor whose process died while its node lives on gives its
streams a strike; a stream with too many is quarantined (monitor/cluster/coordinator.py).

At start it looks up the actors already named in its namespace (`cluster.detach_actors` leaves them running
past a monitor's stop or crash) and re-attaches to the live ones built with the same settings: a stream they run
that is asked for again keeps running there without a gap (what it said meanwhile is handed over when it is
asked for), one not asked for within `reattach_grace_s` is stopped, and dead or differently built actors are
replaced. Every poll answer also feeds the per-actor Prometheus series (monitor/ops/metrics.py ClusterMetrics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

from monitor.cluster.actor import ActorBatch, StreamActor, spec_digest
from monitor.cluster.banks import BankData, publish
from monitor.cluster.coordinator import Coordinator, Move
from monitor.common.errors import UserError
from monitor.common.urls import redact_url
from monitor.config.models import (
    AnalysisConfig,
    BankConfig,
    ClusterConfig,
    IngestConfig,
    MatchingConfig,
    SamplingConfig,
    StreamConfig,
)
from monitor.ops.metrics import ClusterMetrics
from monitor.runtime.bank_reload import load_banks
from monitor.runtime.messages import (
    BanksReloaded,
    Classified,
    Sampled,
    StateChange,
    StateChanged,
    StreamState,
    WorkerEvent,
    WorkerStats,
    WorkerStatsReport,
)
from monitor.runtime.protocol import EngineSink
from monitor.runtime.worker_process import WorkerSpec
from pipelines.banks import Bank

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

    Handle: TypeAlias = ActorHandle[StreamActor]
    PollRef: TypeAlias = ObjectRef[ActorBatch]
    ReadyRef: TypeAlias = ObjectRef[str]
    BankRef: TypeAlias = ObjectRef[BankData]

log = logging.getLogger(__name__)

BATCH = 5000  # events one poll takes from an actor
IDLE_POLL_S = 0.1  # the pump's turn: answers, starts and silent actors are looked at this often
POLL_WAIT_S = 0.5  # a poll finding nothing waits this long in the actor for an event (at most heartbeat_s)
START_TIMEOUT_S = 120.0  # an actor not ready by then (its node died meanwhile) is given up
FIRST_ACTORS_S = 60.0  # start() waits this long for the actors it started, so configured streams spread at once
ACTOR_PREFIX = "stream-actor-"  # actors are named this plus node and number, in the configured namespace
ATTACH_TIMEOUT_S = 10.0  # an actor found at start that does not answer by then is taken for dead
HELD_EVENTS = 10_000  # events kept for a re-attached actor's streams until the engine asks for them again


class ClusterError(UserError):
    """The Ray cluster cannot be reached or used as configured."""


def connect(cfg: ClusterConfig, log_to_driver: bool = True) -> None:
    """ray.init for `cluster.address`; a failure is one line naming the setting. `log_to_driver`: the actors'
    log lines are printed here too (the engine's log), not for a status query."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's fatal-signal handler would turn the SIGTERM that stops the monitor in order into an abort (read by
    # Ray when it is first imported)
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise ClusterError("cluster.engine: ray needs Ray installed: pip install '.[ray]'") from None
    if ray.is_initialized():
        return
    if cfg.address != "local":
        _reachable(cfg.address)  # Ray itself retries an absent cluster for minutes
    try:
        if cfg.address == "local":
            # address "local": a new cluster always (without it Ray joins the last one started on this machine)
            ray.init(address="local", namespace=cfg.namespace, include_dashboard=False, configure_logging=False,
                     log_to_driver=log_to_driver)
        else:
            ray.init(address=cfg.address, namespace=cfg.namespace, configure_logging=False,
                     log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cluster.address {cfg.address}: cannot join the Ray cluster: {first}") from None


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """The cluster's GCS (or Ray Client server) answers on its port; ClusterError naming the address if not."""
    target = address.removeprefix("ray://")
    if target == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        if not target:
            try:
                target = Path(tempfile.gettempdir(), "ray", "ray_current_cluster").read_text().strip()
            except OSError:
                raise ClusterError("cluster.address auto: no Ray cluster was started on this machine (ray start "
                                   "--head, or give its address)") from None
        target = target.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout_s).close()
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cluster.address {address}: no Ray cluster answers at {target} "
                           f"({exc.strerror or exc if isinstance(exc, OSError) else exc})") from None


def alive_nodes(include_head: bool) -> dict[str, float]:
    """Node id -> CPUs of the live nodes that may run stream actors."""
    import ray

    out: dict[str, float] = {}
    listed: list[dict[str, object]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = [n for n in listed if n.get("Alive")]
    for n in nodes:
        resources = n.get("Resources")
        if not isinstance(resources, dict):
            continue
        head = "node:__internal_head__" in resources
        if head and not include_head and len(nodes) > 1:
            continue  # the head runs the engine (and Ray's own services); actors go to the workers
        out[str(n["NodeID"])] = float(resources.get("CPU", 0.0))
    return out


@dataclass(slots=True)
class Adopted:
    """A stream a re-attached actor runs, until the engine asks for it again (or the grace ends)."""

    actor: str
    config: dict[str, object]
    events: list[WorkerEvent] = dataclasses.field(default_factory=list)


class RaySupervisor:
    """Streams over stream actors on a Ray cluster; the engine's side."""

    def __init__(self, cluster: ClusterConfig, ingest: IngestConfig, sampling: SamplingConfig, banks: Sequence[Bank],
                 matching: MatchingConfig, sink: EngineSink, log_json: bool = False,
                 analyses: Sequence[AnalysisConfig] | None = None, store_images: bool = False) -> None:
        if not _ray_installed():  # said before anything starts, not once the engine runs
            raise ClusterError("cluster.engine: ray needs Ray installed: pip install '.[ray]'")
        self.cfg = cluster
        self._poll_wait_s = min(POLL_WAIT_S, cluster.heartbeat_s)  # an idle actor still reports every heartbeat_s
        self.spec = WorkerSpec(ingest.model_dump(mode="json"), sampling.model_dump(mode="json"), [],
                               matching.model_dump(mode="json"), logging.getLogger("monitor").getEffectiveLevel(),
                               log_json, 1.0, None if analyses is None else [a.model_dump(mode="json")
                                                                               for a in analyses], store_images)
        self.banks = list(banks)
        self.bank_refs: list[BankRef] = []
        self.sink = sink
        self.coordinator = Coordinator(cluster.dead_after_s, settle_s=cluster.rebalance_settle_s)
        self.handles: dict[str, Handle] = {}
        self.starting: dict[str, tuple[Handle, ReadyRef, str, float]] = {}  # actor -> (handle, ready ref, node, t)
        self.polls: dict[PollRef, str] = {}  # outstanding poll ref -> actor
        self.next_poll: dict[str, float] = {}
        self.streams: dict[str, StreamConfig] = {}
        self.urls: dict[str, str] = {}
        self.worker_stats: dict[str, WorkerStats] = {}
        self.moved = 0  # streams started elsewhere because their actor died or its node left
        self.lost_actors = 0
        self.quarantined_total = 0  # streams quarantined because the actors they ran in kept crashing
        self.held: dict[str, str] = {}  # quarantined streams still registered (FAILED, not running) -> why
        self.adopted: dict[str, Adopted] = {}  # streams of re-attached actors not asked for yet
        self.reattached = 0
        self._adopt_until = 0.0
        self._held_events = 0
        found = getattr(getattr(sink, "metrics", None), "cluster", None)  # the engine's (monitor/ops/metrics.py)
        self.metrics: ClusterMetrics | None = found if isinstance(found, ClusterMetrics) else None
        self._counts: dict[str, tuple[int, float]] = {}  # actor -> (dropped, cpu seconds) last recorded
        self._gauged: set[tuple[str, str]] = set()  # (node, state) series of monitor_cluster_actors set
        self._counter = 0
        self._first_ready = threading.Event()
        self._stopping = False
        self._lock = threading.RLock()
        self._pump = threading.Thread(target=self._run, name="ray-actors", daemon=True)
        self._next_nodes = 0.0
        self._next_rebalance = time.monotonic() + cluster.rebalance_s

    # -- the protocol -----------------------------------------------------------------------------------
    def start(self) -> None:
        connect(self.cfg)
        self.bank_refs = publish(self.banks)
        self._reattach()
        self._sync_nodes()
        if not self.starting and not self.handles:
            raise ClusterError(f"cluster.cpus_per_actor {self.cfg.cpus_per_actor:g}: no node of the Ray cluster "
                               "has that many CPUs free")
        self._pump.start()
        # the configured streams are added next: wait for the first actors, so they spread over all of them
        deadline = time.monotonic() + FIRST_ACTORS_S
        while self.starting and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self._first_ready.is_set():
            log.warning("no stream actor ready after %.0f s; streams wait for one", FIRST_ACTORS_S)

    def add_stream(self, stream: StreamConfig) -> None:
        with self._lock:
            if stream.id in self.streams:
                raise ValueError(f"stream {stream.id!r} is already monitored")
            self.streams[stream.id] = stream
            self.urls[stream.id] = redact_url(stream.url)
            if self.coordinator.quarantined(stream.id):
                detail = self.held.setdefault(stream.id, "quarantined: the actors it ran in kept crashing")
                log.warning("stream %s: not started, still %s", stream.id, detail, extra={"stream_id": stream.id})
                self.sink.on_state(StateChange(stream.id, StreamState.FAILED, detail, time.time(), 0))
                return
            self.held.pop(stream.id, None)
            if self._claim(stream):
                return
            self._carry_out([self.coordinator.place(stream.id)])

    def _claim(self, stream: StreamConfig) -> bool:
        """A stream a re-attached actor runs as configured now: it stays there (True) and what it said meanwhile
        is handed over; run otherwise, it is stopped there and placed afresh (False)."""
        adopted = self.adopted.pop(stream.id, None)
        if adopted is None:
            return False
        self._held_events -= len(adopted.events)
        handle = self.handles.get(adopted.actor)
        if handle is None:
            return False
        if adopted.config != stream.model_dump(mode="json"):
            handle.remove_stream.remote(stream.id)  # the same id with other settings: a fresh start
            return False
        self.coordinator.assign(stream.id, adopted.actor)
        log.info("stream %s: re-attached, it runs on in stream actor %s", stream.id, adopted.actor,
                 extra={"stream_id": stream.id})
        for event in adopted.events:
            self._dispatch(adopted.actor, event)
        return True

    def remove_stream(self, stream_id: str) -> None:
        with self._lock:
            if self.streams.pop(stream_id, None) is None:
                return
            self.held.pop(stream_id, None)
            actor = self.coordinator.remove(stream_id)
            handle = self.handles.get(actor) if actor is not None else None
        if handle is not None:
            handle.remove_stream.remote(stream_id)
        else:  # it was waiting for an actor: no thread of its own to say so
            self.sink.on_state(StateChange(stream_id, StreamState.ENDED, "removed", time.time(), 0))

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self.streams

    def stream_ids(self) -> list[str]:
        with self._lock:
            return list(self.streams)

    def dead_streams(self) -> list[str]:
        """Streams no actor runs now (waiting for one, or quarantined); a stream that ended inside its actor says
        so itself."""
        with self._lock:
            return [*(sid for sid in self.coordinator.pending if sid in self.streams), *self.held]

    def boost(self, stream_id: str, seconds: float) -> None:
        actor = self.coordinator.actor_of(stream_id)
        handle = self.handles.get(actor) if actor is not None else None
        if handle is not None:
            handle.boost.remote(stream_id, seconds)

    def reload_banks(self, banks: Sequence[BankConfig]) -> None:
        """Loaded once here and published as new references; every actor swaps them in (the old ones are freed)."""
        threading.Thread(target=self._reload, args=(list(banks),), name="bank-publish", daemon=True).start()

    def stats(self) -> list[WorkerStats]:
        return list(self.worker_stats.values())

    def stop_all(self, timeout_s: float = 15.0) -> None:
        import ray

        self._stopping = True
        if self._pump.ident is not None:  # start() may have failed before it
            self._pump.join(5)
        with self._lock:
            handles = dict(self.handles)
            polls = dict(self.polls)
            self.polls.clear()
        # polls on their way carry events the actors no longer hold: they are the engine's
        for ref in ray.wait(list(polls), num_returns=len(polls), timeout=5.0)[0] if polls else []:
            with contextlib.suppress(Exception):
                self._handle(ray.get(ref))
        if self.cfg.detach_actors:
            for h in (s[0] for s in self.starting.values()):
                self._kill_handle(h)  # not ready yet: nothing to keep
            log.info("%d stream actors left running (cluster.detach_actors): the next monitor in namespace %s "
                     "re-attaches to them; unpolled for %.0f s they end", len(handles), self.cfg.namespace,
                     self.cfg.orphan_after_s)
            return
        refs: dict[PollRef, str] = {h.stop.remote(): a for a, h in handles.items()}
        ready = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)[0] if refs else []
        for ref in ready:
            try:
                self._handle(ray.get(ref))
            except Exception as exc:  # an actor that died meanwhile: what it had is gone with it
                log.warning("stream actor %s did not stop cleanly: %s", refs[ref], _one_line(exc))
        for h in [*handles.values(), *(s[0] for s in self.starting.values())]:
            self._kill_handle(h)

    # -- the cluster's view, for `monitor cluster status` and metrics -----------------------------------
    def status(self) -> dict[str, object]:
        with self._lock:
            actors = self.coordinator.status()
            return {"nodes": sorted({a.node_id for a in actors if a.alive}),
                    "actors": [dataclasses.asdict(a) for a in actors],
                    "starting": len(self.starting), "waiting_streams": len(self.coordinator.pending),
                    "moved_streams": self.moved, "lost_actors": self.lost_actors,
                    "quarantined_streams": sorted(self.held), "reattached_actors": self.reattached}

    # -- the pump -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        import ray

        while not self._stopping:
            now = time.monotonic()
            with self._lock:
                if now >= self._next_nodes:
                    self._next_nodes = now + self.cfg.node_poll_s
                    self._sync_nodes()
                    self.coordinator.refresh()  # the CPU a stream costs, measured again
                    self._gauge_actors()
                if self.adopted and now >= self._adopt_until:
                    self._drop_unclaimed()
                if self.cfg.rebalance_s and now >= self._next_rebalance:
                    self._next_rebalance = now + self.cfg.rebalance_s
                    self._rebalance()
                for actor, due in list(self.next_poll.items()):
                    if due <= now and actor in self.handles:
                        del self.next_poll[actor]
                        self.polls[self.handles[actor].poll.remote(BATCH, self._poll_wait_s)] = actor
                polls = list(self.polls)
                starts = [s[1] for s in self.starting.values()]
            if starts:
                for ref in ray.wait(starts, num_returns=len(starts), timeout=0)[0]:
                    self._started(ref)
            if polls:
                for ref in ray.wait(polls, num_returns=len(polls), timeout=IDLE_POLL_S)[0]:
                    self._answer(ref)
            else:
                time.sleep(IDLE_POLL_S)
            with self._lock:
                self._expire_starts(time.monotonic())
                for actor in self.coordinator.silent():
                    log.error("stream actor %s did not answer for %.0f s: taken for dead", actor,
                              self.cfg.dead_after_s)
                    self._lose(actor, "silent")

    def _answer(self, ref: PollRef) -> None:
        import ray

        actor = self.polls.pop(ref, None)
        if actor is None:
            return  # its actor was given up meanwhile
        try:
            batch = ray.get(ref)
        except Exception as exc:  # RayActorError and the like: the actor or its node is gone
            with self._lock:
                if actor in self.handles:
                    log.error("stream actor %s died: %s", actor, _one_line(exc))
                    self._lose(actor, "poll_failed", crashed=_process_crash(exc))
            return
        with self._lock:
            if actor not in self.handles:
                return  # given up meanwhile: its streams run elsewhere
            self.coordinator.heartbeat(actor, batch.load)
            self.next_poll[actor] = time.monotonic()  # at once: an idle actor's poll waits in the actor
        self._handle(batch)

    def _handle(self, batch: ActorBatch) -> None:
        if batch.stats is not None:
            self.worker_stats[batch.actor_id] = batch.stats
        self._record(batch)
        for event in batch.events:
            sid = _stream_of(event) if self.adopted else None  # streams of re-attached actors wait for the engine
            if sid is not None and sid in self.adopted:
                with self._lock:  # add_stream claims under the lock: no event overtakes the ones held
                    if self._hold(sid, event):
                        continue
            self._dispatch(batch.actor_id, event)

    def _hold(self, stream_id: str, event: WorkerEvent) -> bool:
        adopted = self.adopted.get(stream_id)
        if adopted is None:
            return False  # claimed meanwhile
        if self._held_events < HELD_EVENTS:
            adopted.events.append(event)
            self._held_events += 1
        return True

    def _record(self, batch: ActorBatch) -> None:
        """One poll answer into the actor's Prometheus series."""
        m = self.metrics
        slot = self.coordinator.actors.get(batch.actor_id)
        if m is None or slot is None or not slot.alive:
            return
        labels = (slot.node_id[:12], batch.actor_id)
        load = batch.load
        m.polls.labels(*labels).inc()
        m.samples.labels(*labels).inc(sum(1 for e in batch.events if isinstance(e, Sampled)))
        m.streams.labels(*labels).set(load.streams)
        m.lag.labels(*labels).set(load.lag_s)
        m.buffered.labels(*labels).set(load.queued)
        dropped, cpu = self._counts.get(batch.actor_id, (0, load.cpu_total_s))
        m.dropped.labels(*labels).inc(max(0, load.dropped - dropped))
        m.cpu.labels(*labels).inc(max(0.0, load.cpu_total_s - cpu))
        self._counts[batch.actor_id] = (load.dropped, load.cpu_total_s)

    def _gauge_actors(self) -> None:
        """monitor_cluster_actors{node,state} and monitor_cluster_streams_waiting, from the table now."""
        m = self.metrics
        if m is None:
            return
        counts: dict[tuple[str, str], int] = {}
        for _, _, node, _ in self.starting.values():
            counts[node[:12], "starting"] = counts.get((node[:12], "starting"), 0) + 1
        for slot in self.coordinator.actors.values():
            if slot.alive:
                key = (slot.node_id[:12], "draining" if slot.draining else "live")
                counts[key] = counts.get(key, 0) + 1
        for key in self._gauged - counts.keys():
            m.actors.labels(*key).set(0)
        for key, n in counts.items():
            m.actors.labels(*key).set(n)
        self._gauged |= counts.keys()
        m.waiting.set(len(self.coordinator.pending))

    def _dispatch(self, actor: str, msg: WorkerEvent) -> None:
        match msg:
            case StateChanged(change):
                here = self.coordinator.actor_of(change.stream_id)
                if here == actor or change.stream_id not in self.streams:
                    self.sink.on_state(change)  # a moved stream's old actor says nothing more about it
            case Sampled(sample, findings, timing):
                self.sink.on_sample(sample, findings, timing)
            case Classified(sample, analysis, findings, done_at):
                on_classified = getattr(self.sink, "on_classified", None)
                if on_classified is not None:
                    on_classified(sample, analysis, findings, done_at)
            case BanksReloaded(result):
                report = getattr(self.sink, "on_bank_reload", None)
                if report is not None:
                    report(result)
            case WorkerStatsReport(_, stats):
                self.worker_stats[actor] = stats
            case _:
                pass

    # -- actors coming and going ------------------------------------------------------------------------
    def _sync_nodes(self) -> None:
        """Actors for nodes that joined (or lost theirs), drains for nodes that left."""
        include_head = self.cfg.address == "local"
        nodes = alive_nodes(include_head)
        per_node = {n: self._actors_for(cpus) for n, cpus in nodes.items()}
        running: dict[str, int] = {}
        for _, _, node, _ in self.starting.values():
            running[node] = running.get(node, 0) + 1
        for node, actors in self.coordinator.nodes().items():
            if node not in nodes:
                log.warning("node %s left the Ray cluster: its streams go to other nodes", node[:12])
                self._carry_out(self.coordinator.drain_node(node), lost=True)
                for actor in actors:
                    self.lost_actors += 1
                    self._count_lost(actor, "node_left")
                    self._kill(actor)
                continue
            running[node] = running.get(node, 0) + len(actors)
        want = sum(per_node.values())
        for node, n in per_node.items():
            for _ in range(n - running.get(node, 0)):
                self._start_actor(node, max(1, want))

    def _actors_for(self, cpus: float) -> int:
        n = int(cpus // self.cfg.cpus_per_actor)
        return min(n, self.cfg.max_actors_per_node) if self.cfg.max_actors_per_node else n

    def _start_actor(self, node: str, total: int) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._counter += 1
        actor_id = f"{ACTOR_PREFIX}{node[:12]}-{self._counter}"
        spec = dataclasses.replace(self.spec, budget_share=1.0 / total)
        detach = self.cfg.detach_actors
        remote = ray.remote(StreamActor).options(
            name=actor_id, num_cpus=self.cfg.cpus_per_actor, max_restarts=0, max_task_retries=0,
            lifetime="detached" if detach else None,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        handle = cast("Handle", remote.remote(actor_id, self._counter, spec, self.bank_refs, self.cfg.queue_size,
                                              self.cfg.orphan_after_s if detach else None))
        self.starting[actor_id] = (handle, handle.ready.remote(), node, time.monotonic())
        log.info("starting stream actor %s on node %s", actor_id, node[:12])

    def _started(self, ref: ReadyRef) -> None:
        import ray

        with self._lock:
            actor = next((a for a, s in self.starting.items() if s[1] == ref), None)
            if actor is None:
                return
            handle, _, node, _ = self.starting.pop(actor)
            try:
                ray.get(ref)
            except Exception as exc:
                log.warning("stream actor %s did not start: %s", actor, _one_line(exc))
                if self.metrics is not None:
                    self.metrics.lost.labels(node[:12], "start_failed").inc()
                return
            self.handles[actor] = handle
            self.next_poll[actor] = 0.0
            log.info("stream actor %s ready on node %s", actor, node[:12])
            self._carry_out(self.coordinator.add_actor(actor, node, self.cfg.cpus_per_actor))
            self._first_ready.set()

    def _expire_starts(self, now: float) -> None:
        for actor, (handle, _, node, t) in list(self.starting.items()):
            if now - t > START_TIMEOUT_S:
                log.warning("stream actor %s on node %s not ready after %.0f s; given up", actor, node[:12],
                            START_TIMEOUT_S)
                del self.starting[actor]
                self._kill_handle(handle)
                if self.metrics is not None:
                    self.metrics.lost.labels(node[:12], "start_failed").inc()

    def _lose(self, actor: str, reason: str = "poll_failed", crashed: bool = False) -> None:
        """Given up (`reason`: poll_failed, silent): killed, its streams placed on the others. `crashed`: its
        process died on a live node, a strike against each of its streams."""
        self.lost_actors += 1
        self._count_lost(actor, reason)
        self._carry_out(self.coordinator.actor_died(actor, crashed=crashed), lost=True)
        self._kill(actor)

    def _count_lost(self, actor: str, reason: str) -> None:
        slot = self.coordinator.actors.get(actor)
        if self.metrics is not None and slot is not None:
            self.metrics.lost.labels(slot.node_id[:12], reason).inc()

    def _kill(self, actor: str) -> None:
        handle = self.handles.pop(actor, None)
        self.next_poll.pop(actor, None)
        for ref in [r for r, a in self.polls.items() if a == actor]:
            del self.polls[ref]
        slot = self.coordinator.actors.get(actor)
        if self.metrics is not None and slot is not None:
            self.metrics.forget_actor(slot.node_id[:12], actor)
        for sid in [s for s, a in self.adopted.items() if a.actor == actor]:
            self._held_events -= len(self.adopted.pop(sid).events)  # gone with it: placed afresh when asked for
        self._counts.pop(actor, None)
        self.coordinator.forget_actor(actor)
        self.worker_stats.pop(actor, None)
        if handle is not None:
            self._kill_handle(handle)

    @staticmethod
    def _kill_handle(handle: Handle) -> None:
        import ray

        if not ray.is_initialized():
            return  # nothing to kill (the unit tests' fake handles)
        try:
            ray.kill(handle, no_restart=True)  # one taken for dead must not go on reading its streams
        except Exception as exc:
            log.debug("killing an actor: %s", _one_line(exc))

    def _carry_out(self, moves: Sequence[Move], lost: bool = False) -> None:
        """Starts each moved stream on its new actor; a lost stream says `reconnecting` until it is live again."""
        for m in moves:
            stream = self.streams.get(m.stream_id)
            if stream is None:
                continue
            if m.quarantined:
                self._quarantined(m)
                continue
            if m.source is not None:
                self.moved += 1
                if self.metrics is not None:
                    self.metrics.moved.labels("lost" if lost else "rebalanced").inc()
                where = f"moving to {m.target}" if m.target else "waiting for an actor"
                why = "lost" if lost else "busier than others"
                self.sink.on_state(StateChange(m.stream_id, StreamState.RECONNECTING,
                                               f"stream actor {m.source} {why}; {where}", time.time(), 0))
            if m.target is not None:
                self.handles[m.target].add_stream.remote(stream.model_dump(mode="json"))
        if lost and moves:
            log.warning("%d streams moved to other stream actors", sum(1 for m in moves if m.target))

    def _quarantined(self, m: Move) -> None:
        until = time.time() + self.coordinator.cooldown_s
        detail = (f"quarantined: the stream actors it ran in died {m.quarantined} times within "
                  f"{self.coordinator.window_s / 60:g} min (last: {m.source}); not restarted, added again no "
                  f"earlier than {datetime.fromtimestamp(until, UTC).isoformat(timespec='seconds')}")
        self.held[m.stream_id] = detail
        self.quarantined_total += 1
        log.error("stream %s %s", m.stream_id, detail, extra={"stream_id": m.stream_id})
        self.sink.on_state(StateChange(m.stream_id, StreamState.FAILED, detail, time.time(), 0))

    # -- re-attaching to the actors of an earlier run ----------------------------------------------------
    def _reattach(self) -> None:
        """The live actors named in the namespace, built as this monitor would build them, are taken over; the
        others are killed (their nodes get new actors from `_sync_nodes`)."""
        import ray

        names = [n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX)]
        for name in names:  # new actors are numbered past the ones found: names never clash
            tail = name.rsplit("-", 1)[-1]
            if tail.isdigit():
                self._counter = max(self._counter, int(tail))
        answers: dict[ObjectRef[dict[str, object]], tuple[str, Handle]] = {}
        for name in names:
            try:
                handle = cast("Handle", ray.get_actor(name))
            except ValueError:
                continue  # gone since it was listed
            answers[handle.attach.remote()] = (name, handle)
        if not answers:
            return
        ready = set(ray.wait(list(answers), num_returns=len(answers), timeout=ATTACH_TIMEOUT_S)[0])
        mine = spec_digest(self.spec)
        for ref, (name, handle) in answers.items():
            try:
                if ref not in ready:
                    raise TimeoutError(f"no answer in {ATTACH_TIMEOUT_S:.0f} s")
                info = ray.get(ref)
            except Exception as exc:
                log.warning("stream actor %s of an earlier run is not answering (%s): replaced", name,
                            _one_line(exc))
                self._kill_handle(handle)
                continue
            if info.get("settings") != mine:
                log.warning("stream actor %s was built with other settings (another monitor version or config): "
                            "replaced", name)
                with contextlib.suppress(Exception):
                    ray.get(handle.stop.remote(), timeout=ATTACH_TIMEOUT_S)
                self._kill_handle(handle)
                continue
            self._adopt(name, handle, info)

    def _adopt(self, name: str, handle: Handle, info: dict[str, object]) -> None:
        node = str(info.get("node", ""))
        streams = info.get("streams")
        listed = streams if isinstance(streams, dict) else {}
        with self._lock:
            self.handles[name] = handle
            self.next_poll[name] = 0.0
            self.coordinator.add_actor(name, node, self.cfg.cpus_per_actor)
            kept = 0
            for sid, stream in listed.items():
                if isinstance(stream, dict) and stream.get("alive") and isinstance(stream.get("config"), dict):
                    self.adopted[str(sid)] = Adopted(name, stream["config"])
                    kept += 1
                else:
                    handle.remove_stream.remote(sid)  # its reader had ended: started afresh when asked for
            # the earlier run's bank objects went with its driver: this run's are swapped in
            handle.reload_banks.remote(self.bank_refs, [])
            self.reattached += 1
            if self.metrics is not None:
                self.metrics.reattached.inc()
            self._adopt_until = time.monotonic() + self.cfg.reattach_grace_s
            self._first_ready.set()
        log.info("re-attached to stream actor %s on node %s with %d running streams", name, node[:12], kept)

    def _drop_unclaimed(self) -> None:
        """The re-attached actors' streams nobody asked for within `reattach_grace_s` are stopped."""
        for sid, adopted in list(self.adopted.items()):
            del self.adopted[sid]
            self._held_events -= len(adopted.events)
            handle = self.handles.get(adopted.actor)
            log.info("stream %s ran in re-attached stream actor %s but is not monitored now: stopped", sid,
                     adopted.actor, extra={"stream_id": sid})
            if handle is not None:
                handle.remove_stream.remote(sid)

    def _rebalance(self) -> None:
        """A few streams from the most to the least loaded actors: stopped on one, then started on the other."""
        moves = self.coordinator.rebalance(self.cfg.rebalance_moves)
        for m in moves:
            source = self.handles.get(m.source) if m.source is not None else None
            if source is not None:
                source.remove_stream.remote(m.stream_id)
        if moves:
            log.info("rebalancing: %d streams move to less loaded stream actors", len(moves))
        self._carry_out(moves)

    def _reload(self, configs: list[BankConfig]) -> None:
        try:
            self.banks = load_banks(configs, self.banks)
            refs = publish(self.banks)
        except Exception as exc:
            log.error("bank reload failed, the published banks stay in use: %s", _one_line(exc))
            return
        dumped = [c.model_dump(mode="json") for c in configs]
        with self._lock:
            self.bank_refs = refs  # actors started from now on get these
            for handle in self.handles.values():
                handle.reload_banks.remote(refs, dumped)


def _stream_of(event: WorkerEvent) -> str | None:
    match event:
        case StateChanged(change):
            return change.stream_id
        case Sampled(sample, _, _):
            return sample.stream_id
        case Classified(sample, _, _, _):
            return sample.stream_id
        case _:
            return None


def _process_crash(exc: BaseException) -> bool:
    """The actor's process died while its node lives on (a crash its streams may have caused), as Ray words it
    ("... because its worker process has died"); its node dying, its owner dying or a kill is nobody's fault."""
    return "worker process has died" in str(exc)


def _ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except ImportError:
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

