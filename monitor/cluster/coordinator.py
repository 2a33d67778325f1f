"""Which actor runs which stream: placement by measured load, failover by missed heartbeats, drains, rebalancing.

Pure bookkeeping on an injected clock, no Ray: the Ray supervisor (monitor/cluster/supervisor.py) feeds it each
actor's load report (`heartbeat`) and carries out the `Move`s it returns; the unit tests and the simulation of
`monitor bench cluster` drive it with fake actors and a fake clock.

An actor's score is the share of its CPUs it is expected to use: the CPU it last reported, plus the estimated cost
of the streams placed on it since (the cluster's measured CPU per stream), divided by its CPUs; an actor whose
analysis lags gets no new streams. A new stream goes to the lowest score (a heap, so 100,000 placements take well
under a second); actors are spread evenly over nodes, so equal scores spread streams over nodes. An actor that
has not reported for `dead_after_s` is taken for dead (Ray itself notices a dead node only after ~16 s) and its
streams are placed on the others.

The crash quarantine of the local worker processes (monitor/runtime/workers.py) in its Ray form: an actor whose
process died (not its node) gives each of its streams a strike, and a stream with CRASH_STRIKES strikes within
CRASH_WINDOW_S is quarantined instead of being moved on to crash the next actor. Which stream crashed an actor
cannot be told from the engine (the crash table of monitor/ingest/crashguard.py lives in the dead process), so a
stream with a recent strike is placed on an actor that holds no other struck stream where there is one: the next
crash then falls on the culprit alone, not on the neighbours it had.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from monitor.runtime.workers import CRASH_STRIKES, CRASH_WINDOW_S, QUARANTINE_COOLDOWN_S

DEFAULT_STREAM_CPU = 0.05  # CPUs one stream is assumed to cost until actors have reported
LAG_LIMIT_S = 5.0  # an actor whose analysis lags this far behind gets new streams only when all others lag too
LAG_PENALTY = 100.0  # ... its score is raised by this much
FULL = 1.0e6  # the score of an actor that takes nothing new (dead, draining)


@dataclass(frozen=True, slots=True)
class Load:
    """What an actor reports every heartbeat."""

    samples_per_s: float = 0.0
    cpu: float = 0.0  # CPU seconds per second of its process (1.0: one core busy)
    lag_s: float = 0.0  # how far its analysis is behind (the oldest queued sample's age)
    streams: int = 0  # streams running in it when it measured
    dropped: int = 0  # events it dropped because the engine did not take them in time (a running count)
    queued: int = 0  # events waiting for the engine
    cpu_total_s: float = 0.0  # CPU seconds its process has used so far (a running count, for metrics)


@dataclass(frozen=True, slots=True)
class Move:
    """Carry out by starting `stream_id` on `target` (None: no actor can take it now; it waits)."""

    stream_id: str
    source: str | None  # the actor it left (None: a new stream)
    target: str | None
    quarantined: int = 0  # > 0: not placed again, its actors crashed this many times within CRASH_WINDOW_S


@dataclass(slots=True)
class ActorSlot:
    actor_id: str
    node_id: str
    cpus: float
    last_seen: float
    streams: set[str] = field(default_factory=set)
    load: Load = Load()
    alive: bool = True
    draining: bool = False


@dataclass(frozen=True, slots=True)
class ActorStatus:
    actor_id: str
    node_id: str
    alive: bool
    draining: bool
    streams: int
    samples_per_s: float
    cpu: float
    lag_s: float
    dropped: int
    seen_s_ago: float


class Coordinator:
    """Streams over actors; every method is O(log actors) per stream moved, except `refresh` and `rebalance`."""

    def __init__(self, dead_after_s: float = 4.0, clock: Callable[[], float] = time.monotonic,
                 strikes: int = CRASH_STRIKES, window_s: float = CRASH_WINDOW_S,
                 cooldown_s: float = QUARANTINE_COOLDOWN_S, settle_s: float = 60.0) -> None:
        self.dead_after_s = dead_after_s
        self.settle_s = settle_s  # a stream a rebalance moved is not moved by one again for this long
        self.clock = clock
        self.max_strikes, self.window_s, self.cooldown_s = strikes, window_s, cooldown_s
        self.strikes: dict[str, list[float]] = {}  # stream id -> clock times of actor crashes it was in
        self.quarantine: dict[str, float] = {}  # stream id -> clock time its quarantine ends
        self.actors: dict[str, ActorSlot] = {}
        self.placement: dict[str, str] = {}  # stream id -> actor id
        self.pending: dict[str, None] = {}  # streams no actor could take (ordered: placed first come first)
        self.rebalanced_at: dict[str, float] = {}  # stream id -> clock time a rebalance last moved it
        self.stream_cpu = DEFAULT_STREAM_CPU
        self._heap: list[tuple[float, int, str]] = []
        self._version: dict[str, int] = {}

    # -- actors -----------------------------------------------------------------------------------------
    def add_actor(self, actor_id: str, node_id: str, cpus: float = 1.0) -> list[Move]:
        """A started actor; streams that were waiting for one are placed (returned as moves)."""
        if actor_id in self.actors:
            raise ValueError(f"actor {actor_id!r} is already known")
        self.actors[actor_id] = ActorSlot(actor_id, node_id, cpus, self.clock())
        self._push(actor_id)
        waiting, self.pending = list(self.pending), {}
        return [self._place(sid, None) for sid in waiting]

    def heartbeat(self, actor_id: str, load: Load) -> None:
        slot = self.actors.get(actor_id)
        if slot is None or not slot.alive:
            return  # a report from an actor already given up: its streams run elsewhere now
        slot.last_seen = self.clock()
        slot.load = load
        self._push(actor_id)

    def check(self) -> list[Move]:
        """Actors silent for `dead_after_s` are dead: their streams go to the others."""
        moves: list[Move] = []
        for actor_id in self.silent():
            moves += self.actor_died(actor_id)
        return moves

    def silent(self) -> list[str]:
        """The live actors that have not reported for `dead_after_s`."""
        now = self.clock()
        return [s.actor_id for s in self.actors.values() if s.alive and now - s.last_seen > self.dead_after_s]

    def actor_died(self, actor_id: str, crashed: bool = False) -> list[Move]:
        """Its streams go to the others. `crashed`: its process died while its node lives on, so each of its
        streams gets a strike, and one with `strikes` of them within `window_s` is quarantined (a move with
        `quarantined` set and no target) for `cooldown_s`."""
        slot = self.actors.get(actor_id)
        if slot is None or not slot.alive:
            return []
        slot.alive = False
        self._version[actor_id] = self._version.get(actor_id, 0) + 1  # its heap entries are void
        lost = sorted(slot.streams)
        slot.streams.clear()
        for sid in lost:
            del self.placement[sid]
        now = self.clock()
        for sid in [s for s, times in self.strikes.items() if now - times[-1] >= self.window_s]:
            del self.strikes[sid]  # streams come and go: only recent strikes are kept
        moves = []
        for sid in lost:
            if crashed:
                times = [t for t in self.strikes.get(sid, []) if now - t < self.window_s] + [now]
                self.strikes[sid] = times
                if len(times) >= self.max_strikes:
                    self.quarantine[sid] = now + self.cooldown_s
                    moves.append(Move(sid, actor_id, None, len(times)))
                    continue
            moves.append(self._place(sid, actor_id))
        return moves

    def quarantined(self, stream_id: str) -> bool:
        """Quarantined and still in its cool-down (one whose cool-down is over starts afresh; its strikes stay
        for their window)."""
        until = self.quarantine.get(stream_id)
        if until is not None and self.clock() >= until:
            del self.quarantine[stream_id]
            return False
        return until is not None

    def forget_actor(self, actor_id: str) -> None:
        """A dead or drained actor leaves the table (its streams were moved when it died or drained)."""
        slot = self.actors.pop(actor_id, None)
        if slot is not None and slot.streams:
            raise ValueError(f"actor {actor_id!r} still runs {len(slot.streams)} streams")
        self._version.pop(actor_id, None)

    def drain_node(self, node_id: str) -> list[Move]:
        """A node that is leaving: its actors take nothing new and their streams go to other nodes."""
        moves: list[Move] = []
        for slot in self.actors.values():
            if slot.node_id == node_id and slot.alive and not slot.draining:
                slot.draining = True
                self._version[slot.actor_id] = self._version.get(slot.actor_id, 0) + 1
        for slot in list(self.actors.values()):
            if slot.node_id == node_id and slot.draining:
                for sid in sorted(slot.streams):
                    slot.streams.discard(sid)
                    del self.placement[sid]
                    moves.append(self._place(sid, slot.actor_id))
        return moves

    def nodes(self) -> dict[str, list[str]]:
        """Node id -> its live actors."""
        out: dict[str, list[str]] = {}
        for slot in self.actors.values():
            if slot.alive:
                out.setdefault(slot.node_id, []).append(slot.actor_id)
        return out

    # -- streams ----------------------------------------------------------------------------------------
    def place(self, stream_id: str) -> Move:
        """A new stream on the least loaded actor (ValueError if it is placed already)."""
        if stream_id in self.placement or stream_id in self.pending:
            raise ValueError(f"stream {stream_id!r} is already placed")
        return self._place(stream_id, None)

    def assign(self, stream_id: str, actor_id: str) -> None:
        """A stream already running on a live actor (re-attached at start) is booked there."""
        if stream_id in self.placement or stream_id in self.pending:
            raise ValueError(f"stream {stream_id!r} is already placed")
        slot = self.actors[actor_id]
        slot.streams.add(stream_id)
        self.placement[stream_id] = actor_id
        self._push(actor_id)

    def place_many(self, stream_ids: Iterable[str]) -> list[Move]:
        return [self.place(sid) for sid in stream_ids]

    def remove(self, stream_id: str) -> str | None:
        """The actor the stream ran on (None: it was waiting, or unknown)."""
        self.pending.pop(stream_id, None)
        actor_id = self.placement.pop(stream_id, None)
        if actor_id is not None:
            slot = self.actors[actor_id]
            slot.streams.discard(stream_id)
            if slot.alive:
                self._push(actor_id)
        return actor_id

    def actor_of(self, stream_id: str) -> str | None:
        return self.placement.get(stream_id)

    # -- load -------------------------------------------------------------------------------------------
    def score(self, slot: ActorSlot) -> float:
        if not slot.alive or slot.draining:
            return FULL
        expected = slot.load.cpu + (len(slot.streams) - slot.load.streams) * self.stream_cpu
        return max(0.0, expected) / slot.cpus + (LAG_PENALTY if slot.load.lag_s > LAG_LIMIT_S else 0.0)

    def refresh(self) -> None:
        """The cluster's CPU per stream measured again from the reports, and the heap rebuilt on it."""
        cpu = sum(s.load.cpu for s in self.actors.values() if s.alive and s.load.streams)
        streams = sum(s.load.streams for s in self.actors.values() if s.alive and s.load.streams)
        if streams:
            self.stream_cpu = max(1e-4, cpu / streams)
        self._heap = []
        for actor_id, slot in self.actors.items():
            if slot.alive:
                self._push(actor_id)

    def rebalance(self, max_moves: int = 100, tolerance: float = 0.25) -> list[Move]:
        """Moves streams from the most to the least loaded actors while the spread exceeds `tolerance` (of a
        stream's cost, at least one stream); at most `max_moves`, so streams do not all restart at once. A stream
        a rebalance moved within `settle_s` stays where it is: a moved stream's first reports carry its start-up
        cost (connecting, the first keyframes), and without the pause the next rebalance would move it back."""
        live = [s for s in self.actors.values() if s.alive and not s.draining]
        moves: list[Move] = []
        if len(live) < 2:
            return moves
        now = self.clock()
        for sid, at in list(self.rebalanced_at.items()):
            if now - at >= self.settle_s or sid not in self.placement:
                del self.rebalanced_at[sid]

        def movable(slot: ActorSlot) -> list[str]:
            return sorted(x for x in slot.streams if x not in self.rebalanced_at)

        for _ in range(max_moves):
            lo = min(live, key=self.score)
            hi = max(live, key=lambda s: self.score(s) if movable(s) else -1.0)
            step = self.stream_cpu / lo.cpus
            if not movable(hi) or self.score(hi) - self.score(lo) <= step * (1 + tolerance):
                break
            sid = movable(hi)[0]
            hi.streams.discard(sid)
            lo.streams.add(sid)
            self.placement[sid] = lo.actor_id
            self.rebalanced_at[sid] = now
            moves.append(Move(sid, hi.actor_id, lo.actor_id))
        for s in live:
            self._push(s.actor_id)
        return moves

    def status(self) -> list[ActorStatus]:
        now = self.clock()
        return [ActorStatus(s.actor_id, s.node_id, s.alive, s.draining, len(s.streams), s.load.samples_per_s,
                            s.load.cpu, s.load.lag_s, s.load.dropped, now - s.last_seen)
                for s in self.actors.values()]

    # -- the heap of scores -----------------------------------------------------------------------------
    def _push(self, actor_id: str) -> None:
        version = self._version.get(actor_id, 0) + 1
        self._version[actor_id] = version
        heapq.heappush(self._heap, (self.score(self.actors[actor_id]), version, actor_id))
        if len(self._heap) > 8 * len(self.actors) + 64:
            self._heap = [e for e in self._heap if self._version.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def _best(self) -> ActorSlot | None:
        while self._heap:
            score, version, actor_id = self._heap[0]
            if self._version.get(actor_id) != version:
                heapq.heappop(self._heap)  # superseded by a newer entry, or the actor is gone
                continue
            if score >= FULL:
                return None
            return self.actors[actor_id]
        return None

    def _isolated(self) -> ActorSlot | None:
        """The least loaded actor that holds no stream with a recent strike (None: there is none)."""
        free = [s for s in self.actors.values()
                if s.alive and not s.draining and not any(x in self.strikes for x in s.streams)]
        best = min(free, key=self.score, default=None)
        return best if best is not None and self.score(best) < FULL else None

    def _place(self, stream_id: str, source: str | None) -> Move:
        slot = (self._isolated() or self._best()) if stream_id in self.strikes else self._best()
        if slot is None:
            self.pending[stream_id] = None
            return Move(stream_id, source, None)
        slot.streams.add(stream_id)
        self.placement[stream_id] = slot.actor_id
        self._push(slot.actor_id)
        return Move(stream_id, source, slot.actor_id)
