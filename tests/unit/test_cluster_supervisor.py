"""The Ray supervisor (monitor/cluster/supervisor.py) with fake actor handles, without Ray: the per-actor
Prometheus series fed from poll answers, the crash quarantine of streams whose actors keep dying, re-attaching to
the actors of an earlier run, and a stop that leaves detached actors running."""

from __future__ import annotations

import time

from monitor.cluster.actor import ActorBatch
from monitor.cluster.coordinator import Coordinator, Load
from monitor.cluster.supervisor import Adopted, RaySupervisor, _process_crash
from monitor.config.models import ClusterConfig, IngestConfig, MatchingConfig, SamplingConfig, StreamConfig
from monitor.ops.metrics import Metrics
from monitor.runtime.messages import Sampled, SampleReport, SampleTiming, StateChange, StateChanged, StreamState
from pipelines.base import Finding
from tests.unit.test_cluster_actor import FakeHandle

Calls = list[tuple[str, str, tuple[object, ...]]]


class Sink:
    """The engine's side: states, samples, and the engine's metrics (the supervisor finds them there)."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.states: list[StateChange] = []
        self.samples: list[str] = []

    def on_state(self, change: StateChange) -> None:
        self.states.append(change)

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        self.samples.append(sample.stream_id)


def supervisor(actors: int = 2, **cluster: object) -> tuple[RaySupervisor, Sink, Calls]:
    sink = Sink()
    sup = RaySupervisor(ClusterConfig.model_validate({"engine": "ray", **cluster}), IngestConfig(),
                        SamplingConfig(), [], MatchingConfig(), sink)
    calls: Calls = []
    for i in range(actors):
        sup.handles[f"x{i}"] = FakeHandle(calls, f"x{i}")  # type: ignore[assignment]
        sup.coordinator.add_actor(f"x{i}", f"node{i}")
    return sup, sink, calls


def stream(sid: str) -> StreamConfig:
    return StreamConfig(id=sid, url=f"rtmp://127.0.0.1/live/{sid}")


def sampled(sid: str) -> Sampled:
    return Sampled(SampleReport(sid, 1.0, time.time()), [], SampleTiming(0.01, (), time.time()))


def value(sink: Sink, name: str, **labels: str) -> float | None:
    return sink.metrics.registry.get_sample_value(name, labels)


def test_poll_answers_feed_the_per_actor_series_and_a_lost_actor_s_series_go() -> None:
    sup, sink, _ = supervisor()
    node = {"node": "node0", "actor": "x0"}
    sup._handle(ActorBatch("x0", [sampled("a"), sampled("a")], Load(streams=1, lag_s=0.4, queued=7, dropped=2,
                                                                     cpu_total_s=10.0)))
    sup._handle(ActorBatch("x0", [sampled("a")], Load(streams=1, lag_s=0.2, queued=0, dropped=5, cpu_total_s=10.5)))
    assert value(sink, "monitor_cluster_actor_samples_total", **node) == 3
    assert value(sink, "monitor_cluster_actor_cpu_seconds_total", **node) == 0.5  # from its first answer on
    assert value(sink, "monitor_cluster_actor_dropped_events_total", **node) == 5
    assert value(sink, "monitor_cluster_actor_streams", **node) == 1
    assert value(sink, "monitor_cluster_actor_lag_seconds", **node) == 0.2
    assert value(sink, "monitor_cluster_actor_buffered_events", **node) == 0
    assert value(sink, "monitor_cluster_actor_polls_total", **node) == 2
    sup._gauge_actors()
    assert value(sink, "monitor_cluster_actors", node="node0", state="live") == 1
    sup.streams["a"] = stream("a")
    sup.coordinator.assign("a", "x0")
    sup._lose("x0", "silent")
    assert value(sink, "monitor_cluster_actor_samples_total", **node) is None  # its series are gone
    assert value(sink, "monitor_cluster_actors_lost_total", node="node0", reason="silent") == 1
    assert value(sink, "monitor_cluster_streams_moved_total", reason="lost") == 1
    assert sup.coordinator.actor_of("a") == "x1"
    sup._gauge_actors()
    assert value(sink, "monitor_cluster_actors", node="node0", state="live") == 0
    assert value(sink, "monitor_cluster_actors", node="node1", state="live") == 1


def test_a_stream_whose_actors_keep_crashing_is_quarantined_not_moved_on() -> None:
    sup, sink, calls = supervisor(actors=3)
    sup.add_stream(stream("bad"))
    sup.add_stream(stream("good"))
    first = sup.coordinator.actor_of("bad")
    assert first is not None
    sup._lose(first, "poll_failed", crashed=True)  # strike 1: moved, on an actor without other struck streams
    second = sup.coordinator.actor_of("bad")
    assert second not in (None, first)
    assert sink.states[-1].state == StreamState.RECONNECTING
    sup._lose(second, "poll_failed", crashed=True)  # strike 2: the limit of the local runtime
    assert sup.coordinator.actor_of("bad") is None and "bad" not in sup.coordinator.pending
    failed = [c for c in sink.states if c.stream_id == "bad" and c.state == StreamState.FAILED]
    assert failed and "quarantined" in failed[-1].detail and "2 times" in failed[-1].detail
    assert sup.quarantined_total == 1 and sup.dead_streams() == ["bad"] and sup.has_stream("bad")
    assert sup.coordinator.actor_of("good") is not None  # its neighbour runs on
    calls.clear()
    sup.remove_stream("bad")
    last: StateChange = sink.states[-1]
    assert last.state == StreamState.ENDED and not calls  # no actor runs it: it ends here
    sup.add_stream(stream("bad"))  # added again within the cool-down: refused
    again: StateChange = sink.states[-1]
    assert again.state == StreamState.FAILED and not [c for c in calls if c[1] == "add_stream"]


def test_only_a_process_crash_strikes_and_strikes_expire() -> None:
    assert _process_crash(RuntimeError("The actor is dead because its worker process has died. Worker exit type"))
    assert not _process_crash(RuntimeError("The actor died because its node has died. Node Id: ab"))
    assert not _process_crash(RuntimeError("The actor is dead because it was killed by `ray.kill`."))
    t = [0.0]
    c = Coordinator(clock=lambda: t[0], strikes=2, window_s=600, cooldown_s=1800)
    for a in ("a", "b", "c"):
        c.add_actor(a, f"n{a}")
    c.place("s")
    c.actor_died(str(c.actor_of("s")))  # not a crash: no strike
    assert not c.strikes
    c.actor_died(str(c.actor_of("s")), crashed=True)
    t[0] += 601  # the strike is older than the window
    c.add_actor("d", "nd")
    moves = c.actor_died(str(c.actor_of("s")), crashed=True)
    assert moves[0].target is not None and not moves[0].quarantined


def test_struck_streams_are_placed_apart() -> None:
    c = Coordinator(clock=lambda: 0.0)
    for a in range(4):
        c.add_actor(f"a{a}", f"n{a}")
    c.place_many(["s1", "s2", "s3", "t1", "t2", "t3", "t4", "t5"])
    victim = str(c.actor_of("s1"))
    lost = set(c.actors[victim].streams)
    c.actor_died(victim, crashed=True)
    holders = [c.actor_of(s) for s in lost]
    assert len(lost) == 2 and len(set(holders)) == 2  # one struck stream per actor while there are enough


def test_re_attached_streams_run_on_where_they_are_and_their_events_wait_for_the_engine() -> None:
    sup, sink, calls = supervisor(actors=0)
    sup.handles["old"] = FakeHandle(calls, "old")  # type: ignore[assignment]
    info: dict[str, object] = {"node": "n1", "streams": {
        "keep": {"config": stream("keep").model_dump(mode="json"), "state": "live", "alive": True},
        "other": {"config": stream("other").model_dump(mode="json"), "state": "live", "alive": True},
        "changed": {"config": stream("changed").model_dump(mode="json"), "state": "live", "alive": True},
        "ended": {"config": stream("ended").model_dump(mode="json"), "state": "ended", "alive": False}}}
    sup._adopt("old", sup.handles["old"], info)
    assert sup.coordinator.actors["old"].node_id == "n1" and sup.reattached == 1
    assert ("old", "remove_stream", ("ended",)) in calls  # a dead reader is not kept
    assert any(m == "reload_banks" for _, m, _ in calls)  # this run's banks swapped in
    # what the actor said before the engine asked for the stream again waits for it
    sup._handle(ActorBatch("old", [StateChanged(StateChange("keep", StreamState.LIVE, "re-attached", time.time(),
                                                            0)), sampled("keep")], Load(streams=3)))
    assert sink.samples == [] and sink.states == []
    calls.clear()
    sup.add_stream(stream("keep"))
    assert sup.coordinator.actor_of("keep") == "old" and not calls  # not started again
    assert sink.samples == ["keep"] and sink.states[-1].state == StreamState.LIVE
    sup._handle(ActorBatch("old", [sampled("keep")], Load(streams=3)))
    assert sink.samples == ["keep", "keep"]
    sup.add_stream(StreamConfig(id="changed", url="rtmp://127.0.0.1/live/elsewhere"))  # same id, other settings
    assert calls[0] == ("old", "remove_stream", ("changed",)) and calls[1][:2] == ("old", "add_stream")
    calls.clear()
    sup._drop_unclaimed()  # the grace is over: what nobody asked for again is stopped
    assert calls == [("old", "remove_stream", ("other",))] and not sup.adopted


def test_a_lost_re_attached_actor_s_streams_start_afresh_when_asked_for() -> None:
    sup, _, calls = supervisor(actors=1)
    sup.handles["old"] = FakeHandle(calls, "old")  # type: ignore[assignment]
    sup._adopt("old", sup.handles["old"], {"node": "n1", "streams": {
        "keep": {"config": stream("keep").model_dump(mode="json"), "state": "live", "alive": True}}})
    sup.adopted["keep"].events.append(sampled("keep"))
    sup._held_events = 1
    sup._lose("old")
    assert not sup.adopted and sup._held_events == 0
    sup.add_stream(stream("keep"))
    assert sup.coordinator.actor_of("keep") == "x0"
    assert isinstance(Adopted("a", {}).events, list)


def test_a_stop_leaves_detached_actors_running() -> None:
    sup, _, calls = supervisor(detach_actors=True)
    sup._stopping = True
    sup.stop_all(timeout_s=0.1)
    assert not [c for c in calls if c[1] == "stop"]
    assert not ClusterConfig(engine="ray").detach_actors  # the default: a stop stops them


def test_an_orphaned_actor_stops_its_streams_and_a_fresh_poll_keeps_it() -> None:
    import dataclasses
    import threading
    import types

    from monitor.cluster.actor import StreamActor, spec_digest

    class Streams:
        stopped = 0

        def stream_ids(self) -> list[str]:
            return ["a"]

        def stop_all(self) -> None:
            self.stopped += 1

    actor = types.SimpleNamespace(actor_id="x", polled_at=time.monotonic(), supervisor=Streams(), orphaned=False)
    t = threading.Thread(target=StreamActor._watch_orphan, args=(actor, 0.3), daemon=True)
    t.start()
    t.join(2)
    assert actor.orphaned and actor.supervisor.stopped == 1
    sup, _, _ = supervisor(actors=0)
    other = dataclasses.replace(sup.spec, ingest={**sup.spec.ingest, "probe_s": 99})
    assert spec_digest(sup.spec) == spec_digest(dataclasses.replace(sup.spec, budget_share=0.25))
    assert spec_digest(sup.spec) != spec_digest(other)  # other settings: not re-attached
