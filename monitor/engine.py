"""The main job: banks and pipelines, stream workers, and the MQTT side, wired together.

Worker threads do the heavy work (decode, scale, hash, match) and hand results to the asyncio loop with
`call_soon_threadsafe`; everything that touches MQTT runs on that one loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from monitor import topics
from monitor.alerts import CooldownGate, build_alert
from monitor.config import MonitorConfig, StreamConfig
from monitor.mqtt import MqttPublisher
from monitor.supervisor import StateChange, StreamState, Supervisor
from pipelines.banks import Bank, load_bank
from pipelines.base import Finding, Sample
from pipelines.known_content import KnownContentMatcher

log = logging.getLogger(__name__)

TERMINAL = (StreamState.ENDED, StreamState.FAILED)
AlertListener = Callable[[dict[str, Any]], None]


def load_banks(cfg: MonitorConfig) -> list[Bank]:
    banks = [load_bank(b.path, b.name, b.signal_type, b.threshold) for b in cfg.banks]
    for b in banks:
        log.info("bank %s: %d %s entries, threshold %d", b.name, len(b), b.signal_type, b.threshold)
    return banks


class Engine:
    def __init__(self, cfg: MonitorConfig, banks: Sequence[Bank]) -> None:
        self.cfg = cfg
        self.matcher = KnownContentMatcher(banks, cfg.matching.min_quality)
        self.publisher = MqttPublisher(cfg.broker, cfg.node)
        self.gate = CooldownGate(cfg.alerts.cooldown_s)
        self.supervisor = Supervisor(cfg.ingest, cfg.sampling, [self.matcher], self)
        self.states: dict[str, StateChange] = {}
        self.alert_listeners: list[AlertListener] = []
        self.alerts_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()

    # -- called from worker threads -------------------------------------------------------------------
    def on_state(self, change: StateChange) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._handle_state, change)

    def on_findings(self, sample: Sample, findings: list[Finding]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._handle_findings, findings, time.time())

    # -- on the loop ----------------------------------------------------------------------------------
    def _handle_state(self, change: StateChange) -> None:
        self.states[change.stream_id] = change
        body = {
            "node": self.cfg.node,
            "stream_id": change.stream_id,
            "stream_url": self.supervisor.urls.get(change.stream_id, ""),
            "state": change.state.value,
            "detail": change.detail,
            "attempt": change.attempt,
            "retry_in_s": change.retry_in_s,
            "at": change.at,
        }
        topic = topics.stream_state(self.cfg.broker.topic_prefix, self.cfg.node, change.stream_id)
        self.publisher.send_json(topic, body, retain=True, user_properties=(("stream_id", change.stream_id),))
        if change.state in TERMINAL:
            self._idle.set()

    def _handle_findings(self, findings: list[Finding], observed_at: float) -> None:
        for f in findings:
            if not self.gate.admit(f):
                continue
            alert = build_alert(f, node=self.cfg.node, stream_url=self.supervisor.urls.get(f.stream_id, ""),
                                observed_at=observed_at)
            log.warning("ALERT stream=%s t=%.2fs bank=%s entry=%s distance=%d/%d quality=%d",
                        f.stream_id, f.media_time_s, f.bank, f.entry_id, f.distance, f.threshold, f.quality)
            topic = topics.alerts(self.cfg.broker.topic_prefix, self.cfg.node, f.stream_id)
            self.publisher.send_json(topic, alert, user_properties=(("stream_id", f.stream_id),
                                                                     ("bank", f.bank)))
            self.alerts_sent += 1
            for listener in self.alert_listeners:
                listener(alert)

    def add_stream(self, stream: StreamConfig) -> None:
        self.supervisor.add_stream(stream)

    def remove_stream(self, stream_id: str) -> None:
        self.supervisor.remove_stream(stream_id)
        self.gate.forget_stream(stream_id)

    async def run(self, stop: asyncio.Event, *, until_streams_end: bool = False) -> None:
        """Runs until `stop` is set (or, with until_streams_end, every stream has ended or failed)."""
        self._loop = asyncio.get_running_loop()
        await self.publisher.start()  # raises BrokerError for a broker that refuses us
        pub_stop = asyncio.Event()
        pub_task = asyncio.create_task(self.publisher.run(pub_stop))
        try:
            for s in self.cfg.streams:
                self.add_stream(s)
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
            if until_streams_end:
                waits.append(asyncio.ensure_future(self._wait_idle()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        finally:
            await asyncio.to_thread(self.supervisor.stop_all)
            await asyncio.sleep(0)  # let the last call_soon_threadsafe callbacks run
            if not await self.publisher.flush(5.0):
                log.error("shutting down with %d MQTT messages not delivered", self.publisher.pending)
            pub_stop.set()
            await pub_task

    async def _wait_idle(self) -> None:
        while True:
            await self._idle.wait()
            self._idle.clear()
            latest = [self.states.get(sid) for sid in self.supervisor.workers]
            if all(c is not None and c.state in TERMINAL for c in latest):
                return
