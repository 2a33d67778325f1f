"""Where the streams run: worker processes on this machine (the default) or stream actors on a Ray cluster.

`cluster: {engine: ray, address: auto}` hands the streams to monitor/cluster/supervisor.py; `engine: local` (the
default) keeps the `workers:` setting's processes or threads. Ray is an optional extra (`pip install '.[ray]'`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from monitor.config.base import Strict

_RAY_ADDRESS = re.compile(r"^(auto|local|ray://[A-Za-z0-9.\-\[\]:]+:\d{1,5}|[A-Za-z0-9.\-]+:\d{1,5})$")


class ClusterConfig(Strict):
    """`engine: ray` runs each shard of streams in a Ray actor; the engine (incidents, MQTT, evidence) stays here."""

    engine: Literal["local", "ray"] = "local"
    # auto: the Ray cluster this node belongs to; ray://HOST:PORT a remote one (Ray Client); HOST:PORT its GCS;
    # local: a one-node cluster started in this process (tests, trying it out).
    address: str = "auto"
    namespace: str = Field("monitor", pattern=r"^[A-Za-z0-9_-]{1,64}$")  # actors are named in it
    cpus_per_actor: float = Field(1.0, gt=0, le=64)  # an actor per this many CPUs of a node
    max_actors_per_node: int | None = Field(None, ge=1, le=1024)
    heartbeat_s: float = Field(1.0, gt=0, le=30)  # each actor reports its load at least this often (long-poll cap)
    # an actor silent this long is taken for dead and its streams go to the others (Ray itself notices a dead
    # node only after ~16 s with its default health checks)
    dead_after_s: float = Field(4.0, gt=0, le=300)
    queue_size: int = Field(10_000, ge=100, le=10_000_000)  # events each actor holds for the engine
    node_poll_s: float = Field(5.0, gt=0, le=300)  # how often joined and leaving nodes are looked for
    # every this long, up to rebalance_moves streams move from the most to the least loaded actors (0: never; a
    # moved stream reconnects, so this is off unless asked for)
    rebalance_s: float = Field(0.0, ge=0, le=86_400)
    rebalance_moves: int = Field(10, ge=1, le=10_000)
    # a stream a rebalance moved is not moved by one again for this long: its first reports on the new actor
    # carry its start-up cost, and without the pause it would be moved back and forth
    rebalance_settle_s: float = Field(60.0, ge=0, le=86_400)
    # true: actors outlive the monitor (Ray's detached lifetime): a stopped or crashed monitor leaves them
    # reading and buffering, and the next one in the namespace re-attaches to them; false: a stop stops them, and
    # they end with the monitor's Ray driver. Either way a starting monitor re-attaches to live actors it finds.
    detach_actors: bool = False
    # a detached actor no monitor polled for this long stops its streams and ends itself
    orphan_after_s: float = Field(600.0, ge=10, le=7 * 86_400)
    # a re-attached actor's stream that the monitor has not asked for again within this long is stopped
    reattach_grace_s: float = Field(60.0, ge=0, le=3600)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _RAY_ADDRESS.match(v):
            raise ValueError("must be auto, local, ray://HOST:PORT or HOST:PORT")
        return v

    @model_validator(mode="after")
    def _heartbeats_before_death(self) -> ClusterConfig:
        if self.dead_after_s < 2 * self.heartbeat_s:
            raise ValueError("dead_after_s must be at least twice heartbeat_s (one late report is no death)")
        return self
