"""The node's MQTT connection: alerts at QoS 1, retained node and stream status, reconnect with backoff.

aiomqtt 2.x neither buffers offline nor reconnects, so this module owns both: outgoing messages wait in a
queue until a connection takes them, and a message whose publish fails is put back at the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor import topics
from monitor.config import BrokerConfig
from monitor.errors import BrokerError
from monitor.outbox import Outbox, OutboxError, OutboxMessage

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK codes for "unacceptable protocol version" in 3.1.1 and 5


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    user_properties: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    expiry_s: int | None = None  # MQTT 5 message expiry: stale health must vanish, not mislead


def _describe_connect_error(cfg: BrokerConfig, exc: Exception) -> str:
    text = str(exc)
    rc = getattr(exc, "rc", None)
    if rc in (4, 5, 134, 135):
        why = "not authorised (check username/password)"
    elif "certificate verify failed" in text or "CERTIFICATE_VERIFY_FAILED" in text:
        why = "TLS certificate not trusted (set broker.ca_file to the CA that signed the broker's certificate)"
    elif "refused" in text.lower() or isinstance(exc.__cause__, ConnectionRefusedError):
        why = "connection refused (is the broker running on that port?)"
    elif "timed out" in text.lower():
        why = "timed out"
    elif isinstance(exc.__cause__, ssl.SSLError):
        why = f"TLS failed: {exc.__cause__}"
    else:
        why = text or type(exc).__name__
    return f"cannot connect to MQTT broker {cfg.url}: {why}"


def make_client(cfg: BrokerConfig, client_id: str, protocol: aiomqtt.ProtocolVersion,
                will: aiomqtt.Will | None = None) -> aiomqtt.Client:
    tls = aiomqtt.TLSParameters(ca_certs=str(cfg.ca_file) if cfg.ca_file else None) if cfg.tls else None
    kwargs: dict[str, Any] = {}
    if protocol == aiomqtt.ProtocolVersion.V5:
        kwargs["clean_start"] = True
    return aiomqtt.Client(
        cfg.host,
        cfg.port,
        username=cfg.username,
        password=cfg.secret(),
        identifier=client_id,
        protocol=protocol,
        will=will,
        tls_params=tls,
        timeout=cfg.connect_timeout_s,
        **kwargs,
    )


async def negotiate_protocol(cfg: BrokerConfig, client_id: str) -> aiomqtt.ProtocolVersion:
    """Connect once to learn the protocol the broker speaks; raises BrokerError with a clear reason."""
    wanted = {
        "5": [aiomqtt.ProtocolVersion.V5],
        "3.1.1": [aiomqtt.ProtocolVersion.V311],
        "auto": [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311],
    }[cfg.protocol]
    last: Exception | None = None
    for proto in wanted:
        try:
            async with make_client(cfg, client_id + "-probe", proto):
                return proto
        except aiomqtt.MqttError as exc:
            last = exc
            if getattr(exc, "rc", None) in UNSUPPORTED_PROTOCOL:
                continue
            break
    assert last is not None
    raise BrokerError(_describe_connect_error(cfg, last))


CommandHandler = Callable[[str, bytes], None]


class MqttPublisher:
    """Owns one connection; `send*` never blocks and never loses a message.

    Alerts and incident updates go through the durable outbox when there is one: they survive a broker
    outage and a crash, and are sent at least once with a stable id. Status, stream states and health are
    'latest value' messages: kept in memory and re-sent after every reconnect.
    """

    def __init__(self, cfg: BrokerConfig, node: str, outbox: Outbox | None = None,
                 on_command: CommandHandler | None = None) -> None:
        self.cfg = cfg
        self.node = node
        self.outbox = outbox
        self.on_command = on_command
        self.client_id = f"monitor-{node}"
        self.connected = asyncio.Event()
        self.protocol = aiomqtt.ProtocolVersion.V311
        self._queue: deque[Outgoing] = deque()
        self._durable_fallback: deque[tuple[str, Outgoing]] = deque()  # outbox unwritable (disk full)
        self._wake = asyncio.Event()
        self._retained: dict[str, Outgoing] = {}  # latest state per topic, re-sent after each reconnect
        self.sent = 0
        self.reconnects = 0
        self.outbox_errors = 0

    @property
    def pending(self) -> int:
        durable = self.outbox.depth() if self.outbox is not None else 0
        return len(self._queue) + len(self._durable_fallback) + durable

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
        """Store first (fsync), publish later: the alert exists on disk before anyone is told."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        props = (("msg_id", msg_id), *user_properties)
        msg = Outgoing(topic, payload, 1, retain, props)
        if self.outbox is not None:
            try:
                self.outbox.put(OutboxMessage(msg_id, topic, payload, 1, retain, time.time(), 0, props))
            except (OutboxError, ValueError) as exc:
                self.outbox_errors += 1
                log.error("outbox write failed (%s): message %s kept in memory only", exc, msg_id)
                self._durable_fallback.append((msg_id, msg))
        else:
            self._durable_fallback.append((msg_id, msg))
        self._wake.set()

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
        status_topic = topics.node_status(self.cfg.topic_prefix, self.node)
        will = aiomqtt.Will(status_topic, self._status("offline"), qos=1, retain=True)
        delay = 0.5
        while not stop.is_set():
            reader: asyncio.Task[None] | None = None
            try:
                async with make_client(self.cfg, self.client_id, self.protocol, will) as client:
                    delay = 0.5
                    self.connected.set()
                    log.info("connected to MQTT broker %s (MQTT %s)", self.cfg.url,
                             "5" if self.protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1")
                    await client.publish(status_topic, self._status("online"), qos=1, retain=True)
                    if self.on_command is not None:
                        await client.subscribe(topics.commands(self.cfg.topic_prefix, self.node), qos=1)
                        reader = asyncio.create_task(self._read_commands(client))
                    # Retained state may have been lost with a broker restart: send the latest again.
                    for msg in list(self._retained.values()):
                        if msg not in self._queue:
                            self._queue.appendleft(msg)
                    await self._drain(client, stop, reader)
                    if stop.is_set():
                        await client.publish(status_topic, self._status("offline"), qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if stop.is_set():
                    break
                self.reconnects += 1
                log.warning("MQTT connection lost or refused (%s); %d messages waiting; retry in %.1f s",
                            _describe_connect_error(self.cfg, exc), self.pending, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 30.0)
            finally:
                if reader is not None:
                    reader.cancel()
        self.connected.clear()

    async def _read_commands(self, client: aiomqtt.Client) -> None:
        assert self.on_command is not None
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            try:
                self.on_command(str(msg.topic), payload)
            except Exception:  # a bad command must not cost us the connection
                log.exception("command handler failed")

    async def _publish(self, client: aiomqtt.Client, msg: Outgoing) -> None:
        await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                             properties=self._properties(msg))
        self.sent += 1

    async def _drain(self, client: aiomqtt.Client, stop: asyncio.Event, reader: asyncio.Task[None] | None) -> None:
        while True:
            if reader is not None and reader.done():
                reader.result()  # re-raise the connection error the reader saw
            # Durable messages first, oldest first; each is marked sent only after the broker's PUBACK.
            if self.outbox is not None:
                for om in await asyncio.to_thread(self.outbox.pending, 100):
                    await self._publish(client, Outgoing(om.topic, om.payload, om.qos, om.retain,
                                                         om.user_properties))
                    await asyncio.to_thread(self.outbox.mark_sent, [om.msg_id])
            while self._durable_fallback:
                await self._publish(client, self._durable_fallback[0][1])
                self._durable_fallback.popleft()
            while self._queue:
                await self._publish(client, self._queue[0])
                self._queue.popleft()
            if self.outbox is not None and self.outbox.depth() > 0:
                continue
            if stop.is_set():
                return
            self._wake.clear()
            mine: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()),
                                               asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait([*mine, *([reader] if reader is not None else [])],
                               return_when=asyncio.FIRST_COMPLETED)
            for w in mine:
                w.cancel()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is waiting to be sent (for a clean shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline and self.connected.is_set():
            await asyncio.sleep(0.05)
        return not self.pending
