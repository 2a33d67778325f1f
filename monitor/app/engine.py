"""The main job: banks and pipelines, stream workers, delivery, evidence and server control, wired together.

Worker threads do the heavy work (decode, scale, hash, match) and hand results to the asyncio loop with
`call_soon_threadsafe`; everything that touches MQTT, the hook server and the server APIs runs on that loop.
Evidence records are written by one background thread, in order, so an fsync never stalls the loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter

from monitor.common.errors import UserError
from monitor.common.statefiles import StateLock, private_dir
from monitor.common.urls import redact_url
from monitor.config.models import MonitorConfig, StreamConfig
from monitor.contracts import topics
from monitor.contracts.alerts import build_alert
from monitor.delivery.mqtt import MqttPublisher
from monitor.delivery.outbox import Outbox, OutboxError
from monitor.evidence.records import IMAGE_KEY, EvidenceRecord
from monitor.evidence.signing import KeyFileError, key_id, load_signing_key
from monitor.evidence.store import EvidenceError, EvidenceLog
from monitor.incidents import (
    ClassifierPolicy,
    CommandError,
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
from monitor.runtime.bank_reload import load_banks as load_bank_files
from monitor.runtime.messages import TERMINAL, SampleReport, SampleTiming, StateChange, StreamState
from monitor.runtime.protocol import Supervisor
from monitor.runtime.supervisor import LocalSupervisor
from monitor.runtime.workers import ShardedSupervisor
from monitor.servers.api import DropResult, MediaMTXAPI, NginxRtmpAPI, ServerAPI, SrsAPI
from monitor.servers.bans import BanList
from monitor.servers.discovery import DiscoveredServer, Discovery
from monitor.servers.hooks import ID_KEY_FILE, ORIGIN_REPLACE_AFTER_S, Origin, OriginTable, StreamNamer
from pipelines.banks import Bank
from pipelines.base import Finding, SampleInfo

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0  # on SIGTERM, how long waiting alerts may take to reach the broker
AlertListener = Callable[[dict[str, Any]], None]


def load_banks(cfg: MonitorConfig) -> list[Bank]:
    banks = load_bank_files(cfg.banks)
    for b in banks:
        log.info("bank %s: %d %s entries, threshold %d", b.name, len(b), b.signal_type, b.threshold)
    return banks


def _file_stamp(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size


# Where a stream came from, when a streaming server told us (needed to drop and ban its publisher).
StreamOrigin = Origin


def make_server_api(kind: str, url: str) -> ServerAPI:
    apis: dict[str, type[ServerAPI]] = {"nginx-rtmp": NginxRtmpAPI, "srs": SrsAPI, "mediamtx": MediaMTXAPI}
    return apis[kind](url)


class Engine:
    def __init__(self, cfg: MonitorConfig, banks: Sequence[Bank]) -> None:
        self.cfg = cfg
        if cfg.workers != 0:  # worker processes build their own: a classifier that cannot run is refused here
            check_classifiers(cfg.analyses, cfg.matching)
        private_dir(cfg.state_dir)  # 0700: it holds publisher addresses and moderator names
        self.state_lock = StateLock.acquire(cfg.state_dir)  # a second monitor on this state stops here
        self.severity = {b.name: b.severity for b in cfg.banks}
        self.negative_banks = {b.name for b in cfg.banks if b.negative}
        self._bank_stamps = {b.name: _file_stamp(b.path) for b in cfg.banks}
        self.reload_requested = asyncio.Event()
        try:
            self.outbox = Outbox.open_recovering(cfg.state_dir / "outbox.sqlite",
                                                 max_bytes=cfg.delivery.outbox_max_mb * 2**20)
            self.evidence = (EvidenceLog(cfg.state_dir / "evidence.sqlite", store_images=cfg.evidence.store_images)
                             if cfg.evidence.enabled else None)
            key_file = cfg.evidence.signing_key_file
            self.head_key = (load_signing_key(key_file, state_dir=cfg.state_dir)
                             if self.evidence is not None and key_file is not None else None)
        except (OutboxError, EvidenceError, KeyFileError) as exc:
            self.state_lock.release()
            raise UserError(f"cannot open the monitor's state: {exc}") from None
        self.bans = BanList(cfg.state_dir / "bans.json")
        self.publisher = MqttPublisher(cfg.broker, cfg.node, self.outbox, on_command=self._on_command)
        self.incidents = IncidentBook(IncidentPolicy(**cfg.incidents.model_dump()), self.severity, classifiers={
            a.name: ClassifierPolicy(a.incidents.confirm_k, a.incidents.confirm_n, a.incidents.window_s)
            for a in cfg.analyses if a.kind != "known_content"})
        self.suppressed: dict[str, int] = {}
        self.metrics = Metrics()
        self.sampling_report = SamplingReport(self.metrics.sampling)
        self.last_sample: dict[str, float] = {}
        self._dropped_seen: dict[tuple[str, str], float] = {}
        self._counted: dict[int, float] = {}
        for b in banks:
            self.metrics.bank_entries.labels(b.name).set(len(b))
        n_workers = (os.cpu_count() or 1) if cfg.workers is None else cfg.workers
        self.supervisor: Supervisor = (
            # Worker processes load their own banks; the main process keeps none of them.
            LocalSupervisor(cfg.ingest, cfg.sampling,
                       make_analyses(cfg.analyses, banks, cfg.matching, cfg.evidence.store_images), self)
            if n_workers == 0 else
            ShardedSupervisor(n_workers, cfg.ingest, cfg.sampling, cfg.banks, cfg.matching, self,
                              cfg.log_format == "json", analyses=cfg.analyses,
                              store_images=cfg.evidence.store_images))
        self.samples = 0
        self.servers = {s.kind: make_server_api(s.kind, s.api_url) for s in cfg.servers}
        # Announced streams (hooks, discovery): each bound to the publisher that registered it, within caps.
        self.origins = OriginTable(cfg.hooks.max_streams, cfg.hooks.max_streams_per_addr)
        self.namer = StreamNamer.load(cfg.state_dir / ID_KEY_FILE)  # keyed stream ids (monitor/servers/hooks.py)
        self.states: dict[str, StateChange] = {}
        self.alert_listeners: list[AlertListener] = []
        self.bank_reloads: dict[str, ReloadResult] = {}  # the last result of each process that reloads
        self.alerts_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._evidence_writer = ThreadPoolExecutor(1, thread_name_prefix="evidence")
        self._tasks: set[asyncio.Task[Any]] = set()
        # With evidence.store_images: the best-scoring sample of each (stream, analysis, label), as base64 PNG.
        self._class_images: dict[tuple[str, str, str], tuple[float, str]] = {}

    # -- called from worker threads -------------------------------------------------------------------
    def on_state(self, change: StateChange) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._handle_state, change)

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._handle_sample, sample.stream_id, sample.media_time_s, findings,
                                        timing.done_at)
        # Prometheus metrics are thread-safe: observe here, off the loop.
        m = self.metrics
        m.samples.labels(sample.stream_id).inc()
        m.sample_lag.observe(timing.done_at - sample.received_at)
        m.stage.labels("decode").observe(timing.decode_s)
        for name, seconds in timing.stages:
            m.stage.labels(name).observe(seconds)
        for f in findings:
            m.matches.labels(f.bank).inc()
        self.last_sample[sample.stream_id] = timing.done_at
        self.samples += 1

    def on_classified(self, sample: SampleInfo, analysis: str, findings: list[Finding], done_at: float) -> None:
        """Every sample a classifier scored (its own thread or a worker's events): on to the loop."""
        assert self._loop is not None
        for f in findings:
            self.metrics.matches.labels(f.bank).inc()
        self._loop.call_soon_threadsafe(self._handle_classified, sample, analysis, findings, done_at)

    # -- on the loop ----------------------------------------------------------------------------------
    def _handle_classified(self, sample: SampleInfo, analysis: str, findings: list[Finding],
                           observed_at: float) -> None:
        origin = self.origins.get(sample.stream_id)
        for f in findings:
            image: dict[str, str] = {}
            if f.image_png is not None and self.cfg.evidence.store_images:
                image = {IMAGE_KEY: base64.b64encode(f.image_png).decode("ascii")}
                key = (f.stream_id, f.bank, f.entry_id)
                kept = self._class_images.get(key)
                if kept is None or (f.score or 0.0) >= kept[0]:  # the best-scoring sample, for the feedback
                    self._class_images.pop(key, None)
                    self._class_images[key] = (f.score or 0.0, image[IMAGE_KEY])
                    while len(self._class_images) > 1000:
                        self._class_images.pop(next(iter(self._class_images)))
            self.record("match", f.stream_id, {
                **image, "kind": f.kind, "media_time_s": f.media_time_s, "received_at": f.received_at, "bank": f.bank,
                "entry_id": f.entry_id, "entry_label": f.entry_label, "signal_type": f.signal_type,
                "sample_hash": f.sample_hash, "quality": f.quality, "label": f.label, "score": f.score,
                "score_threshold": f.score_threshold, "model_id": f.model_id, "severity": f.severity,
                "stream_url": self.supervisor.urls.get(f.stream_id, ""),
                "publisher_addr": origin.publisher_addr if origin else None,
            })
        self._emit(self.incidents.on_classified(sample.stream_id, analysis, sample.media_time_s, findings),
                   observed_at)

    def record(self, kind: str, stream_id: str, body: dict[str, Any], incident_id: str | None = None) -> None:
        """Append to the evidence log in the background, in call order; failures are logged, never raised."""
        if self.evidence is None:
            return
        evidence = self.evidence

        def write() -> None:
            try:
                evidence.append(kind, stream_id=stream_id, body=body, incident_id=incident_id)
            except Exception as exc:  # disk full, I/O error: keep watching streams, shout
                log.error("evidence log: could not record a %s for stream %s: %s", kind, stream_id, exc)

        self._evidence_writer.submit(write)

    def sign_head(self) -> None:
        """Sign the evidence log's head behind the records waiting to be written; publish and log it once written."""
        if self.evidence is None or self.head_key is None:
            return
        evidence, key, loop = self.evidence, self.head_key, self._loop

        def write() -> None:
            try:
                rec = evidence.sign_head(key, self.cfg.evidence.head_interval_s)
            except Exception as exc:
                log.error("evidence log: could not sign its head: %s", exc)
                return
            if rec is None:
                return  # nothing new since the last signed head
            head = rec.data()
            log.info("evidence head signed: %d records up to seq %d, hash %s, key %s (head record seq %d)",
                     head["count"], head["last_seq"], head["last_hash"], head["key_id"], rec.seq)
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._publish_head, rec)

        self._evidence_writer.submit(write)

    def _publish_head(self, rec: EvidenceRecord) -> None:
        topic = f"{self.cfg.broker.topic_prefix}/{self.cfg.node}/evidence/head"
        self.publisher.send_json(topic, {"node": self.cfg.node, "record_seq": rec.seq, "record_hash": rec.hash,
                                         **rec.data()}, retain=True)

    async def _sign_heads(self, stop: asyncio.Event) -> None:
        if self.evidence is not None and self.head_key is None:
            log.warning("evidence heads are not signed (evidence.signing_key_file is unset): whoever can write %s "
                        "can rewrite it undetectably; see `monitor evidence keygen`", self.evidence.path)
            return
        if self.head_key is not None:
            log.info("evidence heads are signed every %.0f s with key %s", self.cfg.evidence.head_interval_s,
                     key_id(self.head_key.public_key()))
        while not stop.is_set():
            self.sign_head()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.evidence.head_interval_s)

    def _handle_state(self, change: StateChange) -> None:
        self.states[change.stream_id] = change
        topic = self._publish_state(change)
        if change.state in (StreamState.RECONNECTING, StreamState.STALLED):
            self.metrics.reconnects.labels(change.stream_id, change.state.value).inc()
        if change.state == StreamState.CONNECTING:
            self.last_sample.pop(change.stream_id, None)
        if change.state in TERMINAL:
            self._emit(self.incidents.stream_ended(change.stream_id), time.time())
            if not self.supervisor.has_stream(change.stream_id):
                self._forget_stream(change.stream_id, topic)
            self._idle.set()

    def _publish_state(self, change: StateChange) -> str:
        """The stream's retained state message (with what its sampling covered); returns its topic."""
        body = {
            "node": self.cfg.node,
            "stream_id": change.stream_id,
            "stream_url": self.supervisor.urls.get(change.stream_id, ""),
            "state": change.state.value,
            "detail": change.detail,
            "attempt": change.attempt,
            "retry_in_s": change.retry_in_s,
            "at": change.at,
            "sampling": self.sampling_report.detail(change.stream_id),
        }
        topic = topics.stream_state(self.cfg.broker.topic_prefix, self.cfg.node, change.stream_id)
        self.publisher.send_json(topic, body, retain=True, user_properties=(("stream_id", change.stream_id),))
        return topic

    def _forget_stream(self, stream_id: str, state_topic: str) -> None:
        """A removed stream leaves no trace in memory, metrics or retained state (hooks add streams forever)."""
        self.states.pop(stream_id, None)
        self.last_sample.pop(stream_id, None)
        self.origins.pop(stream_id, None)
        self.supervisor.urls.pop(stream_id, None)
        for labels in ((stream_id,), *((stream_id, s) for s in ("reconnecting", "stalled"))):
            for metric in (self.metrics.samples, self.metrics.reconnects):
                with contextlib.suppress(KeyError, ValueError):
                    metric.remove(*labels)
        self.sampling_report.forget(stream_id)
        self.publisher.clear_retained(state_topic)

    def _handle_sample(self, stream_id: str, media_time_s: float, findings: list[Finding],
                       observed_at: float) -> None:
        origin = self.origins.get(stream_id)
        for f in findings:
            self.record("match", f.stream_id, {
                "media_time_s": f.media_time_s, "received_at": f.received_at, "bank": f.bank,
                "entry_id": f.entry_id, "entry_label": f.entry_label, "signal_type": f.signal_type,
                "sample_hash": f.sample_hash, "distance": f.distance, "threshold": f.threshold,
                "quality": f.quality, "stream_url": self.supervisor.urls.get(f.stream_id, ""),
                "publisher_addr": origin.publisher_addr if origin else None,
            })
        if findings and self.cfg.sampling.near_match_boost_s:
            self.supervisor.boost(stream_id, self.cfg.sampling.near_match_boost_s)  # look closer for a while
        negative = [f for f in findings if f.bank in self.negative_banks]
        if negative:
            # Known benign content: whatever else this sample matched is not news.
            n = sum(1 for f in findings if f.bank not in self.negative_banks)
            if n:
                self.suppressed["negative bank"] = self.suppressed.get("negative bank", 0) + n
                self.metrics.suppressed.labels("negative bank").inc(n)
            findings = []
        self._emit(self.incidents.on_sample(stream_id, media_time_s, findings), observed_at)

    def _emit(self, events: list[Event], observed_at: float) -> None:
        """Publish what the incident book decided: alerts for new incidents, retained incident states."""
        for ev in events:
            if isinstance(ev, NewIncident):
                self.metrics.incidents.labels(ev.incident.bank, ev.incident.severity).inc()
                self.metrics.alerts.labels(ev.incident.bank).inc()
                self._send_alert(ev.finding, observed_at, ev.alert_id, ev.incident.incident_id)
                self._send_incident(ev.incident, "opened")
                if ev.incident.severity in self.cfg.terminate.auto_severities:
                    self.spawn(self.terminate(ev.incident.stream_id, by="auto",
                                              reason=f"bank {ev.incident.bank} entry {ev.incident.entry_id}",
                                              incident_id=ev.incident.incident_id))
            elif isinstance(ev, IncidentUpdate):
                self._send_incident(ev.incident, ev.reason)
                if not ev.incident.is_open:
                    self._class_images.pop(ev.incident.key, None)
            elif isinstance(ev, Suppressed):
                self.suppressed[ev.why] = self.suppressed.get(ev.why, 0) + 1
                self.metrics.suppressed.labels(ev.why).inc()
            elif isinstance(ev, Quarantined):
                log.warning("entry %s of bank %s matched %d streams within the window: quarantined as a "
                            "suspected noisy list entry (no alerts for it until %s)", ev.entry_id, ev.bank,
                            len(ev.streams), datetime.fromtimestamp(ev.until, UTC).isoformat())
                self.record("note", "-", {"text": "entry quarantined", "bank": ev.bank, "entry_id": ev.entry_id,
                                          "streams": sorted(ev.streams)})
            elif isinstance(ev, QuarantineLifted):
                log.info("entry %s of bank %s: quarantine lifted", ev.entry_id, ev.bank)

    def _send_incident(self, inc: Incident, reason: str) -> None:
        origin = self.origins.get(inc.stream_id)
        body = inc.to_message(self.cfg.node, self.supervisor.urls.get(inc.stream_id, ""))
        topic = topics.incident(self.cfg.broker.topic_prefix, self.cfg.node, inc.incident_id)
        # Retained: a console that starts later sees every open incident; the outbox keeps the order.
        self.publisher.send_durable(str(uuid.uuid4()), topic, body, retain=True,
                                    user_properties=(("stream_id", inc.stream_id), ("bank", inc.bank)))
        self.record("incident", inc.stream_id, {**body, "reason": reason,
                                                "publisher_addr": origin.publisher_addr if origin else None},
                    inc.incident_id)

    def _send_alert(self, f: Finding, observed_at: float, alert_id: str, incident_id: str) -> dict[str, Any]:
        alert = build_alert(f, node=self.cfg.node, stream_url=self.supervisor.urls.get(f.stream_id, ""),
                            observed_at=observed_at, alert_id=alert_id, incident_id=incident_id)
        if f.kind == "classification":
            log.warning("ALERT stream=%s t=%.2fs classifier=%s label=%s score=%.3f/%.3f model=%s incident=%s",
                        f.stream_id, f.media_time_s, f.bank, f.label, f.score or 0.0, f.score_threshold or 0.0,
                        f.model_id, incident_id, extra={"stream_id": f.stream_id, "incident_id": incident_id})
        else:
            log.warning("ALERT stream=%s t=%.2fs bank=%s entry=%s distance=%d/%d quality=%d incident=%s",
                        f.stream_id, f.media_time_s, f.bank, f.entry_id, f.distance, f.threshold, f.quality,
                        incident_id, extra={"stream_id": f.stream_id, "incident_id": incident_id})
        topic = topics.alerts(self.cfg.broker.topic_prefix, self.cfg.node, f.stream_id)
        self.publisher.send_durable(alert_id, topic, alert,
                                    user_properties=(("stream_id", f.stream_id), ("bank", f.bank)))
        self.record("alert", f.stream_id, {"msg_id": alert_id, "topic": topic, "alert": alert}, incident_id)
        self.alerts_sent += 1
        for listener in self.alert_listeners:
            listener(alert)
        return alert

    def _on_command(self, topic: str, payload: bytes) -> None:
        """Console commands (see monitor/contracts/topics.py). Incidents own acknowledge/escalate/dismiss."""
        try:
            cmd = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("ignored a command on %s: not JSON", topic)
            return
        if not isinstance(cmd, dict):
            log.warning("ignored a command on %s: not a JSON object", topic)
            return
        self.handle_command(cmd)

    def handle_command(self, cmd: dict[str, Any]) -> None:
        try:
            outcome = self.incidents.apply_command(cmd)
        except CommandError as exc:
            log.warning("refused a console command from %r: %s", str(cmd.get("moderator"))[:100], exc)
            return
        inc = outcome.incident
        if outcome.duplicate:
            return  # MQTT delivered it again; it was applied once
        action = str(cmd["action"])
        self.record("action", inc.stream_id, {"moderator": cmd["moderator"], "action": action,
                                              "reason": cmd.get("reason") or "", "command_id": cmd["command_id"],
                                              "changed": outcome.changed, "message": outcome.message,
                                              "acted_at": datetime.now(UTC).isoformat()}, inc.incident_id)
        log.info("incident %s: %s by %r (%r)", inc.incident_id, action, cmd["moderator"], outcome.message)
        if outcome.changed:
            self._send_incident(inc, f"{action} by {cmd['moderator']}")
        if action == "dismiss" and outcome.changed and inc.kind == "classification":
            self._write_feedback(inc, cmd)
        if outcome.proposed_negative_entry is not None:
            bank, entry_id = outcome.proposed_negative_entry
            proposal = {"bank": bank, "entry_id": entry_id, "incident_id": inc.incident_id,
                        "moderator": cmd["moderator"], "reason": cmd.get("reason") or "",
                        "at": datetime.now(UTC).isoformat()}
            fd = os.open(self.cfg.state_dir / "negative-proposals.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8") as f:
                f.write(json.dumps(proposal) + "\n")
            log.info("entry %s of bank %s proposed for a negative bank (false positive)", entry_id, bank)
        if action == "terminate" and outcome.changed:
            command_id = str(cmd["command_id"])

            async def run() -> None:
                result = await self.terminate(inc.stream_id, by=str(cmd["moderator"]),
                                              reason=str(cmd.get("reason") or ""), incident_id=inc.incident_id)
                text = ("dropped" if result.ok else "failed") + f": {result.detail}"
                try:
                    self._emit(self.incidents.record_result(inc.incident_id, command_id, text), time.time())
                except CommandError as exc:  # the incident expired meanwhile: the evidence has the result
                    log.warning("terminate result for incident %s not published: %s", inc.incident_id, exc)

            self.spawn(run())

    def _write_feedback(self, inc: Incident, cmd: dict[str, Any]) -> None:
        """A dismissed classification, for the operator's model vendor: what was scored and what the moderator
        decided. No image unless evidence.store_images (then the best-scoring sample's PNG, base64)."""
        kept = self._class_images.pop(inc.key, None)
        record: dict[str, Any] = {"incident_id": inc.incident_id, "analysis": inc.bank, "model_id": inc.model_id,
                  "label": inc.entry_id, "score": inc.best_score, "score_threshold": inc.score_threshold,
                  "sample_hash": inc.sample_hash, "decision": "false_positive", "moderator": cmd["moderator"],
                  "reason": cmd.get("reason") or "", "samples": inc.samples,
                  "at": datetime.now(UTC).isoformat()}
        if kept is not None and self.cfg.evidence.store_images:
            record[IMAGE_KEY] = kept[1]
        try:
            fd = os.open(self.cfg.state_dir / "classifier-feedback.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                         0o600)
            with open(fd, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            log.error("classifier feedback for incident %s not written: %s", inc.incident_id, exc)
            return
        log.info("classifier feedback: %s %s scored %.2f dismissed by %r", inc.bank, inc.entry_id,
                 inc.best_score or 0.0, cmd["moderator"])

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def terminate(self, stream_id: str, *, by: str, reason: str, incident_id: str | None = None) -> DropResult:
        """Ban the publisher (stream name, `key` arguments, address if configured), drop it, record what happened.

        Never raises: a ban list that cannot be written is reported in the result, the log and the evidence
        record, and the drop happens all the same; a server API that fails is a failed result."""
        origin = self.origins.get(stream_id)
        ban_error: str | None = None
        banned: list[str] = []
        if origin is not None and self.cfg.terminate.ban:
            targets: list[tuple[Literal["key", "addr"], str]] = [
                ("key", k) for k in (origin.name, *(getattr(origin, "keys", None) or ())) if k]
            if self.cfg.terminate.ban_addr and origin.publisher_addr:
                targets.append(("addr", origin.publisher_addr))
            expires = (datetime.now(UTC) + timedelta(hours=self.cfg.terminate.ban_hours)
                       if self.cfg.terminate.ban_hours else None)

            def shown(kind: str, value: str) -> str:  # keys never reach logs or evidence as they are
                return kind if kind == "addr" else self.namer.mask(value)  # keyed: no dictionary attack

            # A value that cannot be a ban (a 5,000-character `key` argument) must not cost the others theirs.
            unbannable = [f"{shown(k, v)} ({why})" for k, v in targets if (why := self.bans.problem(k, v))]
            targets = [(k, v) for k, v in targets if self.bans.problem(k, v) is None]
            try:  # first: the publisher's client reconnects within seconds of the drop
                await asyncio.to_thread(self.bans.add_many, targets, reason=reason or "terminated", author=by,
                                        expires_at=expires)
                banned = [shown(kind, v) for kind, v in targets]
            except Exception as exc:  # BanListError (disk, permissions): report it, drop anyway
                ban_error = str(exc)
                log.error("terminate stream %s: ban NOT stored (the publisher's reconnect will not be refused): %s",
                          stream_id, exc)
            if unbannable:
                ban_error = "; ".join([*([ban_error] if ban_error else []), "not banned: " + ", ".join(unbannable)])
                log.error("terminate stream %s: not banned: %s", stream_id, ", ".join(unbannable))
        if origin is None:
            result = DropResult(False, f"stream {stream_id} was not announced by a streaming server hook")
        elif origin.server not in self.servers:
            result = DropResult(False, f"no API configured for server kind {origin.server} (servers: in config)")
        else:
            try:
                result = await self.servers[origin.server].drop_publisher(origin.app, origin.name)
            except Exception as exc:
                result = DropResult(False, f"server API failed: {type(exc).__name__}: {exc}")
        if ban_error is not None:
            result = replace(result, detail=f"{result.detail}; ban failed: {ban_error}")
        record = {"stream_id": stream_id, "by": by, "reason": reason, "ok": result.ok, "detail": result.detail,
                  "banned": bool(banned), "bans": banned, "ban_error": ban_error,
                  "terminated_at": datetime.now(UTC).isoformat()}
        (log.warning if result.ok else log.error)("terminate stream %s by %r: %s (%s)", stream_id, by,
                                                   "done" if result.ok else "FAILED", result.detail)
        self.record("termination", stream_id, record, incident_id)
        if result.ok:
            self.unwatch(stream_id)
        return result

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
        watched = self.supervisor.has_stream(stream_id) and stream_id not in self.supervisor.dead_streams()
        known = self.origins.get(stream_id)
        state = self.states.get(stream_id)
        stale = (known is not None and time.monotonic() - known.registered_at > ORIGIN_REPLACE_AFTER_S
                 and (state is None or state.state != StreamState.LIVE))
        verdict = self.origins.admit(stream_id, Origin(server, app, name, publisher_addr, client_id, keys=keys),
                                     replaceable=not watched or stale)
        if verdict == "same" and watched:
            return  # MediaMTX reports one publish twice (auth gate, then ready)
        origin = self.origins[stream_id]
        # The raw name (often the stream key) stays in the origin; logs and evidence get the keyed form.
        self.record("note", stream_id, {
            "text": "stream announced" if verdict == "new" else "stream announced again (new publisher)",
            "server": server, "app": app, "name": self.namer.redacted_name(server, app, name),
            "name_length": len(name), "publisher_addr": origin.publisher_addr, "client_id": origin.client_id,
            "announced_at": datetime.now(UTC).isoformat()})
        log.info("stream %s: announced by %s (%s), pulling %s", stream_id, server, publisher_addr or "?",
                 redact_url(url))
        if watched:
            return  # same URL: the reader carries on with the new publisher
        if self.supervisor.has_stream(stream_id):
            self.supervisor.remove_stream(stream_id)  # its worker ended (a file, a failure): start afresh
        try:
            self.watch(StreamConfig(id=stream_id, url=url))
        except Exception:
            self.origins.pop(stream_id, None)
            raise

    def remove_stream(self, stream_id: str, *, server: str | None = None, app: str | None = None,
                      name: str | None = None, publisher_addr: str | None = None,
                      client_id: str | None = None) -> None:
        """Called when a publish ends. Raises StreamRefused for an unpublish that names another publisher than
        the one registered (a decoy's publish_done must not end the real stream's monitoring)."""
        self.origins.release(stream_id, server=server, app=app, name=name, publisher_addr=publisher_addr,
                             client_id=client_id)
        self.unwatch(stream_id)

    # -- lifecycle ------------------------------------------------------------------------------------
    async def _health(self, stop: asyncio.Event) -> None:
        topic = topics.node_health(self.cfg.broker.topic_prefix, self.cfg.node)
        interval = self.cfg.delivery.health_interval_s
        while not stop.is_set():
            counts: dict[str, int] = {}
            for c in self.states.values():
                counts[c.state.value] = counts.get(c.state.value, 0) + 1
            # outbox_depth, outbox_oldest_age_s, outbox_writable, outbox_error, held_in_memory, ...
            body = {"node": self.cfg.node, "at": time.time(), "streams": counts,
                    **self.publisher.delivery_status(),
                    "alerts_sent": self.alerts_sent, "samples": self.samples,
                    "open_incidents": len(self.incidents.open_incidents()), "suppressed": self.suppressed,
                    "quarantined": [f"{b}/{e}" for b, e in self.incidents.quarantined()],
                    "sampling": self._sampling_summary()}
            self.publisher.send_json(topic, body, retain=True, expiry_s=int(interval * 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def _refresh_metrics(self) -> None:
        m = self.metrics
        counts = dict.fromkeys((s.value for s in StreamState), 0)
        for c in self.states.values():
            counts[c.state.value] += 1
        for state, n in counts.items():
            m.streams.labels(state).set(n)
        pub = self.publisher
        m.outbox_depth.set(pub.durable_pending - pub.held)
        m.outbox_age.set(pub.oldest_pending_age_s() or 0.0)
        m.outbox_writable.set(1 if pub.outbox_error is None else 0)
        m.outbox_held.set(pub.held)
        for counter, total in ((m.outbox_write_errors, pub.outbox_errors), (m.outbox_held_total, pub.held_total),
                               (m.outbox_dropped, pub.dropped)):
            self._count_up(counter, total)
        m.mqtt_connected.set(1 if self.publisher.connected.is_set() else 0)
        m.quarantined.set(len(self.incidents.quarantined()))
        self._count_up(m.streams_quarantined, self.supervisor.quarantined_total)
        self._sampling_metrics()

    def _sampling_metrics(self) -> None:
        """Drop counters from the workers' cumulative figures, as increments (Prometheus counters only grow)."""
        seen: dict[tuple[str, str], float] = {}
        workers = self.supervisor.stats()
        self._escalated(self.sampling_report.update(workers))
        for worker in workers:
            for sid, st in worker["scheduler"]["streams"].items():
                seen[(sid, "budget")] = st["dropped_budget"]
                seen[(sid, "decode_budget")] = st["forward_refused"]
            q = worker["queue"]
            for reason, key in (("queue_full", "dropped_full"), ("stale", "dropped_stale")):
                seen[("*", reason)] = seen.get(("*", reason), 0) + q[key]
        for (sid, reason), total in seen.items():
            delta = total - self._dropped_seen.get((sid, reason), 0)
            if delta > 0:
                self.metrics.dropped.labels(sid, reason).inc(delta)
            self._dropped_seen[(sid, reason)] = total

    def _escalated(self, escalations: list[Escalation]) -> None:
        """Streams newly sampled densely as evasive: logged, recorded, shown in their retained state."""
        for e in escalations:
            signals = ", ".join(f"{k} x{v}" for k, v in sorted(e.signals.items()))
            log.warning("stream %s: escalated as evasive (score %.1f: %s): sampled densely", e.stream_id, e.score,
                        signals, extra={"stream_id": e.stream_id})
            self.record("stream.escalated", e.stream_id, {"signals": e.signals, "score": e.score,
                                                          "blind_interval_s": e.blind_interval_s})
            change = self.states.get(e.stream_id)
            if change is not None and change.state == StreamState.LIVE:
                self._publish_state(change)

    def _sampling_summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for worker in self.supervisor.stats():
            sch, q = worker["scheduler"], worker["queue"]
            for key in ("admitted", "dropped_budget", "skipped_interval"):
                out[key] = out.get(key, 0) + sch[key]
            for key in ("dropped_full", "dropped_stale"):
                out[key] = out.get(key, 0) + q[key]
        return out

    def health_input(self) -> HealthInput:
        watched = set(self.supervisor.stream_ids())
        live = {sid: self.last_sample.get(sid) for sid, c in self.states.items()
                if c.state == StreamState.LIVE and sid in watched}
        dead = [sid for sid in self.supervisor.dead_streams()
                if (c := self.states.get(sid)) is not None and c.state not in TERMINAL]
        pub = self.publisher
        return HealthInput(live, dead, pub.connected.is_set(), pub.oldest_pending_age_s(),
                           outbox_error=pub.outbox_error, held_in_memory=pub.held)

    def _count_up(self, counter: Counter, total: float) -> None:
        """Bring a Prometheus counter up to a running total kept elsewhere."""
        seen = self._counted.get(id(counter), 0.0)
        if total > seen:
            counter.inc(total - seen)
        self._counted[id(counter)] = total

    async def _watch_banks(self, stop: asyncio.Event) -> None:
        """Reload banks whose files changed (or all, on SIGHUP): validated here, swapped atomically by workers."""
        while not stop.is_set():
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()),
                                                asyncio.ensure_future(self.reload_requested.wait())]
            await asyncio.wait(waits, timeout=self.cfg.bank_reload.interval_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if stop.is_set():
                return
            forced = self.reload_requested.is_set()
            self.reload_requested.clear()
            stamps = {b.name: _file_stamp(b.path) for b in self.cfg.banks}
            if not forced and (not self.cfg.bank_reload.watch or stamps == self._bank_stamps):
                continue
            await self.reload_banks(stamps)

    def on_bank_reload(self, result: ReloadResult) -> None:
        """A reload's result from a worker (or this process's supervisor), from any thread: logged here."""
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._bank_reloaded, result)

    def _bank_reloaded(self, result: ReloadResult) -> None:
        who = "this process" if result.worker is None else f"worker {result.worker}"
        self.bank_reloads[who] = result
        if result.ok:
            log.info("bank reload %d in %s: %s", result.generation, who, result.detail)
        else:
            log.error("bank reload %d in %s FAILED, it keeps matching with its previous banks: %s",
                      result.generation, who, result.detail)

    async def reload_banks(self, stamps: dict[str, tuple[float, int] | None] | None = None) -> bool:
        t0 = time.perf_counter()
        try:
            banks = await asyncio.to_thread(load_bank_files, self.cfg.banks)
        except UserError as exc:
            log.error("bank reload refused, the loaded banks stay in use: %s", exc)
            return False
        finally:
            self._bank_stamps = stamps or {b.name: _file_stamp(b.path) for b in self.cfg.banks}
        self.supervisor.reload_banks(self.cfg.banks)
        elapsed = time.perf_counter() - t0
        for b in banks:
            self.metrics.bank_entries.labels(b.name).set(len(b))
            self.metrics.bank_reload.labels(b.name).observe(elapsed)
        log.info("banks reloaded (%s) in %.2f s", ", ".join(f"{b.name}: {len(b)}" for b in banks), elapsed)
        return True

    async def _tick(self, stop: asyncio.Event) -> None:
        """Close quiet incidents, lift expired quarantines, and report streams escalated as evasive."""
        while not stop.is_set():
            self._emit(self.incidents.tick(), time.time())
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
        self.spawn(self._watch_banks(bg_stop))
        self.spawn(self._sign_heads(bg_stop))
        hooks_runner = None
        metrics_runner = None
        try:
            # Workers first: a hook or discovery announcing a stream must find them started.
            await asyncio.to_thread(self.supervisor.start)
            if self.cfg.hooks.enabled:
                hooks_runner = await self._start_hooks()
            if self.cfg.metrics.enabled:
                mc = self.cfg.metrics
                metrics_runner = await start_metrics_server(
                    self.metrics, self._refresh_metrics, self.health_input,
                    HealthRules(mc.stale_sample_s, mc.max_outbox_age_s), mc.host, mc.port)
            discovery = self._discovery()
            if discovery is not None:
                self.spawn(discovery.run(bg_stop))
            for s in self.cfg.streams:
                self.watch(s)
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
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
            await self._flush_on_shutdown()
            pub_stop.set()
            await pub_task
            await health
            self._evidence_writer.shutdown(wait=True)
            self.outbox.close()
            if self.evidence is not None:
                self.evidence.close()
            self.state_lock.release()

    async def _flush_on_shutdown(self) -> None:
        """Deliver what waits before the connection closes; say plainly what, if anything, is left."""
        pub = self.publisher
        waiting = pub.durable_pending
        if waiting:
            log.info("shutting down: delivering %d alerts and incident updates that wait", waiting)
        if await pub.flush(SHUTDOWN_FLUSH_S):
            log.info("shutdown: outbox flushed, every alert and incident update was delivered")
            return
        stored = pub.durable_pending - pub.held
        log.error("shutdown: %d alerts and incident updates not delivered within %.0f s (broker %s): %d stay in "
                  "the outbox %s and are sent after a restart, %d held in memory only (the outbox could not store "
                  "them) are lost", pub.durable_pending, SHUTDOWN_FLUSH_S,
                  "connected" if pub.connected.is_set() else "unreachable", stored, self.outbox.path, pub.held)

    def _discovery(self) -> Discovery | None:
        from monitor.servers.hooks import DEFAULT_PULL_URL_TEMPLATES

        polled = [s for s in self.cfg.servers if s.discover]
        if not polled:
            return None
        servers = [DiscoveredServer(s.kind, self.servers[s.kind], s.pull_url_template
                                    or self.cfg.hooks.pull_url_templates.get(s.kind)
                                    or DEFAULT_PULL_URL_TEMPLATES[s.kind]) for s in polled]
        return Discovery(self, servers, min(s.poll_interval_s for s in polled), self.namer)

    async def _start_hooks(self) -> Any:
        from monitor.config.models import hook_secret
        from monitor.servers.hooks import HookSettings, start_hook_server

        h = self.cfg.hooks
        settings = HookSettings(secret=hook_secret(h), host=h.host, port=h.port,
                                pull_url_templates=dict(h.pull_url_templates), fail_open=h.fail_open,
                                token_peers=h.token_peers, signature_window_s=h.signature_window_s,
                                mediamtx_ready_timeout_s=h.mediamtx_ready_timeout_s)
        return await start_hook_server(self, self.bans, settings, namer=self.namer,
                                       count=lambda outcome, reason: self.metrics.hook_publishes.labels(
                                           outcome, reason).inc())

    async def _wait_idle(self) -> None:
        while True:
            await self._idle.wait()
            self._idle.clear()
            latest = [self.states.get(sid) for sid in self.supervisor.stream_ids()]
            if all(c is not None and c.state in TERMINAL for c in latest):
                return
