"""The node's MQTT connection: alerts at QoS 1, retained node and stream status, reconnect with backoff.

aiomqtt 2.x neither buffers offline nor reconnects, so this module owns both: outgoing messages wait in a
queue until a connection takes them, and a message whose publish fails is put back at the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.common.errors import BrokerError
from monitor.common.urls import redact_url
from monitor.config.models import BrokerConfig
from monitor.contracts import topics
from monitor.delivery.connection import MqttConnection, describe_connect_error, negotiate_protocol, protocol_name
from monitor.delivery.outbox import Outbox, OutboxError, OutboxMessage

log = logging.getLogger(__name__)

MEMORY_LIMIT = 10_000  # alerts and incident updates held in memory while the outbox cannot store them
RECOVERY_INTERVAL_S = 1.0  # how often a held message is offered to the outbox again
FLUSH_RETRY_S = 0.25  # reconnect interval while shutting down
SENT_RETENTION_S = 24 * 3600.0  # sent rows are kept this long (dedupe of re-detections), then purged
PURGE_INTERVAL_S = 600.0
STORE_BATCH = 100  # held messages moved into the outbox per turn of the event loop


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    user_properties: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    expiry_s: int | None = None  # MQTT 5 message expiry: stale health must vanish, not mislead


CommandHandler = Callable[[str, bytes], None]


class MqttPublisher:
    """Owns one connection; `send*` never blocks, and a message is only given up when memory runs out.

    Alerts and incident updates go through the durable outbox when there is one: they survive a broker
    outage and a crash, and are sent at least once with a stable id. Status, stream states and health are
    'latest value' messages: kept in memory and re-sent after every reconnect.

    When the outbox cannot be written (disk full, the outbox's size cap reached, an I/O error), a durable
    message is held in memory instead and published directly, at QoS 1, as soon as the broker is connected:
    while the broker is up, alerts keep arriving as usual; what is held does not survive a crash of the
    monitor. Held messages are stored in the outbox as soon as it can be written again (checked every
    RECOVERY_INTERVAL_S). At most memory_limit messages are held: beyond that the oldest held incident
    update is dropped (a later update of the incident carries its state and history), or, when only alerts
    are held, the new message; each drop is logged and counted. `outbox_error` says what went wrong while it
    lasts; a message delivered while its row could not be marked sent is remembered and marked later (after
    a crash in between it is sent once more, with the same id).
    """

    def __init__(self, cfg: BrokerConfig, node: str, outbox: Outbox | None = None,
                 on_command: CommandHandler | None = None, *, memory_limit: int = MEMORY_LIMIT) -> None:
        self.cfg = cfg
        self.node = node
        self.outbox = outbox
        self.on_command = on_command
        self.memory_limit = memory_limit
        self.client_id = f"monitor-{node}"
        self.protocol = aiomqtt.ProtocolVersion.V311
        self._conn = MqttConnection(
            cfg, self.client_id,
            subscriptions=[topics.commands(cfg.topic_prefix, node)] if on_command is not None else [],
            on_message=self._on_command if on_command is not None else None,
            on_connected=self._on_connected, on_lost=self._on_lost)
        self.connected = self._conn.connected  # set while connected
        self._queue: deque[Outgoing] = deque()
        self._held: deque[OutboxMessage] = deque()  # durable messages the outbox could not store (oldest first)
        self._in_flight: OutboxMessage | None = None  # a held message being published right now
        self._unmarked: set[str] = set()  # delivered from the outbox, but mark_sent failed: not to be sent again
        self._wake = asyncio.Event()
        self._flushing = asyncio.Event()  # shutting down: reconnect at once and often, to deliver what waits
        self._said_flush_retry = False
        self._retained: dict[str, Outgoing] = {}  # latest state per topic, re-sent after each reconnect
        self.sent = 0
        self.outbox_error: str | None = None  # the last outbox write error, until the outbox can be written again
        self.outbox_errors = 0  # failed outbox writes
        self.held_total = 0  # durable messages that had to be held in memory
        self.dropped = 0  # held messages given up because memory_limit was reached

    # -- what waits -----------------------------------------------------------------------------------

    def _stored_waiting(self) -> int:
        """Outbox rows still to be published (rows delivered but not yet marked sent do not count)."""
        if self.outbox is None:
            return 0
        try:
            return max(0, self.outbox.depth() - len(self._unmarked))
        except OutboxError as exc:
            log.error("cannot read the outbox: %s", exc)
            return 0

    @property
    def reconnects(self) -> int:
        """Connections lost or refused so far."""
        return self._conn.reconnects

    @property
    def held(self) -> int:
        """Durable messages held in memory only (not stored, not yet delivered)."""
        return len(self._held) + (self._in_flight is not None)

    @property
    def pending(self) -> int:
        return len(self._queue) + self.held + self._stored_waiting()

    @property
    def durable_pending(self) -> int:
        """Alerts and incident updates not yet delivered: in the outbox or held in memory."""
        return self.held + self._stored_waiting()

    def oldest_pending_age_s(self, now: float | None = None) -> float | None:
        """Age of the oldest undelivered alert or incident update, stored or held; None when there is none."""
        now = time.time() if now is None else now
        created = [m.created_at for m in (*self._held, *([self._in_flight] if self._in_flight else []))]
        if self.outbox is not None:
            try:
                rows = self.outbox.pending(len(self._unmarked) + 1)
            except OutboxError as exc:
                log.error("cannot read the outbox: %s", exc)
                rows = []
            created += [m.created_at for m in rows if m.msg_id not in self._unmarked][:1]
        return max(0.0, now - min(created)) if created else None

    def delivery_status(self) -> dict[str, Any]:
        """For the node's health message."""
        return {"outbox_depth": self._stored_waiting(), "outbox_oldest_age_s": self.oldest_pending_age_s(),
                "outbox_writable": self.outbox_error is None, "outbox_error": self.outbox_error,
                "held_in_memory": self.held, "outbox_write_errors": self.outbox_errors,
                "held_total": self.held_total, "dropped": self.dropped}

    # -- sending --------------------------------------------------------------------------------------

    def send(self, msg: Outgoing) -> None:
        if msg.retain:
            self._retained[msg.topic] = msg
        self._queue.append(msg)
        self._wake.set()

    def clear_retained(self, topic: str) -> None:
        """An empty retained message deletes the broker's copy (and ours, so it is not re-sent)."""
        self._retained.pop(topic, None)
        self._queue.append(Outgoing(topic, b"", 1, True))
        self._wake.set()

    def send_json(self, topic: str, body: dict[str, Any], *, retain: bool = False,
                  user_properties: tuple[tuple[str, str], ...] = (), expiry_s: int | None = None) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send(Outgoing(topic, payload, 1, retain, user_properties, expiry_s))

    def send_durable(self, msg_id: str, topic: str, body: dict[str, Any], *, retain: bool = False,
                     user_properties: tuple[tuple[str, str], ...] = ()) -> None:
        """Store first (fsync), publish later: the alert exists on disk before anyone is told.

        If the outbox cannot store it, it is held in memory and published directly (see the class).
        """
        payload = json.dumps(body, separators=(",", ":")).encode()
        props = (("msg_id", msg_id), *user_properties)
        om = OutboxMessage(msg_id, topic, payload, 1, retain, time.time(), 0, props)
        if self.outbox is not None and self._held:
            self._store_held()  # what is held goes to disk first: the order stays
        if self.outbox is None or self._held or not self._store(om):
            self._hold(om, quiet=self.outbox is None)
        self._wake.set()

    def _store(self, om: OutboxMessage) -> bool:
        """Put one message into the outbox; False (error noted) when it could not be stored."""
        assert self.outbox is not None
        try:
            self.outbox.put(om)
        except OutboxError as exc:
            self._write_failed(exc)
            return False
        except ValueError as exc:  # never for messages made here; still not a reason to lose one
            log.error("outbox refused message %s for %s (%s): held in memory", om.msg_id, om.topic, exc)
            return False
        self._write_ok()
        return True

    def _store_held(self, limit: int = STORE_BATCH) -> int:
        """Move up to limit held messages into the outbox, oldest first; returns how many.

        Each put is an fsync on the event loop: a long backlog goes in batches, between which the loop runs.
        """
        stored = 0
        while self._held and stored < limit and self._store(self._held[0]):
            self._held.popleft()
            stored += 1
        if stored:
            log.warning("outbox %s: %d messages held in memory are stored now (%d still held)",
                        self.outbox.path if self.outbox else "-", stored, len(self._held))
            self._wake.set()
        return stored

    def _hold(self, om: OutboxMessage, *, quiet: bool = False) -> None:
        if len(self._held) >= self.memory_limit:
            victim = next((m for m in self._held if m.retain), om)  # incident updates go first
            self.dropped += 1
            log.error("%d messages are held in memory already (the limit): dropped message %s for %s; "
                      "it is not delivered", len(self._held), victim.msg_id, victim.topic)
            if victim is om:
                return
            self._held.remove(victim)
        self._held.append(om)
        if not quiet:
            self.held_total += 1
            log.warning("message %s for %s not stored in the outbox: held in memory and published "
                        "directly (%d held)", om.msg_id, om.topic, len(self._held))

    def _write_failed(self, exc: OutboxError) -> None:
        self.outbox_errors += 1
        first = self.outbox_error is None
        self.outbox_error = str(exc)
        if first:
            log.error("%s%s: alerts and incident updates are held in memory (at most %d) and published "
                      "directly while the broker is connected; until they are delivered or stored they do not "
                      "survive a crash. Retried every %.0f s.", exc,
                      " (disk full? free space where the outbox lives)" if exc.disk_full else "",
                      self.memory_limit, RECOVERY_INTERVAL_S)

    def _write_ok(self) -> None:
        if self.outbox_error is not None and not self._held and not self._unmarked:
            self.outbox_error = None
            log.warning("outbox %s can be written again: alerts are stored before they are published, as usual",
                        self.outbox.path if self.outbox else "-")

    def _recover(self) -> bool:
        """Retry what a failed write left behind; with nothing left, probe whether the outbox is writable again.

        True when a batch of held messages was stored and more are held: call again soon.
        """
        if self.outbox is None or (self.outbox_error is None and not self._held and not self._unmarked):
            return False
        if self._held:
            stored = self._store_held()
            if self._held:
                return stored > 0
        if self._unmarked:
            try:
                self.outbox.mark_sent(list(self._unmarked))
            except OutboxError as exc:
                self._write_failed(exc)
                return False
            self._unmarked.clear()
            self._wake.set()
        if self.outbox_error is not None:
            try:
                self.outbox.check_writable()
            except OutboxError as exc:
                self._write_failed(exc)
                return False
            self._write_ok()
        return False

    async def _maintain(self) -> None:
        """Forever (cancelled by run): recover from outbox write errors; purge long-sent rows."""
        purged_at = -PURGE_INTERVAL_S
        while True:
            again = self._recover()
            due = time.monotonic() - purged_at >= PURGE_INTERVAL_S
            if self.outbox is not None and self.outbox_error is None and due:
                purged_at = time.monotonic()
                try:
                    n = await asyncio.to_thread(self.outbox.purge_sent, SENT_RETENTION_S)
                except OutboxError as exc:
                    log.warning("could not purge sent messages from the outbox: %s", exc)
                else:
                    if n:
                        log.info("outbox: purged %d messages sent more than %.0f h ago", n, SENT_RETENTION_S / 3600)
            await asyncio.sleep(0 if again else RECOVERY_INTERVAL_S)

    async def start(self) -> None:
        """First connection check: a broker that refuses us is an operator error, reported at once."""
        self.protocol = await negotiate_protocol(self.cfg, self.client_id)

    def _status(self, state: str) -> bytes:
        return json.dumps({"node": self.node, "state": state, "at": time.time()}).encode()

    def _properties(self, msg: Outgoing) -> Properties | None:
        if self.protocol != aiomqtt.ProtocolVersion.V5:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = "application/json"
        if msg.user_properties:
            props.UserProperty = list(msg.user_properties)
        if msg.expiry_s is not None:
            props.MessageExpiryInterval = msg.expiry_s
        return props

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, reconnecting with backoff; connected then, it says 'offline' (retained) last."""
        status_topic = topics.node_status(self.cfg.topic_prefix, self.node)
        self._conn.will = aiomqtt.Will(status_topic, self._status("offline"), qos=1, retain=True)
        self._conn.protocol = self.protocol
        maintain = asyncio.create_task(self._maintain())
        try:
            await self._conn.run(stop, lambda client: self._session(client, stop), wake=self._flushing)
        finally:
            maintain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintain

    def _on_connected(self) -> None:
        log.info("connected to MQTT broker %s (MQTT %s)", redact_url(self.cfg.url), protocol_name(self.protocol))

    def _on_lost(self, exc: Exception, wait_s: float) -> float:
        """Say why and when the next try is; while shutting down (flush) retry every FLUSH_RETRY_S instead."""
        flushing = self._flushing.is_set()
        wait_s = FLUSH_RETRY_S if flushing else wait_s
        if isinstance(exc, aiomqtt.MqttError | BrokerError):
            # While shutting down it retries every FLUSH_RETRY_S: said once, not each time.
            say = log.debug if flushing and self._said_flush_retry else log.warning
            self._said_flush_retry = flushing
            why = str(exc) if isinstance(exc, BrokerError) else describe_connect_error(self.cfg, exc)
            say("MQTT connection lost or refused (%s); %d messages waiting; retry in %.1f s%s",
                why, self.pending, wait_s, " (shutting down: retrying until the flush times out)" if flushing else "")
        else:  # anything else must not end delivery either
            log.error("MQTT publisher failed unexpectedly; %d messages waiting; reconnect in %.1f s",
                      self.pending, wait_s, exc_info=exc)
        return wait_s

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """One connection: 'online', the latest retained state again, then what waits, until stopped."""
        status_topic = topics.node_status(self.cfg.topic_prefix, self.node)
        await client.publish(status_topic, self._status("online"), qos=1, retain=True)
        # Retained state may have been lost with a broker restart: send the latest again.
        for msg in list(self._retained.values()):
            if msg not in self._queue:
                self._queue.appendleft(msg)
        await self._drain(client, stop)
        await client.publish(status_topic, self._status("offline"), qos=1, retain=True)
        log.info("node status 'offline' published; disconnecting from the broker")

    def _on_command(self, topic: str, payload: bytes) -> None:
        assert self.on_command is not None
        try:
            self.on_command(topic, payload)
        except Exception:  # a bad command must not cost us the connection
            log.exception("command handler failed")

    async def _publish(self, client: aiomqtt.Client, msg: Outgoing) -> None:
        await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                             properties=self._properties(msg))
        self.sent += 1

    @staticmethod
    def _outgoing(om: OutboxMessage) -> Outgoing:
        return Outgoing(om.topic, om.payload, om.qos, om.retain, om.user_properties)

    async def _stored_batch(self, limit: int = 100) -> list[OutboxMessage]:
        assert self.outbox is not None
        try:
            rows = await asyncio.to_thread(self.outbox.pending, limit + len(self._unmarked))
        except OutboxError as exc:
            log.error("cannot read the outbox: %s", exc)
            return []
        return [m for m in rows if m.msg_id not in self._unmarked][:limit]

    async def _mark_sent(self, msg_id: str) -> None:
        assert self.outbox is not None
        try:
            await asyncio.to_thread(self.outbox.mark_sent, [msg_id])
        except OutboxError as exc:
            self._unmarked.add(msg_id)  # delivered: not sent again by this process; marked when it can be
            self._write_failed(exc)
        else:
            self._write_ok()

    async def _drain(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while True:
            # Durable messages first, oldest first; each is marked sent only after the broker's PUBACK.
            if self.outbox is not None:
                for om in await self._stored_batch():
                    await self._publish(client, self._outgoing(om))
                    await self._mark_sent(om.msg_id)
            while self._held:  # the outbox could not store these: straight to the broker
                self._in_flight = self._held.popleft()
                try:
                    await self._publish(client, self._outgoing(self._in_flight))
                except BaseException:
                    self._held.appendleft(self._in_flight)
                    raise
                finally:
                    self._in_flight = None
            while self._queue:
                await self._publish(client, self._queue[0])
                self._queue.popleft()
            if self._stored_waiting() > 0:
                continue
            if stop.is_set():
                return
            self._wake.clear()
            mine: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()),
                                               asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(mine, return_when=asyncio.FIRST_COMPLETED)
            for w in mine:
                w.cancel()

    async def flush(self, timeout_s: float) -> bool:
        """For a clean shutdown: deliver what waits, within timeout_s; True when no alert or incident update is left.

        A disconnected publisher retries the broker at once and every FLUSH_RETRY_S meanwhile, so a broker
        that came back during the backoff still gets everything. Held messages the broker did not take get a
        last chance to be stored in the outbox; stored ones are delivered after a restart.
        """
        self._flushing.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        # Latest-value messages (states, health) are waited for only while connected: they are made anew.
        while (self.durable_pending or (self._queue and self.connected.is_set())) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        while self._recover():
            pass
        return not self.durable_pending
