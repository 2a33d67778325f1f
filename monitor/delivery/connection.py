"""The one MQTT connection loop: connect, subscribe, hand messages on, reconnect with backoff until stopped.

aiomqtt 2.x does not reconnect by itself; every MQTT client here (the node's publisher in
monitor/delivery/mqtt.py, the console printer in monitor/console/printer.py, the console TUI) keeps its
connection up with `MqttConnection`. The API:

    conn = MqttConnection(cfg, client_id,
                          protocol=None,             # None: negotiate_protocol on the first connect (a refusal
                                                     #   is a BrokerError, reported to on_lost and retried)
                          will=None,                 # an aiomqtt.Will for the broker to publish when we vanish
                          subscriptions=[...],       # subscribed at QoS 1 after each connect
                          on_message=f,              # f(topic: str, payload: bytes), for every message received
                          on_connected=g,            # g(), after each connect and subscribe (conn.protocol is set)
                          on_lost=h,                 # h(error, wait_s) -> float | None, see below
                          backoff=Backoff(0.5, 15))  # default Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
    await conn.run(stop, session=None, wake=None)

`run` returns when `stop` is set, when `conn.close()` is called (from on_message, say), or when `session`
returns. `session(client)`, when given, runs alongside the receiver while connected (the publisher drains its
queue, the TUI sends commands); with a session, `stop` is the session's to watch while connected, so that it
can finish (the publisher delivers what waits and says 'offline'); without one, `stop` ends the connection at
once.

Any Exception from connecting, subscribing, on_message or the session (aiomqtt.MqttError: the broker went
away) ends the connection: `conn.connected` is cleared and, unless stopped, `conn.reconnects` counted and
`on_lost(error, wait_s)` told the error and the backoff's wait. It is called inside the `except` (so
`log.exception` shows the traceback), returns a wait to use instead, or None, and may raise to end `run` with
that error. The wait is cut short by `stop`, by `close()`, and by `wake` when `wake` becomes set during it (an
event already set does not: the publisher's 'flushing' latch). A working connection resets the backoff.

`conn.connected` (an asyncio.Event), `conn.protocol` and `conn.reconnects` say where it stands;
`protocol_name(conn.protocol)` is "5" or "3.1.1". A burst of messages (every retained incident at once)
yields to the event loop every BURST messages. `close()` is for good: a closed connection does not run again.

The console TUI's loop maps onto it as: on_message=state.handle, session=its sender, on_lost=its status line.

Also here: `make_client` and `negotiate_protocol`, the aiomqtt client set-up every connection uses, and
`describe_connect_error`, the operator's words for a refused or lost connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiomqtt

from monitor.common.backoff import Backoff
from monitor.common.errors import BrokerError
from monitor.common.urls import redact_url
from monitor.config.models import BrokerConfig

UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK codes for "unacceptable protocol version" in 3.1.1 and 5
RECONNECT_INITIAL_S = 0.5  # the first retry waits 0.25-0.5 s
RECONNECT_MAX_S = 30.0  # the node: a broker that is down for long is retried at most every 30 s
CONSOLE_RECONNECT_MAX_S = 15.0  # a person is watching: retried at most every 15 s
BURST = 200  # messages handed on before the event loop gets a turn (all retained incidents arrive at once)

MessageHandler = Callable[[str, bytes], None]
Session = Callable[[aiomqtt.Client], Awaitable[None]]
LostHandler = Callable[[Exception, float], float | None]


def describe_connect_error(cfg: BrokerConfig, exc: Exception) -> str:
    """What went wrong, for the operator: `cannot connect to MQTT broker <url>: <why>` (the URL redacted)."""
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
    return f"cannot connect to MQTT broker {redact_url(cfg.url)}: {why}"


def make_client(cfg: BrokerConfig, client_id: str, protocol: aiomqtt.ProtocolVersion,
                will: aiomqtt.Will | None = None) -> aiomqtt.Client:
    """An aiomqtt client for the configured broker (credentials, TLS, timeout); connects on `async with`."""
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
    raise BrokerError(describe_connect_error(cfg, last))


def protocol_name(protocol: aiomqtt.ProtocolVersion | None) -> str:
    """"5" or "3.1.1", for log lines and the console."""
    return "5" if protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1"


def _payload(msg: aiomqtt.Message) -> bytes:
    payload = msg.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


class MqttConnection:
    """One client's connection to the broker, kept up by `run` (see the module's docstring)."""

    def __init__(self, cfg: BrokerConfig, client_id: str, *, protocol: aiomqtt.ProtocolVersion | None = None,
                 will: aiomqtt.Will | None = None, subscriptions: Sequence[str] = (),
                 on_message: MessageHandler | None = None, on_connected: Callable[[], None] | None = None,
                 on_lost: LostHandler | None = None, backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.protocol = protocol
        self.will = will
        self.subscriptions = tuple(subscriptions)
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.backoff = backoff if backoff is not None else Backoff(RECONNECT_INITIAL_S, RECONNECT_MAX_S)
        self.connected = asyncio.Event()
        self.reconnects = 0  # connections lost or refused
        self._closed = asyncio.Event()

    def close(self) -> None:
        """End `run` now: the current connection is closed and no other is made."""
        self._closed.set()

    async def run(self, stop: asyncio.Event, session: Session | None = None,
                  wake: asyncio.Event | None = None) -> None:
        """Stay connected until stopped, closed, or the session returns (see the module's docstring)."""
        try:
            while not (stop.is_set() or self._closed.is_set()):
                try:
                    if await self._connected(stop, session):
                        return
                except Exception as exc:  # the broker (MqttError, BrokerError), or a handler: never the end
                    self.connected.clear()
                    if stop.is_set() or self._closed.is_set():
                        break
                    self.reconnects += 1
                    wait_s = self.backoff.next()
                    if self.on_lost is not None:
                        instead = self.on_lost(exc, wait_s)
                        wait_s = wait_s if instead is None else instead
                    waits = [stop, self._closed, *([wake] if wake is not None and not wake.is_set() else [])]
                    await _wait_any(waits, wait_s)
        finally:
            self.connected.clear()

    async def _connected(self, stop: asyncio.Event, session: Session | None) -> bool:
        """One connection, from connect to its end; True when the session returned (run is over)."""
        if self.protocol is None:
            self.protocol = await negotiate_protocol(self.cfg, self.client_id)
        async with make_client(self.cfg, self.client_id, self.protocol, self.will) as client:
            for topic in self.subscriptions:
                await client.subscribe(topic, qos=1)
            self.backoff.reset()
            self.connected.set()
            if self.on_connected is not None:
                self.on_connected()
            receiver = asyncio.ensure_future(self._receive(client))
            other = asyncio.ensure_future(session(client) if session is not None else stop.wait())
            closed = asyncio.ensure_future(self._closed.wait())
            try:
                done, _ = await asyncio.wait({receiver, other, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (receiver, other, closed):
                    task.cancel()
                await asyncio.gather(receiver, other, closed, return_exceptions=True)
            for task in (other, receiver):
                if task in done:
                    task.result()  # re-raise what ended the connection
            return session is not None and other in done

    async def _receive(self, client: aiomqtt.Client) -> None:
        n = 0
        async for msg in client.messages:  # raises MqttError when the connection is lost
            n += 1
            if n % BURST == 0:
                await asyncio.sleep(0)
            if self.on_message is not None:
                self.on_message(str(msg.topic), _payload(msg))
            if self._closed.is_set():
                return
        raise aiomqtt.MqttError("connection closed")


async def _wait_any(events: Sequence[asyncio.Event], timeout_s: float) -> None:
    """Sleep timeout_s, or less if one of events is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
