"""The composition root: builds everything from the configuration, runs it, and routes the results.

Worker threads (or worker processes, through the sharded supervisor) do the heavy work (decode, scale, hash,
match) and hand results to the asyncio loop with `call_soon_threadsafe`; everything that touches MQTT, the hook
server and the server APIs runs on that loop. Here: the supervisor chosen, the results routed (findings to the
incident book, its decisions published), and the run. The other concerns have modules of their own (listed in
monitor/app/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, assert_never

from monitor.app import records
from monitor.app.banks import BankWatcher, NegativeBanks, load_banks
from monitor.app.commands import ClassifierImages, Command, Commands, CommandTrustPolicy, parse_command
from monitor.app.enforcement import Enforcer
from monitor.app.health import MetricDeltas, forget_stream_metrics, health_input, health_message, observe_sample
from monitor.app.publishing import Announcer, flush_on_shutdown
from monitor.app.services import make_discovery, server_apis, start_hooks
from monitor.app.state import open_state
from monitor.app.streams import Streams
from monitor.config.models import MonitorConfig, StreamConfig
from monitor.contracts import topics
from monitor.delivery.mqtt import MqttPublisher
from monitor.evidence.records import EvidenceRecord
from monitor.incidents import (
    ClassifierPolicy,
    Event,
    Incident,
    IncidentBook,
    IncidentPolicy,
    IncidentUpdate,
    NewIncident,
    Quarantined,
    QuarantineLifted,
    Suppressed,
)
from monitor.ops.metrics import HealthInput, HealthRules, Metrics, start_metrics_server
from monitor.ops.sampling_report import Escalation, SamplingReport
from monitor.runtime.analyses import check_classifiers, make_analyses
from monitor.runtime.bank_reload import ReloadResult
from monitor.runtime.messages import TERMINAL, SampleReport, SampleTiming, StateChange, StreamState
from monitor.runtime.protocol import EngineSink, Supervisor
from monitor.runtime.supervisor import LocalSupervisor
from monitor.runtime.workers import ShardedSupervisor
from monitor.servers.api import DropResult
from monitor.servers.bans import BanList
from monitor.servers.hooks import ID_KEY_FILE, OriginTable, StreamNamer
from pipelines.banks import Bank
from pipelines.base import Finding, SampleInfo

__all__ = ["Engine", "build_supervisor", "load_banks"]  # load_banks: its home is monitor/app/banks.py

log = logging.getLogger(__name__)

AlertListener = Callable[[dict[str, Any]], None]  # an alert as published (monitor/contracts/alerts.py)


def build_supervisor(cfg: MonitorConfig, banks: Sequence[Bank], sink: EngineSink) -> Supervisor:
    """Threads in this process with `workers: 0`, else worker processes (one per core unless `workers` says)."""
    if cfg.cluster.engine == "ray":  # stream actors on a Ray cluster; banks go to its object store once
        from monitor.cluster.supervisor import RaySupervisor

        return RaySupervisor(cfg.cluster, cfg.ingest, cfg.sampling, banks, cfg.matching, sink,
                             cfg.log_format == "json", analyses=cfg.analyses, store_images=cfg.evidence.store_images)
    n_workers = (os.cpu_count() or 1) if cfg.workers is None else cfg.workers
    if n_workers == 0:
        return LocalSupervisor(cfg.ingest, cfg.sampling,
                               make_analyses(cfg.analyses, banks, cfg.matching, cfg.evidence.store_images), sink)
    # Worker processes load their own banks; the main process keeps none of them.
    return ShardedSupervisor(n_workers, cfg.ingest, cfg.sampling, cfg.banks, cfg.matching, sink,
                             cfg.log_format == "json", analyses=cfg.analyses, store_images=cfg.evidence.store_images)


class Engine:
    def __init__(self, cfg: MonitorConfig, banks: Sequence[Bank]) -> None:
        self.cfg = cfg
        if cfg.workers != 0:  # worker processes build their own: a classifier that cannot run is refused here
            check_classifiers(cfg.analyses, cfg.matching)
        state = open_state(cfg)
        self.state_lock, self.outbox, self.evidence = state.lock, state.outbox, state.evidence
        self.evidence_writer = records.EvidenceWriter(  # unconfirmed matches kept for as many samples as fold
            self.evidence, state.head_key, cfg.evidence.head_interval_s,
            fold_max=max([cfg.incidents.confirm_n, *(a.incidents.confirm_n for a in cfg.analyses
                                                     if a.kind != "known_content")]))
        self._evidence_writer = self.evidence_writer.executor  # tests wait on it (shutdown) before reading
        self.bans = BanList(cfg.state_dir / "bans.json")
        self.publisher = MqttPublisher(cfg.broker, cfg.node, self.outbox, on_command=self._on_command)
        self.announce = Announcer(cfg, self.publisher, self.record, self._stream_url)
        self.incidents = IncidentBook(IncidentPolicy(**cfg.incidents.model_dump()),
                                      {b.name: b.severity for b in cfg.banks}, classifiers={
            a.name: ClassifierPolicy(a.incidents.confirm_k, a.incidents.confirm_n, a.incidents.window_s)
            for a in cfg.analyses if a.kind != "known_content"})
        self.negative_banks = NegativeBanks(cfg.banks)
        self.suppressed: dict[str, int] = {}
        self.metrics = Metrics()
        self.deltas = MetricDeltas(self.metrics)
        self.sampling_report = SamplingReport(self.metrics.sampling)
        self.last_sample: dict[str, float] = {}
        for b in banks:
            self.metrics.bank_entries.labels(b.name).set(len(b))
        self.bank_watcher = BankWatcher(cfg, self.metrics, lambda configs: self.supervisor.reload_banks(configs))
        self.reload_requested = self.bank_watcher.reload_requested  # SIGHUP sets it (monitor/cli/run.py)
        self.bank_reloads = self.bank_watcher.results
        self.supervisor = build_supervisor(cfg, banks, self)
        self.samples = 0
        self.servers = server_apis(cfg)
        # Announced streams (hooks, discovery): each bound to the publisher that registered it, within caps.
        self.origins = OriginTable(cfg.hooks.max_streams, cfg.hooks.max_streams_per_addr)
        self.namer = StreamNamer.load(cfg.state_dir / ID_KEY_FILE)  # keyed stream ids (monitor/servers/hooks/)
        self.states: dict[str, StateChange] = {}
        self.streams = Streams(self, self.origins, self.namer, self.states)
        self.enforcer = Enforcer(cfg.terminate, self.bans, self.namer)
        self.class_images = ClassifierImages()
        self.commands = Commands(self, self.incidents, cfg.state_dir, self.class_images, cfg.evidence.store_images,
                                 CommandTrustPolicy.from_config(cfg.web, cfg.terminate))
        self.alert_listeners: list[AlertListener] = []
        self.alerts_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- called from worker threads -------------------------------------------------------------------
    def on_state(self, change: StateChange) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._handle_state, change)

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._handle_sample, sample.stream_id, sample.media_time_s, findings,
                                        timing.done_at)
        observe_sample(self.metrics, sample, findings, timing)  # thread-safe: off the loop
        self.last_sample[sample.stream_id] = timing.done_at
        self.samples += 1

    def on_classified(self, sample: SampleInfo, analysis: str, findings: list[Finding], done_at: float) -> None:
        """Every sample a classifier scored (its own thread or a worker's events): on to the loop."""
        assert self._loop is not None
        for f in findings:
            self.metrics.matches.labels(f.bank).inc()
        self._loop.call_soon_threadsafe(self._handle_classified, sample, analysis, findings, done_at)

    def on_bank_reload(self, result: ReloadResult) -> None:
        """A reload's result from a worker (or this process's supervisor), from any thread: logged on the loop."""
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self.bank_watcher.reloaded, result)

    # -- on the loop: results ---------------------------------------------------------------------------
    def _stream_url(self, stream_id: str) -> str:
        return self.supervisor.urls.get(stream_id, "")

    def _handle_sample(self, stream_id: str, media_time_s: float, findings: list[Finding],
                       observed_at: float) -> None:
        origin = self.origins.get(stream_id)
        if findings and self.cfg.sampling.near_match_boost_s:
            self.supervisor.boost(stream_id, self.cfg.sampling.near_match_boost_s)  # look closer for a while
        kept, suppressed = self.negative_banks.apply(findings)
        if suppressed:
            self._suppress("negative bank", suppressed)
        events = self.incidents.on_sample(stream_id, media_time_s, kept)
        # Each match is recorded before the alert it leads to, with the incident it opened or joined (none when
        # it is unconfirmed, suppressed or on a negative bank): an incident's export holds its matches.
        # One the book counted without an incident yet is linked by the incident if it opens (link_folded).
        for f in findings:  # with evidence.store_images the sample too, as classifications
            image = records.sample_image(f) if self.cfg.evidence.store_images else {}
            key = (f.stream_id, f.bank, f.entry_id)
            self.evidence_writer.record("match", f.stream_id,
                                        records.hash_match(f, self._stream_url(f.stream_id), origin, image),
                                        self.incidents.incident_id_for(key),
                                        unlinked=key if any(k is f for k in kept) else None)
        self.emit(events, observed_at)

    def _handle_classified(self, sample: SampleInfo, analysis: str, findings: list[Finding],
                           observed_at: float) -> None:
        origin = self.origins.get(sample.stream_id)
        events = self.incidents.on_classified(sample.stream_id, analysis, sample.media_time_s, findings)
        for f in findings:  # recorded before the alert, with its incident (as hash matches)
            image = self.class_images.offer(f) if self.cfg.evidence.store_images else {}
            key = (f.stream_id, f.bank, f.entry_id)
            self.evidence_writer.record("match", f.stream_id,
                                        records.classification_match(f, self._stream_url(f.stream_id), origin,
                                                                     image),
                                        self.incidents.incident_id_for(key), unlinked=key)
        self.emit(events, observed_at)

    def _suppress(self, why: str, n: int = 1) -> None:
        self.suppressed[why] = self.suppressed.get(why, 0) + n
        self.metrics.suppressed.labels(why).inc(n)

    def emit(self, events: list[Event], observed_at: float) -> None:
        """Publish what the incident book decided: alerts for new incidents, retained incident states."""
        for ev in events:
            match ev:
                case NewIncident(incident=inc, finding=finding, alert_id=alert_id):
                    self.evidence_writer.link_folded(inc.key, inc.incident_id, inc.first_media_time_s,
                                                     inc.last_media_time_s)  # its unconfirmed matches
                    self.metrics.incidents.labels(inc.bank, inc.severity).inc()
                    self.metrics.alerts.labels(inc.bank).inc()
                    self._send_alert(finding, observed_at, alert_id, inc.incident_id)
                    self.send_incident(inc, "opened")
                    if inc.severity in self.cfg.terminate.auto_severities:
                        self.spawn(self._auto_terminate(inc))
                case IncidentUpdate(incident=inc, reason=reason):
                    self.send_incident(inc, reason)
                    if not inc.is_open:
                        self.class_images.pop(inc.key)
                case Suppressed(why=why):
                    self._suppress(why)
                case Quarantined():
                    log.warning("entry %s of bank %s matched %d streams within the window: quarantined as a "
                                "suspected noisy list entry (no alerts for it until %s)", ev.entry_id, ev.bank,
                                len(ev.streams), datetime.fromtimestamp(ev.until, UTC).isoformat())
                    self.record("note", "-", records.entry_quarantined(ev))
                case QuarantineLifted():
                    log.info("entry %s of bank %s: quarantine lifted", ev.entry_id, ev.bank)
                case _:
                    assert_never(ev)

    async def _auto_terminate(self, inc: Incident) -> None:
        await self.terminate(inc.stream_id, by="auto", reason=f"bank {inc.bank} entry {inc.entry_id}",
                             incident_id=inc.incident_id)

    def send_incident(self, inc: Incident, reason: str) -> None:
        """Publish (retained, durable) and record the incident's state."""
        self.announce.incident(inc, reason, self.origins.get(inc.stream_id))

    def _send_alert(self, f: Finding, observed_at: float, alert_id: str, incident_id: str) -> None:
        alert = self.announce.alert(f, observed_at, alert_id, incident_id)
        self.alerts_sent += 1
        for listener in self.alert_listeners:
            listener(alert)

    # -- on the loop: stream states ---------------------------------------------------------------------
    def _handle_state(self, change: StateChange) -> None:
        self.states[change.stream_id] = change
        topic = self._publish_state(change)
        if change.state in (StreamState.RECONNECTING, StreamState.STALLED):
            self.metrics.reconnects.labels(change.stream_id, change.state.value).inc()
        if change.state == StreamState.CONNECTING:
            self.last_sample.pop(change.stream_id, None)
        if change.state in TERMINAL:
            self.emit(self.incidents.stream_ended(change.stream_id), time.time())
            if not self.supervisor.has_stream(change.stream_id):
                self._forget_stream(change.stream_id, topic)
            self._idle.set()

    def _publish_state(self, change: StateChange) -> str:
        """The stream's retained state message (with what its sampling covered); returns its topic."""
        return self.announce.stream_state(change, self.sampling_report.detail(change.stream_id))

    def _forget_stream(self, stream_id: str, state_topic: str) -> None:
        """A removed stream leaves no trace in memory, metrics or retained state (hooks add streams forever)."""
        self.states.pop(stream_id, None)
        self.last_sample.pop(stream_id, None)
        self.origins.pop(stream_id, None)
        self.supervisor.urls.pop(stream_id, None)
        forget_stream_metrics(self.metrics, stream_id)
        self.sampling_report.forget(stream_id)
        self.publisher.clear_retained(state_topic)

    def _escalated(self, escalations: list[Escalation]) -> None:
        """Streams newly sampled densely as evasive: logged, recorded, shown in their retained state."""
        for e in escalations:
            signals = ", ".join(f"{k} x{v}" for k, v in sorted(e.signals.items()))
            log.warning("stream %s: escalated as evasive (score %.1f: %s): sampled densely", e.stream_id, e.score,
                        signals, extra={"stream_id": e.stream_id})
            self.record("note", e.stream_id, records.escalated(e))
            change = self.states.get(e.stream_id)
            if change is not None and change.state == StreamState.LIVE:
                self._publish_state(change)

    # -- evidence, commands, terminate ----------------------------------------------------------------
    def record(self, kind: str, stream_id: str, body: Mapping[str, object], incident_id: str | None = None) -> None:
        """Append to the evidence log in the background, in call order; failures are logged, never raised."""
        self.evidence_writer.record(kind, stream_id, body, incident_id)

    def sign_head(self) -> None:
        """Sign the evidence log's head behind the records waiting to be written; publish it once written."""
        self.evidence_writer.sign_head(self._head_signed(self._loop))

    def _head_signed(self, loop: asyncio.AbstractEventLoop | None) -> Callable[[EvidenceRecord], None]:
        def publish(rec: EvidenceRecord) -> None:  # on the writer thread
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.announce.evidence_head, rec)

        return publish

    def _on_command(self, topic: str, payload: bytes) -> None:
        """Console commands (see monitor/contracts/topics.py). Incidents own acknowledge/escalate/dismiss."""
        cmd = parse_command(topic, payload)
        if cmd is not None:
            self.handle_command(cmd)

    def handle_command(self, cmd: Command) -> None:
        self.commands.handle(cmd)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def terminate(self, stream_id: str, *, by: str, reason: str, incident_id: str | None = None) -> DropResult:
        """Ban the publisher (stream name, `key` arguments, address if configured), drop it, record what happened.

        Never raises: a ban list that cannot be written is reported in the result, the log and the evidence
        record, and the drop happens all the same; a server API that fails is a failed result."""
        origin = self.origins.get(stream_id)
        api = self.servers.get(origin.server) if origin is not None else None
        t = await self.enforcer.terminate(stream_id, origin, api, by=by, reason=reason)
        self.record("termination", stream_id, records.termination(stream_id, by, reason, t.result, t.bans,
                                                                  t.ban_error), incident_id)
        if t.result.ok:
            self.unwatch(stream_id)
        return t.result

    # -- stream registry (config, CLI, server hooks) ----------------------------------------------------
    def watch(self, stream: StreamConfig) -> None:
        self.supervisor.add_stream(stream)

    def unwatch(self, stream_id: str) -> None:
        self.supervisor.remove_stream(stream_id)

    def add_stream(self, stream_id: str, url: str, *, server: str, app: str, name: str,
                   publisher_addr: str | None, client_id: str | None = None, keys: tuple[str, ...] = ()) -> None:
        """Called by the hook server and discovery when a publish starts: start pulling it at once.

        Raises StreamRefused (monitor.servers.hooks) for a stream it will not watch: beyond hooks.max_streams or
        max_streams_per_addr, or an id still watched for another publisher (an origin stays bound to the
        stream it registered; it is replaced only once that stream is no longer watched, or has not been live
        for ORIGIN_REPLACE_AFTER_S since it registered: its unpublish was missed)."""
        self.streams.add(stream_id, url, server=server, app=app, name=name, publisher_addr=publisher_addr,
                         client_id=client_id, keys=keys)

    def remove_stream(self, stream_id: str, *, server: str | None = None, app: str | None = None,
                      name: str | None = None, publisher_addr: str | None = None,
                      client_id: str | None = None) -> None:
        """Called when a publish ends. Raises StreamRefused for an unpublish that names another publisher than
        the one registered (a decoy's publish_done must not end the real stream's monitoring)."""
        self.streams.remove(stream_id, server=server, app=app, name=name, publisher_addr=publisher_addr,
                            client_id=client_id)

    # -- health and metrics ---------------------------------------------------------------------------
    async def _health(self, stop: asyncio.Event) -> None:
        topic = topics.node_health(self.cfg.broker.topic_prefix, self.cfg.node)
        interval = self.cfg.delivery.health_interval_s
        while not stop.is_set():
            body = health_message(self.cfg.node, self.states, self.publisher, alerts_sent=self.alerts_sent,
                                  samples=self.samples, open_incidents=len(self.incidents.open_incidents()),
                                  suppressed=self.suppressed,
                                  quarantined=[f"{b}/{e}" for b, e in self.incidents.quarantined()],
                                  workers=self.supervisor.stats())
            self.publisher.send_json(topic, body, retain=True, expiry_s=int(interval * 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def _refresh_metrics(self) -> None:
        self.deltas.refresh(self.states, self.publisher, len(self.incidents.quarantined()),
                            self.supervisor.quarantined_total)
        workers = self.supervisor.stats()
        self._escalated(self.sampling_report.update(workers))
        self.deltas.dropped(workers)

    def health_input(self) -> HealthInput:
        return health_input(self.states, self.last_sample, self.supervisor, self.publisher)

    # -- lifecycle ------------------------------------------------------------------------------------
    async def _tick(self, stop: asyncio.Event) -> None:
        """Close quiet incidents, lift expired quarantines, and report streams escalated as evasive."""
        while not stop.is_set():
            self.emit(self.incidents.tick(), time.time())
            self._escalated(self.sampling_report.update(self.supervisor.stats()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    async def run(self, stop: asyncio.Event, *, until_streams_end: bool = False) -> None:
        """Runs until `stop` is set (or, with until_streams_end, every stream has ended or failed)."""
        self._loop = asyncio.get_running_loop()
        try:
            await self.publisher.start()  # raises BrokerError for a broker that refuses us
        except BaseException:
            self.state_lock.release()
            raise
        if self.outbox.depth():
            log.warning("outbox holds %d undelivered messages from an earlier run: sending them first",
                        self.outbox.depth())
        pub_stop = asyncio.Event()
        pub_task = asyncio.create_task(self.publisher.run(pub_stop))
        bg_stop = asyncio.Event()  # health and discovery end before the publisher drains
        health = asyncio.create_task(self._health(bg_stop))
        self.spawn(self._tick(bg_stop))
        self.spawn(self.bank_watcher.watch(bg_stop))
        self.spawn(self.evidence_writer.sign_heads(bg_stop, self._head_signed(self._loop)))
        hooks_runner = None
        metrics_runner = None
        try:
            # Workers first: a hook or discovery announcing a stream must find them started.
            await asyncio.to_thread(self.supervisor.start)
            if self.cfg.hooks.enabled:
                hooks_runner = await start_hooks(self.cfg, self, self.bans, self.namer, self.metrics)
            if self.cfg.metrics.enabled:
                mc = self.cfg.metrics
                metrics_runner = await start_metrics_server(
                    self.metrics, self._refresh_metrics, self.health_input,
                    HealthRules(mc.stale_sample_s, mc.max_outbox_age_s), mc.host, mc.port)
            discovery = make_discovery(self.cfg, self, self.servers, self.namer)
            if discovery is not None:
                self.spawn(discovery.run(bg_stop))
            for s in self.cfg.streams:
                self.watch(s)
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
            if until_streams_end:
                waits.append(asyncio.ensure_future(self._wait_idle()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        finally:
            for runner in (hooks_runner, metrics_runner):
                if runner is not None:
                    await runner.cleanup()
            await asyncio.to_thread(self.supervisor.stop_all)
            await asyncio.sleep(0)  # let the last call_soon_threadsafe callbacks run
            bg_stop.set()
            for t in list(self._tasks):
                await asyncio.wait_for(t, 10)
            self.sign_head()  # the last records are covered by a signature too
            await flush_on_shutdown(self.publisher, self.outbox.path)
            pub_stop.set()
            await pub_task
            await health
            self.evidence_writer.close()
            self.outbox.close()
            if self.evidence is not None:
                self.evidence.close()
            self.state_lock.release()

    async def _wait_idle(self) -> None:
        while True:
            await self._idle.wait()
            self._idle.clear()
            latest = [self.states.get(sid) for sid in self.supervisor.stream_ids()]
            if all(c is not None and c.state in TERMINAL for c in latest):
                return
