"""Discovery without hooks: poll each streaming server's stream list and reconcile what is monitored.

A failed poll changes nothing (a server API hiccup must not stop monitoring); a stream is dropped only when a
successful poll no longer lists it. One stream the registry refuses or cannot take (a cap, a bad entry) is
logged once and skipped: the others are still monitored, and the discovery task never ends over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from monitor.servers.api import ServerAPI, ServerAPIError, ServerStream
from monitor.servers.hooks import StreamNamer, StreamRefused, StreamRegistry, pull_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DiscoveredServer:
    kind: str
    api: ServerAPI
    pull_url_template: str  # fields {app} {name} {path} {stream_id}


class Discovery:
    def __init__(self, registry: StreamRegistry, servers: list[DiscoveredServer], interval_s: float,
                 namer: StreamNamer | None = None) -> None:
        self.registry = registry
        self.servers = servers
        self.interval_s = interval_s
        self.namer = namer or StreamNamer.ephemeral()
        self.known: dict[str, set[str]] = {s.kind: set() for s in servers}
        self.skipped: dict[str, set[str]] = {s.kind: set() for s in servers}  # refused or failed, logged once
        self.polls = 0
        self.failures = 0

    async def poll_once(self) -> None:
        for server in self.servers:
            try:
                await self._poll(server)
            except Exception:  # never let one server's surprise end discovery for every stream
                self.failures += 1
                log.exception("discovery: polling %s failed; keeping its %d streams as they are", server.kind,
                              len(self.known[server.kind]))

    async def _poll(self, server: DiscoveredServer) -> None:
        try:
            streams = await server.api.list_streams()
        except ServerAPIError as exc:
            self.failures += 1
            log.warning("discovery: %s stream list failed (%s); keeping %d streams as they are",
                        server.kind, exc, len(self.known[server.kind]))
            return
        self.polls += 1
        seen: set[str] = set()
        for s in streams:
            sid = self._add(server, s)
            if sid is not None:
                seen.add(sid)
        for sid in self.known[server.kind] - seen:
            log.info("discovery: %s no longer lists %s", server.kind, sid)
            try:
                self.registry.remove_stream(sid, server=server.kind)
            except Exception as exc:
                log.warning("discovery: %s: could not stop watching %s: %s", server.kind, sid, exc)
        self.known[server.kind] = seen
        listed = {self.namer.stream_id(server.kind, s.app, s.name) for s in streams}
        self.skipped[server.kind] &= listed  # one that comes back later is logged again

    def _add(self, server: DiscoveredServer, s: ServerStream) -> str | None:
        """The stream's id if it is watched (now or already), None if it was skipped."""
        try:
            sid = self.namer.stream_id(server.kind, s.app, s.name)
        except Exception:
            log.exception("discovery: %s lists a stream we cannot name; skipped", server.kind)
            return None
        if sid in self.known[server.kind]:
            return sid
        try:
            path = f"{s.app}/{s.name}" if s.app else s.name
            url = pull_url(server.pull_url_template, s.app, s.name, path, sid)
            self.registry.add_stream(sid, url, server=server.kind, app=s.app, name=s.name,
                                     publisher_addr=s.client_addr, client_id=s.publisher_id)
        except StreamRefused as exc:
            if sid not in self.skipped[server.kind]:
                log.warning("discovery: %s lists %s: not watched: %s", server.kind, sid, exc)
            self.skipped[server.kind].add(sid)
            return None
        except Exception as exc:
            if sid not in self.skipped[server.kind]:
                log.warning("discovery: %s lists %s: cannot watch it (%s: %s); skipped", server.kind, sid,
                            type(exc).__name__, exc)
            self.skipped[server.kind].add(sid)
            return None
        self.skipped[server.kind].discard(sid)
        log.info("discovery: %s lists new stream %s", server.kind, sid)
        return sid

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
