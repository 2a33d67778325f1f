"""The stream actor's pieces without Ray (monitor/cluster/actor.py, banks.py, supervisor.py): the bounded event
buffer's back-pressure and drop counter, the load a poll reports, banks through their plain-data form, and the
Ray supervisor's dispatch of a moved stream's events."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from monitor.cluster.actor import ActorBatch, BufferSink, EventBuffer
from monitor.cluster.banks import BankData
from monitor.cluster.coordinator import Load
from monitor.cluster.supervisor import RaySupervisor
from monitor.config.models import ClusterConfig, IngestConfig, MatchingConfig, SamplingConfig, StreamConfig
from monitor.runtime.messages import (
    Sampled,
    SampleReport,
    SampleTiming,
    StateChange,
    StateChanged,
    StreamState,
    WorkerEvent,
)
from pipelines.banks import Bank, Entry
from pipelines.base import Finding


def state(sid: str, s: StreamState = StreamState.LIVE) -> StateChanged:
    return StateChanged(StateChange(sid, s, "", time.time(), 0))


def test_a_full_buffer_holds_the_reporter_until_the_engine_takes_events() -> None:
    buf = EventBuffer(2, block_s=5.0)
    assert buf.put(state("a")) and buf.put(state("b"))
    put_done = threading.Event()

    def third() -> None:
        buf.put(state("c"))
        put_done.set()

    threading.Thread(target=third, daemon=True).start()
    assert not put_done.wait(0.3)  # back-pressure: the reporting thread waits
    assert [e.change.stream_id for e in buf.take(1) if isinstance(e, StateChanged)] == ["a"]
    assert put_done.wait(2)
    assert [e.change.stream_id for e in buf.take(10) if isinstance(e, StateChanged)] == ["b", "c"]
    assert buf.dropped == 0


def test_an_event_is_dropped_and_counted_when_nobody_takes_any() -> None:
    buf = EventBuffer(1, block_s=0.05)
    assert buf.put(state("a"))
    assert not buf.put(state("b"))
    assert buf.dropped == 1 and len(buf) == 1
    assert buf.oldest_age_s() >= 0.0


def test_a_take_on_an_empty_buffer_waits_for_the_first_event_or_its_wait() -> None:
    buf = EventBuffer(10)
    t0 = time.monotonic()
    assert buf.take(5, wait_s=0.2) == []  # nothing came: back after its wait
    assert 0.15 <= time.monotonic() - t0 < 2.0
    threading.Timer(0.05, buf.put, (state("a"),)).start()
    t0 = time.monotonic()
    got = buf.take(5, wait_s=5.0)  # the long poll: back as soon as an event is there, not after 5 s
    assert [e.change.stream_id for e in got if isinstance(e, StateChanged)] == ["a"]
    assert time.monotonic() - t0 < 2.0
    buf.put(state("b"))
    t0 = time.monotonic()
    assert len(buf.take(5, wait_s=5.0)) == 1 and time.monotonic() - t0 < 0.5  # waiting events: no wait


def test_the_sink_measures_samples_and_lag() -> None:
    buf = EventBuffer(10)
    sink = BufferSink(buf, 0)
    now = time.time()
    sink.on_sample(SampleReport("a", 1.0, now - 2.0), [], SampleTiming(0.1, (), now))
    sink.on_sample(SampleReport("a", 3.0, now - 0.5), [], SampleTiming(0.1, (), now))
    samples, lag = sink.measured()
    assert samples == 2 and lag == pytest.approx(2.0, abs=0.01)
    assert sink.measured() == (0, 0.0)
    assert [type(e) for e in buf.take(5)] == [Sampled, Sampled]


def test_a_bank_crosses_as_plain_data_and_is_built_on_the_same_codes() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    bank = Bank("known", "pdq", codes, [Entry(str(i), label=f"l{i}") for i in range(50)], 20)
    data = BankData.of(bank)
    data.codes.setflags(write=False)  # as the object store hands it over
    again = data.bank()
    assert len(again) == 50 and again.threshold == 20 and again.name == "known"
    assert np.shares_memory(again._base_codes, data.codes)  # the index is built on the store's buffer, no copy
    assert [m.entry.entry_id for m in again.lookup(codes[7])][:1] == ["7"]


class Sink:
    def __init__(self) -> None:
        self.states: list[StateChange] = []
        self.samples: list[str] = []

    def on_state(self, change: StateChange) -> None:
        self.states.append(change)

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        self.samples.append(sample.stream_id)


class FakeHandle:
    """Records what the supervisor asks of an actor (a Ray handle's `.method.remote(...)`)."""

    def __init__(self, calls: list[tuple[str, str, tuple[object, ...]]], name: str) -> None:
        self._calls, self._name = calls, name

    def __getattr__(self, method: str) -> object:
        outer = self

        class Method:
            @staticmethod
            def remote(*args: object) -> None:
                outer._calls.append((outer._name, method, args))

        return Method


def supervisor_with_two_actors() -> tuple[RaySupervisor, Sink, list[tuple[str, str, tuple[object, ...]]]]:
    sink = Sink()
    sup = RaySupervisor(ClusterConfig(engine="ray"), IngestConfig(), SamplingConfig(), [], MatchingConfig(), sink)
    calls: list[tuple[str, str, tuple[object, ...]]] = []
    for name, node in (("x", "n1"), ("y", "n2")):
        sup.handles[name] = FakeHandle(calls, name)  # type: ignore[assignment]
        sup.coordinator.add_actor(name, node)
    return sup, sink, calls


def test_a_lost_actor_s_streams_say_reconnecting_and_start_on_another() -> None:
    sup, sink, calls = supervisor_with_two_actors()
    sup.add_stream(StreamConfig(id="a", url="rtmp://127.0.0.1/live/a"))
    first = sup.coordinator.actor_of("a")
    assert first is not None and calls[-1][:2] == (first, "add_stream")
    sup._lose(first)
    second = sup.coordinator.actor_of("a")
    assert second not in (None, first)
    assert calls[-1][:2] == (second, "add_stream")
    assert sink.states[-1].state == StreamState.RECONNECTING and "lost" in sink.states[-1].detail
    # the old actor's late words about the stream are not the engine's business any more; its samples are
    events: list[WorkerEvent] = [state("a", StreamState.ENDED),
                                 Sampled(SampleReport("a", 1.0, time.time()), [], SampleTiming(0, (), time.time()))]
    sup._handle(ActorBatch(first, events, Load()))
    assert sink.states[-1].state == StreamState.RECONNECTING
    assert sink.samples == ["a"]
    sup._handle(ActorBatch(second, [state("a")], Load()))
    assert [c.state for c in sink.states][-2:] == [StreamState.RECONNECTING, StreamState.LIVE]


def test_streams_wait_without_actors_and_a_removed_waiting_stream_ends() -> None:
    sup, sink, _ = supervisor_with_two_actors()
    sup._lose("x")
    sup._lose("y")
    sup.add_stream(StreamConfig(id="a", url="rtmp://127.0.0.1/live/a"))
    assert sup.dead_streams() == ["a"]
    with pytest.raises(ValueError, match="already monitored"):
        sup.add_stream(StreamConfig(id="a", url="rtmp://127.0.0.1/live/a"))
    sup.remove_stream("a")
    assert sink.states[-1].state == StreamState.ENDED and not sup.has_stream("a")


def test_rebalancing_stops_a_stream_on_the_busy_actor_and_starts_it_on_the_idle_one() -> None:
    sink = Sink()
    sup = RaySupervisor(ClusterConfig(engine="ray", rebalance_s=30), IngestConfig(), SamplingConfig(), [],
                        MatchingConfig(), sink)
    calls: list[tuple[str, str, tuple[object, ...]]] = []
    sup.handles["x"] = FakeHandle(calls, "x")  # type: ignore[assignment]
    sup.coordinator.add_actor("x", "n1")
    for i in range(4):
        sup.add_stream(StreamConfig(id=f"s{i}", url=f"rtmp://127.0.0.1/live/s{i}"))
    sup.handles["y"] = FakeHandle(calls, "y")  # type: ignore[assignment]
    sup.coordinator.add_actor("y", "n2")  # a node joined
    calls.clear()
    sup._rebalance()
    removed = [args[0] for actor, method, args in calls if (actor, method) == ("x", "remove_stream")]
    added = [actor for actor, method, _ in calls if method == "add_stream"]
    assert len(removed) == 2 and added == ["y", "y"]
    assert all(sup.coordinator.actor_of(str(sid)) == "y" for sid in removed)
    assert "busier than others" in sink.states[-1].detail
