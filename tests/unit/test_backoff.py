"""The one backoff (monitor/common/backoff.py) and the one MQTT connection loop (monitor/delivery/connection.py).

The loop is run against a real Mosquitto that is stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator

import aiomqtt
import pytest

from monitor.common.backoff import Backoff, backoff_delay
from monitor.common.errors import BrokerError
from monitor.config.models import BrokerConfig
from monitor.delivery.connection import MqttConnection, make_client
from test_streams.infra import Mosquitto, free_port
from tests.conftest import require_tools


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_delay_doubles_from_initial_up_to_the_cap_with_jitter_down_to_half(attempt: int) -> None:
    rng = random.Random(attempt)
    base = min(4.0, 0.25 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, 0.25, 4.0, rng) for _ in range(400)]
    assert all(base * 0.5 <= d <= base for d in delays)
    assert min(delays) < base * 0.55 and max(delays) > base * 0.95  # jitter spread over the whole range


def test_backoff_delay_counts_attempts_below_one_as_the_first() -> None:
    for attempt in (-3, 0, 1):
        assert 0.5 <= backoff_delay(attempt, 1.0, 30.0, random.Random(0)) <= 1.0


def test_backoff_counts_failures_and_a_working_connection_resets_it() -> None:
    b, same = Backoff(0.5, 8.0, random.Random(7)), random.Random(7)
    assert [b.next() for _ in range(7)] == [backoff_delay(n, 0.5, 8.0, same) for n in range(1, 8)]
    assert b.attempt == 7
    b.reset()
    assert b.attempt == 0 and 0.25 <= b.next() <= 0.5 and b.attempt == 1


def test_backoff_refuses_delays_that_are_not_positive() -> None:
    for initial, maximum in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(ValueError):
            Backoff(initial, maximum)


# ----------------------------------------------------------------------------- the loop, on a real broker


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def brokers(port: int) -> Iterator[Callable[[], Mosquitto]]:
    """Starts a Mosquitto on `port` each call (after the last one was stopped); all closed at the end."""
    require_tools()
    started: list[Mosquitto] = []

    def start() -> Mosquitto:
        started.append(Mosquitto(port=port).start())
        return started[-1]

    yield start
    for m in started:
        m.close()


def _cfg(port: int) -> BrokerConfig:
    return BrokerConfig(url=f"mqtt://127.0.0.1:{port}", protocol="3.1.1", connect_timeout_s=2)


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def _publish(port: int, topic: str, payload: bytes) -> None:
    async with make_client(_cfg(port), "test-pub", aiomqtt.ProtocolVersion.V311) as client:
        await client.publish(topic, payload, qos=1)


class Record:
    """What the loop's callbacks saw."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.events: list[str] = []
        self.lost: list[tuple[Exception, float]] = []

    def on_message(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def on_connected(self) -> None:
        self.events.append("connected")

    def on_lost(self, exc: Exception, wait_s: float) -> None:
        self.events.append("lost")
        self.lost.append((exc, wait_s))


def _connection(port: int, rec: Record) -> MqttConnection:
    return MqttConnection(_cfg(port), f"test-{port}", subscriptions=["t/#"], on_message=rec.on_message,
                          on_connected=rec.on_connected, on_lost=rec.on_lost,
                          backoff=Backoff(0.05, 0.2, random.Random(1)))


def test_loop_reconnects_after_the_broker_restarts_and_subscribes_again(
    port: int, brokers: Callable[[], Mosquitto]
) -> None:
    async def scenario() -> tuple[Record, MqttConnection]:
        broker = brokers()
        rec = Record()
        conn = _connection(port, rec)
        stop = asyncio.Event()
        task = asyncio.create_task(conn.run(stop))
        await asyncio.wait_for(conn.connected.wait(), 10)
        assert conn.protocol == aiomqtt.ProtocolVersion.V311  # negotiated: it was not given
        await _publish(port, "t/a", b"one")
        await _until(lambda: len(rec.messages) == 1, "the first message")
        broker.stop()
        await _until(lambda: len(rec.lost) >= 3, "three failed tries")
        assert not conn.connected.is_set() and conn.reconnects == len(rec.lost)
        assert all(isinstance(exc, aiomqtt.MqttError) for exc, _ in rec.lost)
        waits = [w for _, w in rec.lost]
        assert 0.025 <= waits[0] <= 0.05 and 0.05 <= waits[1] <= 0.1 and all(w <= 0.2 for w in waits)
        brokers()
        await asyncio.wait_for(conn.connected.wait(), 10)
        assert conn.backoff.attempt == 0  # a working connection resets the backoff
        await _publish(port, "t/b", b"two")  # only seen if it subscribed again
        await _until(lambda: len(rec.messages) == 2, "a message after the restart")
        stop.set()
        await asyncio.wait_for(task, 5)
        assert not conn.connected.is_set()
        return rec, conn

    rec, _ = asyncio.run(scenario())
    assert rec.messages == [("t/a", b"one"), ("t/b", b"two")]
    assert rec.events[0] == "connected" and rec.events[-1] == "connected" and "lost" in rec.events


def test_loop_retries_a_broker_that_is_not_there_yet(port: int, brokers: Callable[[], Mosquitto]) -> None:
    async def scenario() -> Record:
        rec = Record()
        conn = _connection(port, rec)
        task = asyncio.create_task(conn.run(asyncio.Event()))
        await _until(lambda: len(rec.lost) >= 2, "two refused tries")
        assert all(isinstance(exc, BrokerError) and "connection refused" in str(exc) for exc, _ in rec.lost)
        brokers()
        await asyncio.wait_for(conn.connected.wait(), 10)
        task.cancel()  # as the TUI ends: cancelled, never stopped
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not conn.connected.is_set()
        return rec

    assert asyncio.run(scenario()).events[-1] == "connected"


def test_close_from_the_message_handler_ends_the_loop_before_the_next_message(
    port: int, brokers: Callable[[], Mosquitto]
) -> None:
    brokers()

    async def scenario() -> list[bytes]:
        got: list[bytes] = []

        def on_message(topic: str, payload: bytes) -> None:
            got.append(payload)
            if payload == b"2":  # as the printer does after max_alerts
                conn.close()

        conn = MqttConnection(_cfg(port), "test-close", subscriptions=["t/#"], on_message=on_message)
        task = asyncio.create_task(conn.run(asyncio.Event()))
        await asyncio.wait_for(conn.connected.wait(), 10)
        async with make_client(_cfg(port), "test-burst", aiomqtt.ProtocolVersion.V311) as client:
            for i in range(1, 6):
                await client.publish("t/x", str(i).encode(), qos=1)
        await asyncio.wait_for(task, 5)
        return got

    assert asyncio.run(scenario()) == [b"1", b"2"]


def test_a_session_runs_while_connected_and_its_return_ends_the_loop(
    port: int, brokers: Callable[[], Mosquitto]
) -> None:
    brokers()

    async def scenario() -> tuple[list[tuple[str, bytes]], list[str]]:
        rec = Record()
        conn = _connection(port, rec)
        stop = asyncio.Event()
        said: list[str] = []

        async def session(client: aiomqtt.Client) -> None:  # watches stop itself, and says goodbye
            await client.publish("t/hello", b"hi", qos=1)
            await stop.wait()
            await client.publish("t/bye", b"bye", qos=1)  # stop does not cut the session short
            said.append("bye")

        task = asyncio.create_task(conn.run(stop, session))
        await _until(lambda: len(rec.messages) == 1, "the session's first message")
        stop.set()
        await asyncio.wait_for(task, 5)
        return rec.messages, said

    messages, said = asyncio.run(scenario())
    assert messages[0] == ("t/hello", b"hi") and said == ["bye"]


def test_errors_that_are_not_the_broker_are_reported_and_may_end_the_loop(
    port: int, brokers: Callable[[], Mosquitto]
) -> None:
    brokers()

    async def scenario() -> list[str]:
        seen: list[str] = []

        def on_lost(exc: Exception, wait_s: float) -> None:
            seen.append(str(exc))
            if len(seen) == 2:
                raise exc

        async def session(client: aiomqtt.Client) -> None:
            raise RuntimeError(f"bug {len(seen) + 1}")

        conn = MqttConnection(_cfg(port), "test-bug", on_lost=on_lost, backoff=Backoff(0.01, 0.02))
        with pytest.raises(RuntimeError, match="bug 2"):
            await asyncio.wait_for(conn.run(asyncio.Event(), session), 10)
        return seen

    assert asyncio.run(scenario()) == ["bug 1", "bug 2"]


def test_the_wait_is_cut_short_by_wake_and_by_stop_and_on_lost_may_choose_it(port: int) -> None:
    async def timed(run: Callable[[], Awaitable[None]]) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(run(), 10)
        return loop.time() - t0

    async def scenario() -> tuple[float, float, list[float]]:
        # No broker: each try is refused at once, then it waits 30 s (the backoff) unless cut short.
        waits: list[float] = []
        stop, wake = asyncio.Event(), asyncio.Event()

        def on_lost(exc: Exception, wait_s: float) -> float | None:
            waits.append(wait_s)
            if wake.is_set():
                return 0.05  # the publisher's flush: short retries, the latch no longer cuts them
            loop.call_later(0.2, wake.set)
            return None

        loop = asyncio.get_running_loop()
        conn = MqttConnection(_cfg(port), "test-wake", protocol=aiomqtt.ProtocolVersion.V311, on_lost=on_lost,
                              backoff=Backoff(60.0, 60.0))

        async def until_stopped_by_hand() -> None:
            loop.call_later(0.6, stop.set)
            await conn.run(stop, wake=wake)

        took = await timed(until_stopped_by_hand)
        stop2 = asyncio.Event()
        idle = MqttConnection(_cfg(port), "test-stop", protocol=aiomqtt.ProtocolVersion.V311,
                              backoff=Backoff(60.0, 60.0))
        loop.call_later(0.2, stop2.set)
        took_stop = await timed(lambda: idle.run(stop2))
        return took, took_stop, waits

    took, took_stop, waits = asyncio.run(scenario())
    assert 0.5 <= took < 5 and took_stop < 5
    # After wake: retried every 0.05 s (an event already set does not cut the wait, or it would spin).
    assert 4 <= len(waits) <= 12 and all(30 <= w <= 60 for w in waits), waits
