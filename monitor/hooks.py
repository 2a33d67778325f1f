"""HTTP endpoints the streaming servers call when a publisher starts or stops.

Routes (all POST):
  /hooks/nginx-rtmp          nginx-rtmp on_publish / on_publish_done / on_update (form-encoded POST)
  /hooks/srs                 SRS `http_hooks` on_publish/on_unpublish (JSON; refusal is `{"code": 403}`)
  /hooks/mediamtx/auth       MediaMTX `authHTTPAddress` (JSON; 2xx allows, anything else denies)
  /hooks/mediamtx/ready      sent by monitor.mediamtx_hook from `runOnReady`
  /hooks/mediamtx/not-ready  sent by monitor.mediamtx_hook from `runOnNotReady`

Each request must prove it knows the shared secret: `?token=SECRET` in the hook URL (what the servers can be
configured with) or `X-Hook-Signature: sha256=<hex HMAC-SHA256 of the raw body>` (what our own command sends).
A publish whose stream name, `key` argument or address is banned is refused; any other publish is registered
with the StreamRegistry so the monitor starts pulling it. The hook is on the publish path of a live service,
so registry trouble is logged and the publish still allowed, and client input never causes a 5xx.
Logs carry the stream id; `key` values are masked and the secret (query string included) is never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import string
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from monitor.bans import Ban, BanList

log = logging.getLogger(__name__)
access_log = logging.getLogger(__name__ + ".access")

ServerKind = Literal["nginx-rtmp", "srs", "mediamtx"]
SERVER_KINDS: tuple[ServerKind, ...] = ("nginx-rtmp", "srs", "mediamtx")
DEFAULT_PULL_URL_TEMPLATES: dict[ServerKind, str] = {
    "nginx-rtmp": "rtmp://127.0.0.1:1935/{app}/{name}",
    "srs": "rtmp://127.0.0.1:1935/{app}/{name}",
    "mediamtx": "rtsp://127.0.0.1:8554/{path}",
}
TEMPLATE_FIELDS = frozenset({"app", "name", "path", "stream_id"})
DEFAULT_PORT = 8181
SIGNATURE_HEADER = "X-Hook-Signature"

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_MAX_ID_LEN = 200
_MAX_FORM_FIELDS = 200
_MAX_BUCKETS = 10_000


class StreamRegistry(Protocol):
    """What the hooks tell the monitor. Calls must not block (the supervisor queues the work) and should be
    idempotent: MediaMTX may report one publish twice (auth gate, then runOnReady)."""

    def add_stream(
        self, stream_id: str, url: str, *, server: str, app: str, name: str, publisher_addr: str | None
    ) -> None: ...

    def remove_stream(self, stream_id: str) -> None: ...


class HookSettings(BaseModel):
    """Hook server settings. Only `secret` is required."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr
    # Where the monitor pulls a stream from once it is published; fields {app} {name} {path} {stream_id}
    # ({path} is "app/name", or MediaMTX's path). Kinds left out keep their default.
    pull_url_templates: dict[ServerKind, str] = Field(
        default_factory=lambda: dict(DEFAULT_PULL_URL_TEMPLATES)
    )
    max_body_bytes: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)
    rate_limit_per_s: float = Field(default=20.0, gt=0)  # per client address, token bucket
    rate_limit_burst: int = Field(default=40, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    # MediaMTX: register on the auth gate's publish (earliest) as well as on runOnReady.
    mediamtx_register_on_auth: bool = True
    # nginx-rtmp `on_update` (with `notify_update_strict on`) drops a publisher banned mid-stream.
    nginx_update_checks_bans: bool = True

    @field_validator("secret")
    @classmethod
    def _secret_strength(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("hook secret must be at least 16 characters")
        return v

    @field_validator("pull_url_templates")
    @classmethod
    def _check_templates(cls, v: dict[ServerKind, str]) -> dict[ServerKind, str]:
        merged = {**DEFAULT_PULL_URL_TEMPLATES, **v}
        for kind, template in merged.items():
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
                unknown = fields - TEMPLATE_FIELDS
                if unknown:
                    raise ValueError(f"unknown field(s) {sorted(unknown)}; use {sorted(TEMPLATE_FIELDS)}")
                template.format(app="a", name="n", path="a/n", stream_id="s")
            except (ValueError, KeyError, IndexError) as exc:
                raise ValueError(f"pull URL template for {kind} {template!r}: {exc}") from None
        return merged


def stream_id_for(server: str, app: str, name: str) -> str:
    """`{server}-{app}-{name}`, anything outside [A-Za-z0-9._-] replaced by `_` (ids name files, topics)."""
    return _UNSAFE_ID.sub("_", f"{server}-{app}-{name}")[:_MAX_ID_LEN]


def mask_key(value: str) -> str:
    """A stream key as it may appear in logs: a short digest, enough to correlate lines."""
    return "key#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class _BadRequest(Exception):
    """Client input we cannot use: answered 400 with this short reason."""


class _TokenBuckets:
    """Per-address token buckets; idle full buckets are forgotten so the table stays bounded."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # addr -> (tokens, last refill)

    def take(self, addr: str, now: float | None = None) -> float:
        """0.0 if the request may proceed, else seconds until a token is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(addr, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[addr] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[addr] = (tokens - 1.0, now)
        if len(self._buckets) > _MAX_BUCKETS:
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        refill_s = self._burst / self._rate
        self._buckets = {a: b for a, b in self._buckets.items() if now - b[1] < refill_s}
        if len(self._buckets) > _MAX_BUCKETS:  # a flood from many addresses: keep the most recent half
            recent = sorted(self._buckets.items(), key=lambda kv: kv[1][1])[-_MAX_BUCKETS // 2 :]
            self._buckets = dict(recent)


@dataclass
class _Hooks:
    registry: StreamRegistry
    bans: BanList
    settings: HookSettings
    buckets: _TokenBuckets

    def __post_init__(self) -> None:
        self._secret = self.settings.secret.get_secret_value().encode("utf-8")

    # -- checks common to every route ----------------------------------------------------------------------

    def authorised(self, request: web.Request, body: bytes) -> bool:
        for token in request.query.getall("token", []):
            if hmac.compare_digest(_utf8(token), self._secret):
                return True
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if signature[:7].lower() == "sha256=":
            expected = hmac.new(self._secret, body, hashlib.sha256).hexdigest().encode()
            if hmac.compare_digest(_utf8(signature[7:].strip().lower()), expected):
                return True
        return False

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

    def pull_url(self, server: ServerKind, app: str, name: str, path: str, stream_id: str) -> str:
        return self.settings.pull_url_templates[server].format(
            app=quote(app, safe="/"),
            name=quote(name, safe=""),
            path=quote(path, safe="/"),
            stream_id=stream_id,
        )

    def register(
        self, server: ServerKind, app: str, name: str, path: str, addr: str | None, keys: list[str]
    ) -> str:
        stream_id = stream_id_for(server, app, name)
        url = self.pull_url(server, app, name, path, stream_id)
        try:
            self.registry.add_stream(stream_id, url, server=server, app=app, name=name, publisher_addr=addr)
        except Exception:
            # Refusing a legitimate publisher because our side failed would be an outage: allow, shout.
            log.exception("stream_id=%s: registry add_stream failed; publish allowed anyway", stream_id)
        else:
            log.info(
                "stream_id=%s publish allowed from %s%s",
                stream_id,
                _show(addr),
                "".join(f" {mask_key(k)}" for k in keys),
            )
        return stream_id

    def unregister(self, server: ServerKind, app: str, name: str) -> None:
        stream_id = stream_id_for(server, app, name)
        try:
            self.registry.remove_stream(stream_id)
        except Exception:
            log.exception("stream_id=%s: registry remove_stream failed", stream_id)
        else:
            log.info("stream_id=%s publish ended", stream_id)

    def refused(self, server: ServerKind, app: str, name: str, addr: str | None, ban: Ban) -> str:
        stream_id = stream_id_for(server, app, name)
        # The ban's value may be a stream key: log its kind and reason, never the value.
        log.warning(
            "stream_id=%s publish refused from %s: %s ban (%s)", stream_id, _show(addr), ban.kind, ban.reason
        )
        return f"banned: {ban.reason}" if ban.reason else "banned"

    # -- routes ---------------------------------------------------------------------------------------------

    async def nginx_rtmp(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/x-www-form-urlencoded")
        pairs = _parse_form(body)
        # nginx-rtmp writes its own fields first and appends the publisher's URL arguments after them, so
        # the first value is nginx's and a publisher cannot override `addr` or `name`.
        fields: dict[str, str] = {}
        for k, v in pairs:
            fields.setdefault(k, v)
        call = _required(fields, "call")
        app = _required(fields, "app", allow_empty=True)
        addr = fields.get("addr") or None
        if call not in ("publish", "publish_done", "update"):
            return _ok()
        if call == "update" and not fields.get("name"):
            return _ok()  # never drop a client over a field we only use for ban checks
        name = _required(fields, "name")
        if call == "publish_done":
            self.unregister("nginx-rtmp", app, name)
            return _ok()
        keys = [v for k, v in pairs if k == "key"]
        if call == "update" and not self.settings.nginx_update_checks_bans:
            return _ok()
        ban = await self.check_bans([name, *keys], addr)
        if ban is not None:
            return web.Response(status=403, text=self.refused("nginx-rtmp", app, name, addr, ban))
        if call == "publish":
            self.register("nginx-rtmp", app, name, f"{app}/{name}", addr, keys)
        return _ok()

    async def srs(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/json")
        doc = _parse_json_object(body)
        action = _str(doc, "action")
        if action not in ("on_publish", "on_unpublish"):
            return web.json_response({"code": 0})
        app = _str(doc, "app", allow_empty=True)
        name = _str(doc, "stream")
        if action == "on_unpublish":
            self.unregister("srs", app, name)
            return web.json_response({"code": 0})
        addr = _opt_str(doc, "ip")
        keys = _query_keys(_opt_str(doc, "param") or "")
        ban = await self.check_bans([name, *keys], addr)
        if ban is not None:
            # SRS wants HTTP 200 and a non-zero code to refuse.
            return web.json_response({"code": 403, "msg": self.refused("srs", app, name, addr, ban)})
        self.register("srs", app, name, f"{app}/{name}", addr, keys)
        return web.json_response({"code": 0})

    async def mediamtx_auth(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/json")
        doc = _parse_json_object(body)
        action = _str(doc, "action")
        if action != "publish":
            return _ok()  # reads, API, metrics: not ours to gate
        path = _str(doc, "path")
        app, _, name = path.rpartition("/")
        addr = _opt_str(doc, "ip")
        keys = _query_keys(_opt_str(doc, "query") or "")
        ban = await self.check_bans([name, path, *keys], addr)
        if ban is not None:
            return web.Response(status=403, text=self.refused("mediamtx", app, name, addr, ban))
        if self.settings.mediamtx_register_on_auth:
            self.register("mediamtx", app, name, path, addr, keys)
        return _ok()

    async def mediamtx_ready(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/json")
        doc = _parse_json_object(body)
        path = _str(doc, "path")
        app, _, name = path.rpartition("/")
        keys = _query_keys(_opt_str(doc, "query") or "")
        for field in ("source_type", "source_id"):
            _opt_str(doc, field)  # type check only
        # Too late to refuse here (the stream is up), but a banned stream must not be watched as if fine:
        # answer 403 so the command exits non-zero, and MediaMTX's auth gate or a kick does the rest.
        ban = await self.check_bans([name, path, *keys], None)
        if ban is not None:
            return web.Response(status=403, text=self.refused("mediamtx", app, name, None, ban))
        self.register("mediamtx", app, name, path, None, keys)
        return _ok()

    async def mediamtx_not_ready(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/json")
        doc = _parse_json_object(body)
        path = _str(doc, "path")
        app, _, name = path.rpartition("/")
        self.unregister("mediamtx", app, name)
        return _ok()


_Route = Callable[[_Hooks, web.Request, bytes], Awaitable[web.Response]]

_ROUTES: dict[str, _Route] = {
    "/hooks/nginx-rtmp": _Hooks.nginx_rtmp,
    "/hooks/srs": _Hooks.srs,
    "/hooks/mediamtx/auth": _Hooks.mediamtx_auth,
    "/hooks/mediamtx/ready": _Hooks.mediamtx_ready,
    "/hooks/mediamtx/not-ready": _Hooks.mediamtx_not_ready,
}


def _guard(hooks: _Hooks, route: _Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Rate limit, size limit, secret check and 400 mapping shared by every route."""

    async def handler(request: web.Request) -> web.Response:
        peer = request.remote or "?"
        wait = hooks.buckets.take(peer)
        if wait > 0:
            log.warning("%s from %s: rate limited", request.path, peer)
            retry = str(max(1, math.ceil(wait)))
            return web.Response(status=429, text="too many requests", headers={"Retry-After": retry})
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # No streaming server compresses hook bodies; refusing avoids inflating bombs.
            log.warning("%s from %s: compressed body refused", request.path, peer)
            return web.Response(status=400, text="compressed bodies are not accepted")
        limit = hooks.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            log.warning("%s from %s: body of %d bytes refused", request.path, peer, request.content_length)
            return web.Response(status=413, text=f"body larger than {limit} bytes")
        try:
            body = await _read_limited(request, limit)
        except _TooLarge:
            log.warning("%s from %s: body over %d bytes refused", request.path, peer, limit)
            return web.Response(status=413, text=f"body larger than {limit} bytes")
        except Exception as exc:  # truncated chunks, bad Content-Encoding, reset connections
            log.warning("%s from %s: unreadable body: %s", request.path, peer, type(exc).__name__)
            return web.Response(status=400, text="unreadable body")
        if not hooks.authorised(request, body):
            log.warning("%s from %s: missing or wrong hook secret", request.path, peer)
            return web.Response(status=401, text="missing or wrong hook secret")
        try:
            return await route(hooks, request, body)
        except _BadRequest as exc:
            log.warning("%s from %s: bad request: %s", request.path, peer, exc)
            return web.Response(status=400, text=str(exc))

    return handler


class _TooLarge(Exception):
    pass


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, reading at most limit+1 bytes (chunked bodies have no Content-Length to check first)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _TooLarge


def make_hook_app(registry: StreamRegistry, bans: BanList, settings: HookSettings) -> web.Application:
    """The aiohttp application with the hook routes (see the module docstring).

    Prefer start_hook_server. Whoever runs the app otherwise must give its runner `**RUNNER_KWARGS`:
    aiohttp's default access log prints the query string, and with it `?token=SECRET`."""
    hooks = _Hooks(
        registry, bans, settings, _TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
    )
    # client_max_size backs up our own limit for anything that would call request.read().
    app = web.Application(client_max_size=settings.max_body_bytes)
    for path, route in _ROUTES.items():
        app.router.add_post(path, _guard(hooks, route))
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


# Runner options the hook app needs: an access log without query strings (they carry the token), and no
# request decompression (no server compresses hook bodies; inflating them only invites zip bombs, and a
# broken gzip body would otherwise be logged as a server error while aiohttp drains it).
RUNNER_KWARGS: dict[str, Any] = {"access_log_class": HookAccessLogger, "auto_decompress": False}


async def start_hook_server(
    registry: StreamRegistry,
    bans: BanList,
    settings: HookSettings,
    *,
    host: str | None = None,
    port: int | None = None,
) -> web.AppRunner:
    """Serve the hooks on settings.host:settings.port (127.0.0.1:8181) unless overridden; port 0 picks a
    free one (see `runner.addresses`). The caller ends it with `await runner.cleanup()`."""
    bind_host = settings.host if host is None else host
    bind_port = settings.port if port is None else port
    if not _is_loopback(bind_host):
        log.warning(
            "hook server listens on %s: reachable beyond this machine (the secret still applies)", bind_host
        )
    runner = web.AppRunner(make_hook_app(registry, bans, settings), access_log=access_log, **RUNNER_KWARGS)
    await runner.setup()
    try:
        await web.TCPSite(runner, bind_host, bind_port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("hook server listening on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
    return runner


# -- parsing helpers -----------------------------------------------------------------------------------------


def _ok() -> web.Response:
    return web.Response(text="ok")


def _utf8(value: str) -> bytes:
    # Header and query values may carry lone surrogates; they then simply do not match.
    return value.encode("utf-8", "surrogatepass")


def _show(addr: str | None) -> str:
    return repr(addr[:64]) if addr else "unknown address"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise _BadRequest(f"content type must be {expected}")


def _parse_form(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
        return parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=_MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise _BadRequest("form body is not valid UTF-8") from None
    except ValueError:
        raise _BadRequest("malformed form body") from None


def _parse_json_object(body: bytes) -> Mapping[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadRequest("body is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise _BadRequest("body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _BadRequest("body must be a JSON object")
    return doc


def _required(fields: Mapping[str, str], name: str, *, allow_empty: bool = False) -> str:
    value = fields.get(name)
    if value is None or (not value and not allow_empty):
        raise _BadRequest(f"missing field {name!r}")
    return value


def _str(doc: Mapping[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise _BadRequest(f"field {name!r} must be a string")
    if not value and not allow_empty:
        raise _BadRequest(f"field {name!r} must not be empty")
    return value


def _opt_str(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise _BadRequest(f"field {name!r} must be a string")
    return value or None


def _query_keys(query: str) -> list[str]:
    """`key` arguments of a publish URL's query (SRS gives it with a leading '?')."""
    try:
        pairs = parse_qsl(
            query.lstrip("?"), keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=100
        )
    except ValueError:  # includes UnicodeDecodeError
        raise _BadRequest("malformed query") from None
    return [v for k, v in pairs if k == "key" and v]
