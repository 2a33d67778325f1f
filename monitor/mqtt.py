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
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor import topics
from monitor.config import BrokerConfig
from monitor.errors import BrokerError

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK codes for "unacceptable protocol version" in 3.1.1 and 5


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    user_properties: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _describe_connect_error(cfg: BrokerConfig, exc: Exception) -> str:
    text = str(exc)
    rc = getattr(exc, "rc", None)
    if rc in (4, 5, 134, 135):
        why = "not authorised (check username/password)"
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
        password=cfg.password,
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


class MqttPublisher:
    """Owns one connection; `send` never blocks and never loses a message while the process lives."""

    def __init__(self, cfg: BrokerConfig, node: str) -> None:
        self.cfg = cfg
        self.node = node
        self.client_id = f"monitor-{node}"
        self.connected = asyncio.Event()
        self.protocol = aiomqtt.ProtocolVersion.V311
        self._queue: deque[Outgoing] = deque()
        self._wake = asyncio.Event()
        self._retained: dict[str, Outgoing] = {}  # latest state per topic, re-sent after each reconnect
        self.sent = 0
        self.reconnects = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def send(self, msg: Outgoing) -> None:
        if msg.retain:
            self._retained[msg.topic] = msg
        self._queue.append(msg)
        self._wake.set()

    def send_json(self, topic: str, body: dict[str, Any], *, retain: bool = False,
                  user_properties: tuple[tuple[str, str], ...] = ()) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send(Outgoing(topic, payload, 1, retain, user_properties))

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
        return props

    async def run(self, stop: asyncio.Event) -> None:
        status_topic = topics.node_status(self.cfg.topic_prefix, self.node)
        will = aiomqtt.Will(status_topic, self._status("offline"), qos=1, retain=True)
        delay = 0.5
        while not stop.is_set():
            try:
                async with make_client(self.cfg, self.client_id, self.protocol, will) as client:
                    delay = 0.5
                    self.connected.set()
                    log.info("connected to MQTT broker %s (MQTT %s)", self.cfg.url,
                             "5" if self.protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1")
                    await client.publish(status_topic, self._status("online"), qos=1, retain=True)
                    # Retained state may have been lost with a broker restart: send the latest again.
                    for msg in list(self._retained.values()):
                        if msg not in self._queue:
                            self._queue.appendleft(msg)
                    await self._drain(client, stop)
                    if stop.is_set():
                        await client.publish(status_topic, self._status("offline"), qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if stop.is_set():
                    break
                self.reconnects += 1
                log.warning("MQTT connection lost or refused (%s); %d messages waiting; retry in %.1f s",
                            _describe_connect_error(self.cfg, exc), len(self._queue), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 30.0)
        self.connected.clear()

    async def _drain(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while True:
            while self._queue:
                msg = self._queue[0]
                await client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                                     properties=self._properties(msg))
                self._queue.popleft()  # only after the broker acknowledged it (QoS 1)
                self.sent += 1
            if stop.is_set():
                return
            self._wake.clear()
            stop_task = asyncio.ensure_future(stop.wait())
            wake_task = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({stop_task, wake_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            wake_task.cancel()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (for a clean shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self._queue
