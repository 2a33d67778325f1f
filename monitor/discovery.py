"""Discovery without hooks: poll each streaming server's stream list and reconcile what is monitored.

A failed poll changes nothing (a server API hiccup must not stop monitoring); a stream is dropped only when a
successful poll no longer lists it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import quote

from monitor.hooks import StreamRegistry, stream_id_for
from monitor.servers import ServerAPI, ServerAPIError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DiscoveredServer:
    kind: str
    api: ServerAPI
    pull_url_template: str  # fields {app} {name} {path} {stream_id}


class Discovery:
    def __init__(self, registry: StreamRegistry, servers: list[DiscoveredServer], interval_s: float) -> None:
        self.registry = registry
        self.servers = servers
        self.interval_s = interval_s
        self.known: dict[str, set[str]] = {s.kind: set() for s in servers}
        self.polls = 0
        self.failures = 0

    async def poll_once(self) -> None:
        for server in self.servers:
            try:
                streams = await server.api.list_streams()
            except ServerAPIError as exc:
                self.failures += 1
                log.warning("discovery: %s stream list failed (%s); keeping %d streams as they are",
                            server.kind, exc, len(self.known[server.kind]))
                continue
            self.polls += 1
            seen: set[str] = set()
            for s in streams:
                sid = stream_id_for(server.kind, s.app, s.name)
                seen.add(sid)
                if sid in self.known[server.kind]:
                    continue
                path = f"{s.app}/{s.name}" if s.app else s.name
                url = server.pull_url_template.format(app=quote(s.app, safe="/"), name=quote(s.name, safe=""),
                                                      path=quote(path, safe="/"), stream_id=sid)
                log.info("discovery: %s lists new stream %s", server.kind, sid)
                self.registry.add_stream(sid, url, server=server.kind, app=s.app, name=s.name,
                                         publisher_addr=s.client_addr)
            for sid in self.known[server.kind] - seen:
                log.info("discovery: %s no longer lists %s", server.kind, sid)
                self.registry.remove_stream(sid)
            self.known[server.kind] = seen

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
