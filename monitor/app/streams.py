"""The stream registry the hook server and discovery call: which publisher each announced stream belongs to.

An announced stream is bound to the publisher that registered it (monitor/servers/hooks/origins.py
`OriginTable`), within hooks.max_streams and max_streams_per_addr; another publisher's announce or unpublish of a
watched stream is refused. The raw stream name (often the publisher's key) stays in memory; the evidence gets
its keyed form (monitor/servers/hooks/naming.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Protocol

from monitor.app import records
from monitor.common.urls import redact_url
from monitor.config.models import StreamConfig
from monitor.runtime.messages import StateChange, StreamState
from monitor.runtime.protocol import Supervisor
from monitor.servers.hooks import ORIGIN_REPLACE_AFTER_S, Origin, OriginTable, StreamNamer

log = logging.getLogger(__name__)


class StreamsHost(Protocol):
    """What the registry needs of the engine (monitor/app/engine.py)."""

    supervisor: Supervisor

    def record(self, kind: str, stream_id: str, body: Mapping[str, object], incident_id: str | None = None) -> None:
        ...


class Streams:
    """Announced streams: admitted, bound to their publisher, watched; released when their publish ends."""

    def __init__(self, host: StreamsHost, origins: OriginTable, namer: StreamNamer,
                 states: Mapping[str, StateChange]) -> None:
        self.host = host
        self.origins = origins
        self.namer = namer
        self.states = states  # the engine's latest state of each stream

    def add(self, stream_id: str, url: str, *, server: str, app: str, name: str, publisher_addr: str | None,
            client_id: str | None, keys: tuple[str, ...]) -> None:
        """A publish started: bind it to its publisher and start pulling it (see Engine.add_stream)."""
        supervisor = self.host.supervisor
        watched = supervisor.has_stream(stream_id) and stream_id not in supervisor.dead_streams()
        known = self.origins.get(stream_id)
        state = self.states.get(stream_id)
        stale = (known is not None and time.monotonic() - known.registered_at > ORIGIN_REPLACE_AFTER_S
                 and (state is None or state.state != StreamState.LIVE))
        verdict = self.origins.admit(stream_id, Origin(server, app, name, publisher_addr, client_id, keys=keys),
                                     replaceable=not watched or stale)
        if verdict == "same" and watched:
            return  # MediaMTX reports one publish twice (auth gate, then ready)
        origin = self.origins[stream_id]
        # The raw name (often the stream key) stays in the origin; logs and evidence get the keyed form.
        self.host.record("note", stream_id, records.announced(
            verdict == "new", server, app, self.namer.redacted_name(server, app, name), len(name), origin))
        log.info("stream %s: announced by %s (%s), pulling %s", stream_id, server, publisher_addr or "?",
                 redact_url(url))
        if watched:
            return  # same URL: the reader carries on with the new publisher
        if supervisor.has_stream(stream_id):
            supervisor.remove_stream(stream_id)  # its worker ended (a file, a failure): start afresh
        try:
            supervisor.add_stream(StreamConfig(id=stream_id, url=url))
        except Exception:
            self.origins.pop(stream_id, None)
            raise

    def remove(self, stream_id: str, *, server: str | None, app: str | None, name: str | None,
               publisher_addr: str | None, client_id: str | None) -> None:
        """A publish ended: release the stream (StreamRefused for another publisher's unpublish), stop it."""
        self.origins.release(stream_id, server=server, app=app, name=name, publisher_addr=publisher_addr,
                             client_id=client_id)
        self.host.supervisor.remove_stream(stream_id)
