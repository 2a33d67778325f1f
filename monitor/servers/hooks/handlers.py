"""The hook routes for nginx-rtmp, SRS and MediaMTX, and what a publish or unpublish does to the monitor.

`Hooks` turns each server's request into a decision: a banned publish is refused, any other is registered
with the StreamRegistry (or refused with a 4xx when the monitor cannot watch it, unless `fail_open`), an
unpublish releases its stream; every decision is logged (names redacted) and counted. Requests reach these
routes only through the guard in monitor/servers/hooks/app.py, after authentication.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

from monitor.config.models import STREAM_ID_RE
from monitor.servers.bans import Ban, BanList
from monitor.servers.hooks.naming import StreamNamer
from monitor.servers.hooks.origins import Origin, StreamRefused, StreamRegistry, show_addr
from monitor.servers.hooks.parsing import (
    ok,
    opt_str,
    parse_form,
    parse_json_object,
    query_keys,
    require_type,
    required,
    str_field,
)
from monitor.servers.hooks.settings import HookSettings, ServerKind, pull_url

log = logging.getLogger("monitor.servers.hooks")  # one logger for the hook server, whichever module logs

OutcomeCounter = Callable[[str, str], None]  # (outcome, reason)


@dataclass
class Hooks:
    """The routes' state: where publishes go (`registry`), the bans, and the counts of every decision."""

    registry: StreamRegistry
    bans: BanList
    settings: HookSettings
    namer: StreamNamer
    count: OutcomeCounter | None = None
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, reason) -> publishes
    # MediaMTX auth registrations awaiting runOnReady: stream id -> (deadline, origin)
    gate: dict[str, tuple[float, Origin]] = field(default_factory=dict)

    # -- decisions ----------------------------------------------------------------------------------------

    async def check_bans(self, keys: Iterable[str], addr: str | None) -> Ban | None:
        """First ban on any of `keys` (stream names, key arguments) or on `addr`."""
        candidates = list(dict.fromkeys(k for k in keys if k))

        def lookup() -> Ban | None:
            for key in candidates:
                ban = self.bans.is_banned(key, None)
                if ban is not None:
                    return ban
            return self.bans.is_banned(None, addr) if addr else None

        # The ban list may touch the disk (reload after an edit, prune expired bans): keep it off the loop.
        return await asyncio.to_thread(lookup)

    def counted(self, outcome: str, reason: str = "") -> None:
        self.outcomes[(outcome, reason)] += 1
        if self.count is not None:
            try:
                self.count(outcome, reason)
            except Exception:  # metrics must never refuse a publish
                log.exception("hooks: counting a publish failed")

    def register(
        self, server: ServerKind, app: str, name: str, path: str, addr: str | None, keys: list[str],
        client_id: str | None = None, *, gate: bool = False,
    ) -> tuple[int, str] | None:
        """Start watching; None when watched (or allowed by fail_open), else the refusal's HTTP status (409
        for a stream watched for another publisher, else 403) and text."""
        stream_id = self.namer.stream_id(server, app, name)
        try:
            url = pull_url(self.settings.pull_url_templates[server], app, name, path, stream_id)
            if not STREAM_ID_RE.match(stream_id):  # cannot happen with StreamNamer; never watch blind
                raise StreamRefused("invalid", "stream id is not a valid topic level")
            self.registry.add_stream(stream_id, url, server=server, app=app, name=name, publisher_addr=addr,
                                     client_id=client_id, keys=tuple(dict.fromkeys(keys)))
        except StreamRefused as exc:
            reason, why = exc.reason, str(exc)
        except Exception as exc:
            log.exception("stream_id=%s: registry add_stream failed", stream_id)
            reason, why = "error", f"the monitor could not start watching ({type(exc).__name__})"
        else:
            self.counted("watched")
            if gate:
                self.gate[stream_id] = (time.monotonic() + self.settings.mediamtx_ready_timeout_s,
                                        Origin(server, app, name, addr, client_id))
            else:
                self.gate.pop(stream_id, None)
            log.info("stream_id=%s publish allowed from %s%s", stream_id, show_addr(addr),
                     "".join(f" {self.namer.mask(k)}" for k in keys))
            return None
        if self.settings.fail_open:
            self.counted("allowed_unwatched", reason)
            log.error("stream_id=%s publish from %s allowed but NOT watched (hooks.fail_open): %s", stream_id,
                      show_addr(addr), why)
            return None
        self.counted("refused", reason)
        log.warning("stream_id=%s publish refused from %s: cannot watch it: %s", stream_id, show_addr(addr), why)
        return (409 if reason == "conflict" else 403), f"refused: {why}"

    def unregister(self, server: ServerKind, app: str, name: str, addr: str | None = None,
                   client_id: str | None = None) -> None:
        stream_id = self.namer.stream_id(server, app, name)
        try:
            self.registry.remove_stream(stream_id, server=server, app=app, name=name, publisher_addr=addr,
                                        client_id=client_id)
        except StreamRefused as exc:
            self.counted("unpublish_ignored", exc.reason)
            log.warning("stream_id=%s unpublish from %s ignored: %s", stream_id, show_addr(addr), exc)
        except Exception:
            log.exception("stream_id=%s: registry remove_stream failed", stream_id)
        else:
            self.gate.pop(stream_id, None)
            log.info("stream_id=%s publish ended", stream_id)

    def expire_gate(self, now: float | None = None) -> None:
        """Drop MediaMTX gate registrations that no runOnReady confirmed in time."""
        now = time.monotonic() if now is None else now
        for stream_id, (deadline, o) in list(self.gate.items()):
            if deadline > now:
                continue
            del self.gate[stream_id]
            try:
                self.registry.remove_stream(stream_id, server=o.server, app=o.app, name=o.name,
                                            publisher_addr=o.publisher_addr, client_id=o.client_id)
            except StreamRefused as exc:
                log.info("stream_id=%s: gate registration expired, but the stream is another's now (%s)",
                         stream_id, exc)
            except Exception:
                log.exception("stream_id=%s: registry remove_stream failed", stream_id)
            else:
                self.counted("gate_expired")
                log.warning("stream_id=%s: allowed by the auth gate but never ready within %.0f s: not watched "
                            "any more", stream_id, self.settings.mediamtx_ready_timeout_s)

    def refused(self, server: ServerKind, app: str, name: str, addr: str | None, ban: Ban) -> str:
        stream_id = self.namer.stream_id(server, app, name)
        self.counted("banned", ban.kind)
        # The ban's value may be a stream key: log its kind and reason, never the value.
        log.warning(
            "stream_id=%s publish refused from %s: %s ban (%s)", stream_id, show_addr(addr), ban.kind, ban.reason
        )
        return f"banned: {ban.reason}" if ban.reason else "banned"

    # -- routes ---------------------------------------------------------------------------------------------

    async def nginx_rtmp(self, request: web.Request, body: bytes) -> web.Response:
        require_type(request, "application/x-www-form-urlencoded")
        pairs = parse_form(body)
        # nginx-rtmp writes its own fields first and appends the publisher's URL arguments after them, so
        # the first value is nginx's and a publisher cannot override `addr`, `clientid` or `name`.
        fields: dict[str, str] = {}
        for k, v in pairs:
            fields.setdefault(k, v)
        call = required(fields, "call")
        app = required(fields, "app", allow_empty=True)
        addr = fields.get("addr") or None
        client_id = fields.get("clientid") or None
        if call not in ("publish", "publish_done", "update"):
            return ok()
        if call == "update" and not fields.get("name"):
            return ok()  # never drop a client over a field we only use for ban checks
        name = required(fields, "name")
        if call == "publish_done":
            self.unregister("nginx-rtmp", app, name, addr, client_id)
            return ok()
        keys = [v for k, v in pairs if k == "key"]
        if call == "update" and not self.settings.nginx_update_checks_bans:
            return ok()
        ban = await self.check_bans([name, *keys], addr)
        if ban is not None:
            return web.Response(status=403, text=self.refused("nginx-rtmp", app, name, addr, ban))
        if call == "publish":
            refusal = self.register("nginx-rtmp", app, name, f"{app}/{name}", addr, keys, client_id)
            if refusal is not None:
                return web.Response(status=refusal[0], text=refusal[1])
        return ok()

    async def srs(self, request: web.Request, body: bytes) -> web.Response:
        require_type(request, "application/json")
        doc = parse_json_object(body)
        action = str_field(doc, "action")
        if action not in ("on_publish", "on_unpublish"):
            return web.json_response({"code": 0})
        app = str_field(doc, "app", allow_empty=True)
        name = str_field(doc, "stream")
        addr = opt_str(doc, "ip")
        client_id = opt_str(doc, "client_id")
        if action == "on_unpublish":
            self.unregister("srs", app, name, addr, client_id)
            return web.json_response({"code": 0})
        keys = query_keys(opt_str(doc, "param") or "")
        ban = await self.check_bans([name, *keys], addr)
        if ban is not None:
            # SRS wants HTTP 200 and a non-zero code to refuse.
            return web.json_response({"code": 403, "msg": self.refused("srs", app, name, addr, ban)})
        refusal = self.register("srs", app, name, f"{app}/{name}", addr, keys, client_id)
        if refusal is not None:
            return web.json_response({"code": refusal[0], "msg": refusal[1]})
        return web.json_response({"code": 0})

    async def mediamtx_auth(self, request: web.Request, body: bytes) -> web.Response:
        require_type(request, "application/json")
        doc = parse_json_object(body)
        action = str_field(doc, "action")
        if action != "publish":
            return ok()  # reads, API, metrics: not ours to gate
        path = str_field(doc, "path")
        app, _, name = path.rpartition("/")
        addr = opt_str(doc, "ip")
        opt_str(doc, "id")  # type check only: runOnReady names the publisher by MTX_SOURCE_ID, which it binds
        keys = query_keys(opt_str(doc, "query") or "")
        ban = await self.check_bans([name, path, *keys], addr)
        if ban is not None:
            return web.Response(status=403, text=self.refused("mediamtx", app, name, addr, ban))
        if self.settings.mediamtx_register_on_auth:
            refusal = self.register("mediamtx", app, name, path, addr, keys, gate=True)
            if refusal is not None:
                return web.Response(status=refusal[0], text=refusal[1])
        return ok()

    async def mediamtx_ready(self, request: web.Request, body: bytes) -> web.Response:
        require_type(request, "application/json")
        doc = parse_json_object(body)
        path = str_field(doc, "path")
        app, _, name = path.rpartition("/")
        keys = query_keys(opt_str(doc, "query") or "")
        opt_str(doc, "source_type")  # type check only
        source_id = opt_str(doc, "source_id")
        # Too late to refuse here (the stream is up), but a banned stream must not be watched as if fine:
        # answer 403 so the command exits non-zero, and MediaMTX's auth gate or a kick does the rest.
        ban = await self.check_bans([name, path, *keys], None)
        if ban is not None:
            return web.Response(status=403, text=self.refused("mediamtx", app, name, None, ban))
        refusal = self.register("mediamtx", app, name, path, None, keys, source_id)
        if refusal is not None:
            return web.Response(status=refusal[0], text=refusal[1])
        return ok()

    async def mediamtx_not_ready(self, request: web.Request, body: bytes) -> web.Response:
        require_type(request, "application/json")
        doc = parse_json_object(body)
        path = str_field(doc, "path")
        app, _, name = path.rpartition("/")
        self.unregister("mediamtx", app, name, None, opt_str(doc, "source_id"))
        return ok()



Route = Callable[[Hooks, web.Request, bytes], Awaitable[web.Response]]

ROUTE_TABLE: dict[str, Route] = {
    "/hooks/nginx-rtmp": Hooks.nginx_rtmp,
    "/hooks/srs": Hooks.srs,
    "/hooks/mediamtx/auth": Hooks.mediamtx_auth,
    "/hooks/mediamtx/ready": Hooks.mediamtx_ready,
    "/hooks/mediamtx/not-ready": Hooks.mediamtx_not_ready,
}
ROUTES: tuple[str, ...] = tuple(ROUTE_TABLE)
