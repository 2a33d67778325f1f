"""The web console's HTTP side (aiohttp): login, the live queue over server-sent events, incident views, actions.

Every /api/ route but login needs a session (monitor/web/sessions.py); every POST also needs the session's CSRF
token in X-CSRF-Token and, when the browser sends one, an Origin equal to the console's own. Roles
(monitor/web/users.py) gate what each route does: viewers read, moderators claim and act on what they hold, leads
also approve permanent bans and read the audit page. The pages are static files in monitor/web/static/.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from aiohttp import web

from monitor.common.statefiles import private_dir
from monitor.config.models import MonitorConfig
from monitor.web.actions import Audit, CommandSigner
from monitor.web.incidents import IncidentRoutes
from monitor.web.queue import QueueError, ReviewQueue
from monitor.web.sessions import LoginLimiter, Session, SessionStore
from monitor.web.users import Role, UserStore, at_least, users_path

__all__ = ["COOKIE", "WebConsole", "make_app"]

log = logging.getLogger(__name__)
COOKIE = "lsm_session"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The request's session, set by `guard` (a context variable: web.RequestKey needs aiohttp 3.14).
_SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar("web_session", default=None)


@dataclass
class WebConsole:
    """What the routes share: config, accounts, sessions, the queue, the signer, the audit, the event streams."""

    cfg: MonitorConfig
    users: UserStore
    sessions: SessionStore
    limiter: LoginLimiter
    queue: ReviewQueue
    signer: CommandSigner
    audit: Audit
    send: Callable[[str, dict[str, object]], None]  # (node, command): out to the broker (monitor/web/bridge.py)

    def __post_init__(self) -> None:
        self.listeners: set[asyncio.Queue[str]] = set()

    @classmethod
    def build(cls, cfg: MonitorConfig, send: Callable[[str, dict[str, object]], None]) -> WebConsole:
        w = cfg.web
        private_dir(cfg.state_dir)
        evidence = cfg.state_dir / "evidence.sqlite" if cfg.evidence.enabled else None
        return cls(cfg, UserStore(users_path(cfg.state_dir, w.users_file)),
                   SessionStore(ttl_s=w.session_ttl_s, idle_s=w.session_idle_s),
                   LoginLimiter(max_failures=w.login_max_failures, window_s=w.login_window_s),
                   ReviewQueue(claim_ttl_s=w.claim_ttl_s), CommandSigner.from_file(w.command_key_file, cfg.state_dir),
                   Audit(evidence), send)

    @property
    def permanent_ban(self) -> bool:
        """A terminate bans for good (terminate.ban without ban_hours): the two-person rule applies."""
        return self.cfg.terminate.ban and self.cfg.terminate.ban_hours is None

    def broadcast(self, event: str, data: object) -> None:
        text = f"event: {event}\ndata: {json.dumps(data)}\n\n"
        for q in list(self.listeners):
            if q.qsize() < 1000:
                q.put_nowait(text)

    def incident_changed(self, incident_id: str) -> None:
        inc = self.queue.incidents.get(incident_id)
        self.broadcast("incident", {"incident_id": incident_id,
                                    "incident": inc.model_dump(mode="json") if inc is not None else None,
                                    "claims": self.queue.claims()})

    def state(self) -> dict[str, object]:
        return {"incidents": [i.model_dump(mode="json") for i in self.queue.open_incidents()],
                "claims": self.queue.claims(),
                "approvals": self.approvals()}

    def approvals(self) -> list[dict[str, object]]:
        return [asdict(a) for a in self.queue.approvals.values()]


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
    409: web.HTTPConflict, 413: web.HTTPRequestEntityTooLarge, 429: web.HTTPTooManyRequests,
}


def _http(status: int, message: str) -> web.HTTPException:
    """An HTTP error whose JSON body says what was refused ({"error": message})."""
    return _ERRORS.get(status, web.HTTPBadRequest)(text=json.dumps({"error": message}),
                                                   content_type="application/json", headers=_HEADERS)


def is_secure(request: web.Request, console: WebConsole) -> bool:
    if console.cfg.web.secure_cookies == "always" or request.secure:
        return True
    return console.cfg.web.trust_proxy and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def client_addr(request: web.Request, console: WebConsole) -> str:
    forwarded = request.headers.get("X-Forwarded-For") if console.cfg.web.trust_proxy else None
    return (forwarded.split(",")[-1].strip() if forwarded else None) or request.remote or "-"


def session_of(request: web.Request) -> Session:
    s = _SESSION.get()
    if s is None:
        raise _http(401, "not logged in")
    return s


def need(request: web.Request, role: Role) -> Session:
    s = session_of(request)
    if not at_least(s.role, role):
        raise _http(403, f"needs the {role} role; you are {s.role}")
    return s


CONSOLE_KEY: web.AppKey[WebConsole] = web.AppKey("console", WebConsole)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    reset = _SESSION.set(None)  # a keep-alive connection's requests share a task: none inherits a session
    try:
        return await _guarded(request, handler)
    finally:
        _SESSION.reset(reset)


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    path = request.path
    if path.startswith("/api/") and path != "/api/login":
        s = console.sessions.get(request.cookies.get(COOKIE))
        user = console.users.get(s.user) if s is not None else None
        if s is None or user is None or user.disabled:
            raise _http(401, "not logged in, or the session expired")
        s.role = user.role  # a role changed by `monitor users` applies at once
        _SESSION.set(s)
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}" and not (
                console.cfg.web.trust_proxy and origin.split("://", 1)[-1] == request.host):
            raise _http(403, "cross-origin request refused")
        if path != "/api/login" and not session_of(request).csrf_ok(request.headers.get("X-CSRF-Token")):
            raise _http(403, "missing or wrong CSRF token")
    try:
        resp = await handler(request)
    except QueueError as exc:
        resp = web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if exc.content_type != "application/json":
            raise _http(exc.status, exc.reason) from None
        raise
    for k, v in _HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    try:
        data = await request.json()
        name, password = str(data["user"]), str(data["password"])
    except (ValueError, KeyError, TypeError):
        raise _http(400, "login: send JSON {\"user\": ..., \"password\": ...}") from None
    keys = (f"user:{name}", f"addr:{client_addr(request, console)}")
    wait = console.limiter.retry_after(*keys)
    if wait is not None:
        resp = web.json_response({"error": f"too many failed logins: try again in {wait:.0f} s"}, status=429)
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    user = await asyncio.get_running_loop().run_in_executor(None, console.users.authenticate, name, password)
    if user is None:
        console.limiter.failed(*keys)
        log.warning("failed web login for %r from %s", name[:64], keys[1][5:])
        raise _http(401, "wrong user name or password")
    console.limiter.succeeded(keys[0])
    s = console.sessions.create(user.name, user.role)
    console.audit.record("login", user=user.name, role=user.role, addr=keys[1][5:])
    resp = web.json_response(_me(console, s, user.blur_px))
    resp.set_cookie(COOKIE, s.token, httponly=True, samesite="Strict", secure=is_secure(request, console),
                    path="/", max_age=int(console.cfg.web.session_ttl_s))
    return resp


def _me(console: WebConsole, s: Session, blur_px: int) -> dict[str, object]:
    return {"user": s.user, "role": s.role, "csrf": s.csrf, "blur_px": blur_px,
            "store_images": console.cfg.evidence.store_images, "permanent_ban": console.permanent_ban}


async def me(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    s = session_of(request)
    user = console.users.get(s.user)
    return web.json_response(_me(console, s, user.blur_px if user is not None else 24))


async def logout(request: web.Request) -> web.StreamResponse:
    s = session_of(request)
    request.app[CONSOLE_KEY].sessions.end(s.token)
    resp = web.json_response({"ok": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def set_blur(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    s = session_of(request)
    try:
        blur = int((await request.json())["blur_px"])
    except (ValueError, KeyError, TypeError):
        raise _http(400, "blur_px: an integer number of pixels") from None
    user = await asyncio.get_running_loop().run_in_executor(None, lambda: console.users.update(s.user, blur_px=blur))
    return web.json_response({"blur_px": user.blur_px})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `state` (the queue as it is), then `incident`, `claims` and `approvals` as they change."""
    console = request.app[CONSOLE_KEY]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    q: asyncio.Queue[str] = asyncio.Queue()
    console.listeners.add(q)
    try:
        await resp.write(f"event: state\ndata: {json.dumps(console.state())}\n\n".encode())
        while True:
            try:
                text = await asyncio.wait_for(q.get(), 15)
            except TimeoutError:
                text = ": keep-alive\n\n"
            if console.sessions.get(request.cookies.get(COOKIE), touch=False) is None:
                break  # logged out or expired: the stream ends with the session
            await resp.write(text.encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        console.listeners.discard(q)
    return resp


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name", "index.html")
    if name not in _STATIC:
        raise _http(404, "not found")
    body = resources.files("monitor.web").joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=_STATIC[name], charset="utf-8")


def make_app(console: WebConsole) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[CONSOLE_KEY] = console
    routes = IncidentRoutes(console, need)
    app.add_routes([
        web.get("/", static), web.get("/static/{name}", static),
        web.post("/api/login", login), web.post("/api/logout", logout), web.get("/api/me", me),
        web.post("/api/me/blur", set_blur), web.get("/api/events", events),
        *routes.routes(),
    ])
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str, port: int, ssl_files: tuple[Path, Path] | None = None
                  ) -> AsyncIterator[int]:
    """Serve app until the block ends; yields the bound port (port 0: a free one)."""
    import ssl

    ctx = None
    if ssl_files is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(ssl_files[0]), str(ssl_files[1]))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ctx)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    try:
        yield int(bound)
    finally:
        await runner.cleanup()
