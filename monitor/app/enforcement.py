"""Terminate: ban the publisher, then drop it through its streaming server's API.

The ban comes first (the publisher's client reconnects within seconds of the drop) and covers the stream name,
the publish URL's `key` arguments and, with terminate.ban_addr, the publisher's address. Neither step raises: a
ban list that cannot be written, or a value that cannot be a ban, is reported in the outcome and the drop
happens all the same; a server API that fails is a failed drop. Keys are masked wherever they are shown.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from monitor.config.models import TerminateConfig
from monitor.servers.api import DropResult, ServerAPI
from monitor.servers.bans import BanList
from monitor.servers.hooks import Origin, StreamNamer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Termination:
    result: DropResult  # its detail says when the ban failed too
    bans: list[str]  # what was banned, as shown ("addr", or a key masked by the namer)
    ban_error: str | None  # why some or all of the bans were not stored


class Enforcer:
    """Bans and drops publishers, by the terminate settings."""

    def __init__(self, cfg: TerminateConfig, bans: BanList, namer: StreamNamer) -> None:
        self.cfg = cfg
        self.bans = bans
        self.namer = namer

    async def terminate(self, stream_id: str, origin: Origin | None, api: ServerAPI | None, *, by: str,
                        reason: str) -> Termination:
        """Ban `origin`'s publisher and drop it through `api` (its server's); never raises."""
        banned: list[str] = []
        ban_error: str | None = None
        if origin is not None and self.cfg.ban:
            banned, ban_error = await self._ban(stream_id, origin, by=by, reason=reason)
        if origin is None:
            result = DropResult(False, f"stream {stream_id} was not announced by a streaming server hook")
        elif api is None:
            result = DropResult(False, f"no API configured for server kind {origin.server} (servers: in config)")
        else:
            try:
                result = await api.drop_publisher(origin.app, origin.name)
            except Exception as exc:
                result = DropResult(False, f"server API failed: {type(exc).__name__}: {exc}")
        if ban_error is not None:
            result = replace(result, detail=f"{result.detail}; ban failed: {ban_error}")
        (log.warning if result.ok else log.error)("terminate stream %s by %r: %s (%s)", stream_id, by,
                                                   "done" if result.ok else "FAILED", result.detail)
        return Termination(result, banned, ban_error)

    async def _ban(self, stream_id: str, origin: Origin, *, by: str, reason: str) -> tuple[list[str], str | None]:
        """What was banned (as shown), and why some or all of it was not."""
        targets: list[tuple[Literal["key", "addr"], str]] = [("key", k) for k in (origin.name, *origin.keys) if k]
        if self.cfg.ban_addr and origin.publisher_addr:
            targets.append(("addr", origin.publisher_addr))
        expires = datetime.now(UTC) + timedelta(hours=self.cfg.ban_hours) if self.cfg.ban_hours else None

        def shown(kind: str, value: str) -> str:  # keys never reach logs or evidence as they are
            return kind if kind == "addr" else self.namer.mask(value)  # keyed: no dictionary attack

        # A value that cannot be a ban (a 5,000-character `key` argument) must not cost the others theirs.
        unbannable = [f"{shown(k, v)} ({why})" for k, v in targets if (why := self.bans.problem(k, v))]
        targets = [(k, v) for k, v in targets if self.bans.problem(k, v) is None]
        banned: list[str] = []
        ban_error: str | None = None
        try:  # first: the publisher's client reconnects within seconds of the drop
            await asyncio.to_thread(self.bans.add_many, targets, reason=reason or "terminated", author=by,
                                    expires_at=expires)
            banned = [shown(kind, v) for kind, v in targets]
        except Exception as exc:  # BanListError (disk, permissions): report it, drop anyway
            ban_error = str(exc)
            log.error("terminate stream %s: ban NOT stored (the publisher's reconnect will not be refused): %s",
                      stream_id, exc)
        if unbannable:
            ban_error = "; ".join([*([ban_error] if ban_error else []), "not banned: " + ", ".join(unbannable)])
            log.error("terminate stream %s: not banned: %s", stream_id, ", ".join(unbannable))
        return banned, ban_error
