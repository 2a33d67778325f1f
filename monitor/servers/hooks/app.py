"""The aiohttp application of the hooks and the server that runs it.

Every route runs behind one guard (`_guard`): the secret check first (monitor/servers/hooks/auth.py), then the
body's encoding and size, then the route (monitor/servers/hooks/handlers.py) with unusable input answered 400.
The runner needs `RUNNER_KWARGS`: an access log without query strings (they carry `?token=`) and no request
decompression.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypedDict

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from monitor.servers.bans import BanList
from monitor.servers.hooks.auth import SIGNATURE_HEADER, HookAuth, is_loopback
from monitor.servers.hooks.handlers import ROUTE_TABLE, Hooks, OutcomeCounter, Route
from monitor.servers.hooks.naming import StreamNamer
from monitor.servers.hooks.origins import StreamRegistry
from monitor.servers.hooks.parsing import BadRequest, TooLarge, read_limited
from monitor.servers.hooks.settings import HookSettings

log = logging.getLogger("monitor.servers.hooks")  # one logger for the hook server, whichever module logs
access_log = logging.getLogger("monitor.servers.hooks.access")

HOOKS_KEY = web.AppKey("hooks", Hooks)
AUTH_KEY = web.AppKey("hook_auth", HookAuth)
GATE_SWEEP_S = 1.0


def _guard(hooks: Hooks, auth: HookAuth, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Secret check first, then size limit and 400 mapping; only callers that fail the check are rate limited
    (one local process cannot make the streaming server's genuine publishes fail)."""

    async def handler(request: web.Request) -> web.Response:
        peer = request.remote or "?"
        by_token = auth.token_ok(request)
        signed = SIGNATURE_HEADER in request.headers
        if not by_token and not signed:
            return auth.refuse(request, "missing or wrong hook secret", 401, "missing or wrong hook secret")
        # Trusted callers' transport problems are logged plainly; the others' only through the limiter.
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # No streaming server compresses hook bodies; refusing avoids inflating bombs.
            if not by_token:
                return auth.refuse(request, "compressed body", 400, "compressed bodies are not accepted")
            log.warning("%s from %s: compressed body refused", request.path, peer)
            return web.Response(status=400, text="compressed bodies are not accepted")
        limit = hooks.settings.max_body_bytes
        too_large = web.Response(status=413, text=f"body larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            if not by_token:
                return auth.refuse(request, "body too large", 413, too_large.text or "")
            log.warning("%s from %s: body of %d bytes refused", request.path, peer, request.content_length)
            return too_large
        try:
            body = await read_limited(request, limit)
        except TooLarge:
            if not by_token:
                return auth.refuse(request, "body too large", 413, too_large.text or "")
            log.warning("%s from %s: body over %d bytes refused", request.path, peer, limit)
            return too_large
        except Exception as exc:  # truncated chunks, bad Content-Encoding, reset connections
            if not by_token:
                return auth.refuse(request, "unreadable body", 400, "unreadable body")
            log.warning("%s from %s: unreadable body: %s", request.path, peer, type(exc).__name__)
            return web.Response(status=400, text="unreadable body")
        if not by_token:
            problem = auth.signature_problem(request, body)
            if problem is not None:
                return auth.refuse(request, problem, 401, problem)
        try:
            return await route(hooks, request, body)
        except BadRequest as exc:
            log.warning("%s from %s: bad request: %s", request.path, peer, exc)
            return web.Response(status=400, text=str(exc))

    return handler


def make_hook_app(registry: StreamRegistry, bans: BanList, settings: HookSettings, *,
                  namer: StreamNamer | None = None, count: OutcomeCounter | None = None) -> web.Application:
    """The aiohttp application with the hook routes (see monitor/servers/hooks/__init__.py). `namer` makes the
    stream ids (the monitor's own, from its state directory; by default a throwaway key); `count(outcome,
    reason)` is called for every publish decision (the engine's Prometheus counter).

    Prefer start_hook_server. Whoever runs the app otherwise must give its runner `**RUNNER_KWARGS`:
    aiohttp's default access log prints the query string, and with it `?token=SECRET`."""
    hooks = Hooks(registry, bans, settings, namer or StreamNamer.ephemeral(), count)
    auth = HookAuth(settings, ROUTE_TABLE)
    # client_max_size backs up our own limit for anything that would call request.read().
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[HOOKS_KEY] = hooks
    app[AUTH_KEY] = auth
    for path, route in ROUTE_TABLE.items():
        app.router.add_post(path, _guard(hooks, auth, route))

    async def sweep_gate(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(GATE_SWEEP_S)
                hooks.expire_gate()

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sweep_gate)
    return app


class HookAccessLogger(AbstractAccessLogger):
    """Access log without the query string: it carries `?token=SECRET`."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s -> %d in %.1f ms",
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1e3,
        )


class RunnerKwargs(TypedDict):
    """What `web.AppRunner` (or aiohttp's TestServer) must be given for the hook app."""

    access_log_class: type[AbstractAccessLogger]
    auto_decompress: bool


# Runner options the hook app needs: an access log without query strings (they carry the token), and no
# request decompression (no server compresses hook bodies; inflating them only invites zip bombs, and a
# broken gzip body would otherwise be logged as a server error while aiohttp drains it).
RUNNER_KWARGS: RunnerKwargs = {"access_log_class": HookAccessLogger, "auto_decompress": False}


async def start_hook_server(
    registry: StreamRegistry,
    bans: BanList,
    settings: HookSettings,
    *,
    host: str | None = None,
    port: int | None = None,
    namer: StreamNamer | None = None,
    count: OutcomeCounter | None = None,
) -> web.AppRunner:
    """Serve the hooks on settings.host:settings.port (127.0.0.1:8181) unless overridden; port 0 picks a
    free one (see `runner.addresses`). The caller ends it with `await runner.cleanup()`."""
    bind_host = settings.host if host is None else host
    bind_port = settings.port if port is None else port
    if not is_loopback(bind_host):
        log.warning(
            "hook server listens on %s: reachable beyond this machine (the secret still applies)", bind_host
        )
        if settings.token_peers == "any":
            log.warning("hooks.token_peers is 'any': a ?token= URL from another machine crosses the network in "
                        "clear unless a TLS proxy is in front; prefer signatures or per-route tokens")
    if settings.token_peers != "none":
        log.info("hooks: ?token= accepted from %s peers (the secret or the route's token; the URL is never "
                 "logged)", settings.token_peers)
    if settings.fail_open:
        log.warning("hooks.fail_open is on: publishes the monitor cannot watch are allowed anyway")
    app = make_hook_app(registry, bans, settings, namer=namer, count=count)
    runner = web.AppRunner(app, access_log=access_log, **RUNNER_KWARGS)
    await runner.setup()
    try:
        await web.TCPSite(runner, bind_host, bind_port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("hook server listening on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
    return runner

