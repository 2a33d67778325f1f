"""HTTP endpoints the streaming servers call when a publisher starts or stops.

Routes (all POST):
  /hooks/nginx-rtmp          nginx-rtmp on_publish / on_publish_done / on_update (form-encoded POST)
  /hooks/srs                 SRS `http_hooks` on_publish/on_unpublish (JSON; refusal is `{"code": 403}`)
  /hooks/mediamtx/auth       MediaMTX `authHTTPAddress` (JSON; 2xx allows, anything else denies)
  /hooks/mediamtx/ready      sent by monitor.servers.mediamtx_hook from `runOnReady`
  /hooks/mediamtx/not-ready  sent by monitor.servers.mediamtx_hook from `runOnNotReady`

Each request must prove it knows the shared secret (docs/security-hooks.md):
  * a signature (what our own command sends): `X-Hook-Timestamp: <unix s>`, `X-Hook-Nonce: <16-64 of
    [A-Za-z0-9_-]>` and `X-Hook-Signature: sha256=<hex HMAC-SHA256(secret, signing_string)>`, where the
    signing string is `livesafe-hook-v2\n{METHOD}\n{path}\n{query}\n{timestamp}\n{nonce}\n` followed by the
    raw body (see `signing_string`). It is accepted within `signature_window_s` of the monitor's clock and once
    only (a bounded replay cache of nonces);
  * `?token=...` in the hook URL, for servers that cannot sign (nginx-rtmp, SRS, MediaMTX's auth gate): the
    secret itself or the route's own token (`route_token`, which works on that route only and cannot sign).
    Accepted only from loopback peers unless `token_peers: any`.
Authentication comes first: an authenticated server is never throttled; callers that fail it are rate limited
per address, and their log lines too.

Streams get ids that nobody can forge or collide (`StreamNamer`): a readable, sanitised prefix and a keyed
digest of the exact (server, app, name). The stream name is often the publisher's secret key: it never appears
in ids, logs or metrics, only its first characters (at most a quarter of it) and the keyed digest.

A publish whose stream name, `key` argument or address is banned is refused; any other publish is registered
with the StreamRegistry so the monitor starts pulling it. A publish the monitor cannot watch (the registry
refuses or fails, a stream cap is reached) is refused with a 4xx unless `fail_open` is set; either way it is
logged and counted. Client input never causes a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import stat
import string
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from monitor.common.errors import UserError
from monitor.config.models import STREAM_ID_RE
from monitor.servers.bans import Ban, BanList

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
TIMESTAMP_HEADER = "X-Hook-Timestamp"
NONCE_HEADER = "X-Hook-Nonce"
SIGNING_PREFIX = "livesafe-hook-v2"
ID_KEY_FILE = "stream-ids.key"  # in the state directory, 0600
# A registered stream that has not been live for this long since it registered may be taken over by another
# publisher of the same (server, app, name): its unpublish was missed (a live one never is: see OriginTable).
ORIGIN_REPLACE_AFTER_S = 15.0

_STREAM_ID_RE = STREAM_ID_RE  # what the config model accepts as a stream id (one MQTT topic level)
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_UNSAFE_SHOWN = re.compile(r"[^A-Za-z0-9]")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_DIGEST_HEX = 32  # 128 bits of HMAC-SHA256: ids collide only by finding an HMAC collision under a secret key
_SHOWN_APP = 24
_SHOWN_NAME = 3
_MAX_FORM_FIELDS = 200
_MAX_BUCKETS = 10_000


# -- stream identities -----------------------------------------------------------------------------------


class StreamNamer:
    """Stream ids and redacted names under a secret key (`ID_KEY_FILE` in the state directory).

    `stream_id(server, app, name)` is `{server}-{app}-{shown}-{digest}`: the server kind, the app sanitised to
    [A-Za-z0-9._-] and cut at 24 characters, the first characters of the name (at most 3, and at most a quarter
    of it, others than [A-Za-z0-9] as `_`) and 32 hex digits of HMAC-SHA256 over the exact, length-prefixed
    (server, app, name). The readable parts are for people; the digest makes ids injective: two different
    triples share an id only through an HMAC collision, which nobody without the key can even look for. Ids are
    at most 16 + 24 + 3 + 32 + 3 = 78 characters, always within the config's 1-128 of [A-Za-z0-9._-].

    Why a key of its own, made once and kept 0600 in the state directory, rather than one derived from the hook
    secret: ids must stay the same when the hook secret is rotated (topics, retained states and the evidence
    log refer to them), discovery works without hooks (no secret), and the hook secret may sit in the
    streaming server's config as a URL token, readable by more people than the monitor's state directory.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("stream id key must be at least 16 bytes")
        self._key = key

    @classmethod
    def ephemeral(cls) -> StreamNamer:
        """A namer with a random key of its own (tests, tools): its ids differ from the monitor's."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def load(cls, path: Path) -> StreamNamer:
        """The key in `path`, made (32 random bytes as hex, mode 0600) when missing."""
        path = Path(path)
        try:
            return cls(_read_key(path))
        except FileNotFoundError:
            pass
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        log.info("stream id key made in %s (keep it: stream ids change without it)", path)
        return cls(_read_key(path))

    def digest(self, server: str, app: str, name: str) -> str:
        """32 hex digits of HMAC-SHA256 over the exact (server, app, name)."""
        return self._mac(b"stream-id", server, app, name)[:_DIGEST_HEX]

    def stream_id(self, server: str, app: str, name: str) -> str:
        shown_app = _UNSAFE_ID.sub("_", app)[:_SHOWN_APP]
        sid = f"{_UNSAFE_ID.sub('_', server)[:16]}-{shown_app}-{shown_prefix(name)}-{self.digest(server, app, name)}"
        assert _STREAM_ID_RE.match(sid), sid
        return sid

    def redacted_name(self, server: str, app: str, name: str) -> str:
        """The name as logs and evidence may show it: `{first characters}***#{digest}`."""
        return f"{shown_prefix(name)}***#{self.digest(server, app, name)}"

    def mask(self, value: str) -> str:
        """A `key` argument as logs may show it: a keyed digest, enough to correlate lines, no way back."""
        return "key#" + self._mac(b"key", value)[:12]

    def _mac(self, *parts: bytes | str) -> str:
        msg = b"".join(
            len(b).to_bytes(4, "big") + b for b in (p if isinstance(p, bytes) else _utf8(p) for p in parts)
        )
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()


def shown_prefix(name: str) -> str:
    """What of a stream name (perhaps a secret key) may be shown: at most 3 characters, a quarter of it."""
    return _UNSAFE_SHOWN.sub("_", name[: min(_SHOWN_NAME, len(name) // 4)])


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        st = os.fstat(f.fileno())
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(f.fileno(), 0o600)
            log.warning("stream id key %s was readable by others: now 0600", path)
        text = f.read(200).strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise UserError(f"{path}: not a stream id key (64 hex digits); remove it to make a new one "
                        "(every stream id then changes)")
    return key


class StreamRefused(Exception):
    """The registry will not watch (or release) this stream; `reason` is a short word for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a stream came from, as a streaming server told us (the engine needs it to drop the publisher).

    The raw app and name live here, in memory only."""

    server: str
    app: str
    name: str
    publisher_addr: str | None
    client_id: str | None = None
    registered_at: float = field(default_factory=time.monotonic, compare=False)
    keys: tuple[str, ...] = field(default=(), compare=False)  # the publish URL's `key` arguments (terminate bans them)

    def same_publisher(self, server: str, app: str, name: str, publisher_addr: str | None,
                       client_id: str | None) -> bool:
        """Same server, app and name, and, where both sides know them, the same client id and address."""
        if (server, app, name) != (self.server, self.app, self.name):
            return False
        if client_id and self.client_id and client_id != self.client_id:
            return False
        return not (publisher_addr and self.publisher_addr and publisher_addr != self.publisher_addr)


class OriginTable(dict[str, Origin]):
    """The origins of announced streams: bound to the stream they registered, within caps.

    A dict (stream id -> Origin) with the rules on top: `admit` refuses a different publisher for a stream that
    is still watched and a new stream beyond `max_streams` or `max_streams_per_addr`; `release` refuses an
    unpublish that names another publisher."""

    def __init__(self, max_streams: int | None = None, max_streams_per_addr: int | None = None) -> None:
        super().__init__()
        self.max_streams = max_streams
        self.max_streams_per_addr = max_streams_per_addr

    def admit(self, stream_id: str, origin: Origin, *, replaceable: bool) -> Literal["new", "same", "replaced"]:
        """`replaceable`: the stream registered under this id is no longer watched (or has been quiet long
        enough that its unpublish was surely missed)."""
        known = self.get(stream_id)
        if known is not None:
            if known.same_publisher(origin.server, origin.app, origin.name, origin.publisher_addr,
                                    origin.client_id):
                # MediaMTX reports one publish twice (auth gate with the address, runOnReady without).
                self[stream_id] = Origin(known.server, known.app, known.name,
                                         known.publisher_addr or origin.publisher_addr,
                                         known.client_id or origin.client_id, known.registered_at,
                                         tuple(dict.fromkeys((*known.keys, *origin.keys))))
                return "same"
            if not replaceable:
                raise StreamRefused("conflict", f"stream {stream_id} is watched for another publisher")
            self[stream_id] = origin
            return "replaced"
        if self.max_streams is not None and len(self) >= self.max_streams:
            raise StreamRefused("cap", f"{len(self)} streams watched (hooks.max_streams)")
        if self.max_streams_per_addr is not None and origin.publisher_addr:
            n = sum(1 for o in self.values() if o.publisher_addr == origin.publisher_addr)
            if n >= self.max_streams_per_addr:
                raise StreamRefused("addr_cap", f"{n} streams watched from {_show(origin.publisher_addr)} "
                                    "(hooks.max_streams_per_addr)")
        self[stream_id] = origin
        return "new"

    def release(self, stream_id: str, *, server: str | None = None, app: str | None = None,
                name: str | None = None, publisher_addr: str | None = None,
                client_id: str | None = None) -> Origin | None:
        """The origin to forget for an unpublish, or None if none is known; StreamRefused if it names
        another publisher (a decoy's publish_done must not end the real stream's monitoring)."""
        known = self.get(stream_id)
        if known is None:
            return None
        if not known.same_publisher(server if server is not None else known.server,
                                    app if app is not None else known.app,
                                    name if name is not None else known.name, publisher_addr, client_id):
            raise StreamRefused("mismatch", f"unpublish of {stream_id} names another publisher than its publish")
        return known


class StreamRegistry(Protocol):
    """What the hooks tell the monitor. Calls must not block (the supervisor queues the work) and should be
    idempotent: MediaMTX may report one publish twice (auth gate, then runOnReady). Either raises
    StreamRefused when it will not do what is asked (caps, another publisher), anything else when it failed."""

    def add_stream(
        self, stream_id: str, url: str, *, server: str, app: str, name: str, publisher_addr: str | None,
        client_id: str | None = None, keys: tuple[str, ...] = (),
    ) -> None: ...

    def remove_stream(
        self, stream_id: str, *, server: str | None = None, app: str | None = None, name: str | None = None,
        publisher_addr: str | None = None, client_id: str | None = None,
    ) -> None: ...


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
    # Callers that fail authentication, per address (token bucket); authenticated servers are never limited.
    rate_limit_per_s: float = Field(default=20.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    # MediaMTX: register on the auth gate's publish (earliest) as well as on runOnReady; a gate registration
    # that no runOnReady confirms within this many seconds is dropped (the publish never came up).
    mediamtx_register_on_auth: bool = True
    mediamtx_ready_timeout_s: float = Field(default=30.0, gt=0)
    # nginx-rtmp `on_update` (with `notify_update_strict on`) drops a publisher banned mid-stream.
    nginx_update_checks_bans: bool = True
    # A publish the monitor cannot watch is refused (fail closed) unless this is on.
    fail_open: bool = False
    # Who may authenticate with `?token=` (it sits in a URL): loopback peers only, any peer, or nobody.
    token_peers: Literal["loopback", "any", "none"] = "loopback"
    signature_window_s: float = Field(default=60.0, gt=0, le=3600)  # |monitor clock - X-Hook-Timestamp|
    replay_cache_size: int = Field(default=10_000, ge=16)

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


_RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpe", "rtmpt", "rtmpte", "rtmpts"})
_RTMP_UNPULLABLE = re.compile(r"[\x00-\x20\x7f?]")


def pull_url(template: str, app: str, name: str, path: str, stream_id: str) -> str:
    """A pull URL from a template, with the raw names in it (never log it: redact_url it).

    FFmpeg's RTMP client sends the URL's app and playpath as written, without percent-decoding, so RTMP URLs
    get the names as they are; a name it cannot carry (a '/' moves into the app, a space ends the URL, '?'
    starts arguments, control characters) raises StreamRefused("unpullable"): such a publish would be allowed
    and never watched. Other schemes (HTTP, RTSP, SRT) get percent-encoded names."""
    if template.split(":", 1)[0].lower() in _RTMP_SCHEMES:
        if "/" in name or _RTMP_UNPULLABLE.search(name) or _RTMP_UNPULLABLE.search(app):
            raise StreamRefused("unpullable", "the monitor cannot pull a stream whose name has '/', spaces, '?' "
                                "or control characters over RTMP")
        return template.format(app=app, name=name, path=path, stream_id=stream_id)
    return template.format(
        app=quote(app, safe="/"), name=quote(name, safe=""), path=quote(path, safe="/"), stream_id=stream_id
    )


# -- signatures --------------------------------------------------------------------------------------------


def signing_string(method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What `X-Hook-Signature` signs: method, route (the decoded path: what picks the route), the query string
    as sent (still percent-encoded, no `?`), time and nonce, then the raw body."""
    head = f"{SIGNING_PREFIX}\n{method.upper()}\n{path}\n{query}\n{timestamp}\n{nonce}\n"
    return _utf8(head) + body


def sign_request(secret: str, method: str, path: str, body: bytes, *, query: str = "",
                 timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The three headers of a signed hook request (for monitor.servers.mediamtx_hook and whoever else signs)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_hex(16) if nonce is None else nonce
    mac = hmac.new(_utf8(secret), signing_string(method, path, query, ts, nonce, body), hashlib.sha256)
    return {TIMESTAMP_HEADER: ts, NONCE_HEADER: nonce, SIGNATURE_HEADER: "sha256=" + mac.hexdigest()}


def route_token(secret: str, route: str) -> str:
    """A `?token=` for one route only: a leaked server config then neither signs nor opens other routes."""
    return hmac.new(_utf8(secret), _utf8(f"livesafe-hook-token v1\n{route}"), hashlib.sha256).hexdigest()


class _ReplayCache:
    """Nonces of accepted signatures until they leave the time window; bounded: when full, the oldest are
    forgotten and every timestamp up to theirs is refused from then on (a replay can never get through)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: dict[str, int] = {}  # nonce -> timestamp
        self.floor = -math.inf  # timestamps at or below this are refused

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, nonce: str, ts: int, now: float, window_s: float) -> str | None:
        """None if fresh (and now remembered), else why not."""
        if ts <= self.floor:
            return "signature too old"
        if nonce in self._seen:
            return "signature replayed"
        if len(self._seen) >= self._size:
            self._seen = {n: t for n, t in self._seen.items() if t >= now - window_s}
            if len(self._seen) >= self._size:
                ordered = sorted(self._seen.items(), key=lambda kv: kv[1])
                dropped = ordered[: len(ordered) // 2 + 1]
                self.floor = max(self.floor, dropped[-1][1])
                self._seen = dict(ordered[len(dropped):])
                if ts <= self.floor:
                    return "signature too old"
        self._seen[nonce] = ts
        return None


# -- rate limits -----------------------------------------------------------------------------------------


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


class _LogLimiter:
    """At most `per_window` warnings per window for refused callers; then one line says how many were left
    out. Global (not per address): a flood from many addresses cannot fill the log either."""

    def __init__(self, per_window: int = 10, window_s: float = 60.0) -> None:
        self._per_window = per_window
        self._window_s = window_s
        self._start = -math.inf
        self._count = 0
        self.suppressed = 0

    def warning(self, msg: str, *args: object, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._start >= self._window_s:
            if self.suppressed:
                log.warning("hooks: %d more refused requests were not logged in the last %.0f s",
                            self.suppressed, now - self._start)
            self._start, self._count, self.suppressed = now, 0, 0
        if self._count < self._per_window:
            self._count += 1
            log.warning(msg, *args)
        else:
            self.suppressed += 1


# -- the hooks ---------------------------------------------------------------------------------------------

OutcomeCounter = Callable[[str, str], None]  # (outcome, reason)


@dataclass
class _Hooks:
    registry: StreamRegistry
    bans: BanList
    settings: HookSettings
    namer: StreamNamer
    count: OutcomeCounter | None = None

    def __post_init__(self) -> None:
        self._secret_text = self.settings.secret.get_secret_value()
        self._secret = _utf8(self._secret_text)
        self._route_tokens = {r: _utf8(route_token(self._secret_text, r)) for r in _ROUTES}
        self.failures = _TokenBuckets(self.settings.rate_limit_per_s, self.settings.rate_limit_burst)
        self.refusal_log = _LogLimiter()
        self.replays = _ReplayCache(self.settings.replay_cache_size)
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (outcome, reason) -> publishes
        self.rejected: Counter[str] = Counter()  # reason -> requests refused before any route ran
        self.gate: dict[str, tuple[float, Origin]] = {}  # MediaMTX auth registrations awaiting runOnReady

    # -- checks common to every route ----------------------------------------------------------------------

    def token_ok(self, request: web.Request) -> bool:
        tokens = request.query.getall("token", [])
        if not tokens or self.settings.token_peers == "none":
            return False
        if self.settings.token_peers == "loopback" and not _is_loopback(request.remote or ""):
            return False
        route = self._route_tokens.get(request.path)
        for token in tokens:
            value = _utf8(token)
            if hmac.compare_digest(value, self._secret):
                return True
            if route is not None and hmac.compare_digest(value, route):
                return True
        return False

    def signature_problem(self, request: web.Request, body: bytes) -> str | None:
        """None if the request carries a valid, fresh, first-seen signature, else what is wrong with it."""
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if signature[:7].lower() != "sha256=":
            return "missing or wrong hook secret"
        ts_text = request.headers.get(TIMESTAMP_HEADER, "").strip()
        nonce = request.headers.get(NONCE_HEADER, "").strip()
        if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12 or not _NONCE_RE.match(nonce):
            return "signature without a valid timestamp and nonce"
        expected = hmac.new(
            self._secret,
            signing_string(request.method, request.path, request.rel_url.raw_query_string, ts_text, nonce, body),
            hashlib.sha256,
        ).hexdigest()
        if not hmac.compare_digest(_utf8(signature[7:].strip().lower()), _utf8(expected)):
            return "missing or wrong hook secret"
        now = time.time()
        ts = int(ts_text)
        window = self.settings.signature_window_s
        if abs(now - ts) > window:
            return "signature outside the time window"
        return self.replays.check_and_add(nonce, ts, now, window)

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
            if not _STREAM_ID_RE.match(stream_id):  # cannot happen with StreamNamer; never watch blind
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
            log.info("stream_id=%s publish allowed from %s%s", stream_id, _show(addr),
                     "".join(f" {self.namer.mask(k)}" for k in keys))
            return None
        if self.settings.fail_open:
            self.counted("allowed_unwatched", reason)
            log.error("stream_id=%s publish from %s allowed but NOT watched (hooks.fail_open): %s", stream_id,
                      _show(addr), why)
            return None
        self.counted("refused", reason)
        log.warning("stream_id=%s publish refused from %s: cannot watch it: %s", stream_id, _show(addr), why)
        return (409 if reason == "conflict" else 403), f"refused: {why}"

    def unregister(self, server: ServerKind, app: str, name: str, addr: str | None = None,
                   client_id: str | None = None) -> None:
        stream_id = self.namer.stream_id(server, app, name)
        try:
            self.registry.remove_stream(stream_id, server=server, app=app, name=name, publisher_addr=addr,
                                        client_id=client_id)
        except StreamRefused as exc:
            self.counted("unpublish_ignored", exc.reason)
            log.warning("stream_id=%s unpublish from %s ignored: %s", stream_id, _show(addr), exc)
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
            "stream_id=%s publish refused from %s: %s ban (%s)", stream_id, _show(addr), ban.kind, ban.reason
        )
        return f"banned: {ban.reason}" if ban.reason else "banned"

    # -- routes ---------------------------------------------------------------------------------------------

    async def nginx_rtmp(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/x-www-form-urlencoded")
        pairs = _parse_form(body)
        # nginx-rtmp writes its own fields first and appends the publisher's URL arguments after them, so
        # the first value is nginx's and a publisher cannot override `addr`, `clientid` or `name`.
        fields: dict[str, str] = {}
        for k, v in pairs:
            fields.setdefault(k, v)
        call = _required(fields, "call")
        app = _required(fields, "app", allow_empty=True)
        addr = fields.get("addr") or None
        client_id = fields.get("clientid") or None
        if call not in ("publish", "publish_done", "update"):
            return _ok()
        if call == "update" and not fields.get("name"):
            return _ok()  # never drop a client over a field we only use for ban checks
        name = _required(fields, "name")
        if call == "publish_done":
            self.unregister("nginx-rtmp", app, name, addr, client_id)
            return _ok()
        keys = [v for k, v in pairs if k == "key"]
        if call == "update" and not self.settings.nginx_update_checks_bans:
            return _ok()
        ban = await self.check_bans([name, *keys], addr)
        if ban is not None:
            return web.Response(status=403, text=self.refused("nginx-rtmp", app, name, addr, ban))
        if call == "publish":
            refusal = self.register("nginx-rtmp", app, name, f"{app}/{name}", addr, keys, client_id)
            if refusal is not None:
                return web.Response(status=refusal[0], text=refusal[1])
        return _ok()

    async def srs(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/json")
        doc = _parse_json_object(body)
        action = _str(doc, "action")
        if action not in ("on_publish", "on_unpublish"):
            return web.json_response({"code": 0})
        app = _str(doc, "app", allow_empty=True)
        name = _str(doc, "stream")
        addr = _opt_str(doc, "ip")
        client_id = _opt_str(doc, "client_id")
        if action == "on_unpublish":
            self.unregister("srs", app, name, addr, client_id)
            return web.json_response({"code": 0})
        keys = _query_keys(_opt_str(doc, "param") or "")
        ban = await self.check_bans([name, *keys], addr)
        if ban is not None:
            # SRS wants HTTP 200 and a non-zero code to refuse.
            return web.json_response({"code": 403, "msg": self.refused("srs", app, name, addr, ban)})
        refusal = self.register("srs", app, name, f"{app}/{name}", addr, keys, client_id)
        if refusal is not None:
            return web.json_response({"code": refusal[0], "msg": refusal[1]})
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
        _opt_str(doc, "id")  # type check only: runOnReady names the publisher by MTX_SOURCE_ID, which it binds
        keys = _query_keys(_opt_str(doc, "query") or "")
        ban = await self.check_bans([name, path, *keys], addr)
        if ban is not None:
            return web.Response(status=403, text=self.refused("mediamtx", app, name, addr, ban))
        if self.settings.mediamtx_register_on_auth:
            refusal = self.register("mediamtx", app, name, path, addr, keys, gate=True)
            if refusal is not None:
                return web.Response(status=refusal[0], text=refusal[1])
        return _ok()

    async def mediamtx_ready(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/json")
        doc = _parse_json_object(body)
        path = _str(doc, "path")
        app, _, name = path.rpartition("/")
        keys = _query_keys(_opt_str(doc, "query") or "")
        _opt_str(doc, "source_type")  # type check only
        source_id = _opt_str(doc, "source_id")
        # Too late to refuse here (the stream is up), but a banned stream must not be watched as if fine:
        # answer 403 so the command exits non-zero, and MediaMTX's auth gate or a kick does the rest.
        ban = await self.check_bans([name, path, *keys], None)
        if ban is not None:
            return web.Response(status=403, text=self.refused("mediamtx", app, name, None, ban))
        refusal = self.register("mediamtx", app, name, path, None, keys, source_id)
        if refusal is not None:
            return web.Response(status=refusal[0], text=refusal[1])
        return _ok()

    async def mediamtx_not_ready(self, request: web.Request, body: bytes) -> web.Response:
        _require_type(request, "application/json")
        doc = _parse_json_object(body)
        path = _str(doc, "path")
        app, _, name = path.rpartition("/")
        self.unregister("mediamtx", app, name, None, _opt_str(doc, "source_id"))
        return _ok()


_Route = Callable[[_Hooks, web.Request, bytes], Awaitable[web.Response]]

_ROUTES: dict[str, _Route] = {
    "/hooks/nginx-rtmp": _Hooks.nginx_rtmp,
    "/hooks/srs": _Hooks.srs,
    "/hooks/mediamtx/auth": _Hooks.mediamtx_auth,
    "/hooks/mediamtx/ready": _Hooks.mediamtx_ready,
    "/hooks/mediamtx/not-ready": _Hooks.mediamtx_not_ready,
}
ROUTES: tuple[str, ...] = tuple(_ROUTES)


def _guard(hooks: _Hooks, route: _Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Secret check first, then size limit and 400 mapping; only callers that fail the check are rate limited
    (one local process cannot make the streaming server's genuine publishes fail)."""

    def refuse(request: web.Request, reason: str, status: int, text: str) -> web.Response:
        peer = request.remote or "?"
        hooks.rejected[reason] += 1
        wait = hooks.failures.take(peer)
        if wait > 0:
            hooks.rejected["rate_limited"] += 1
            hooks.refusal_log.warning("%s from %s: rate limited (%s)", request.path, peer, reason)
            retry = str(max(1, math.ceil(wait)))
            return web.Response(status=429, text="too many requests", headers={"Retry-After": retry})
        hooks.refusal_log.warning("%s from %s: %s", request.path, peer, reason)
        return web.Response(status=status, text=text)

    async def handler(request: web.Request) -> web.Response:
        peer = request.remote or "?"
        by_token = hooks.token_ok(request)
        signed = SIGNATURE_HEADER in request.headers
        if not by_token and not signed:
            return refuse(request, "missing or wrong hook secret", 401, "missing or wrong hook secret")
        # Trusted callers' transport problems are logged plainly; the others' only through the limiter.
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # No streaming server compresses hook bodies; refusing avoids inflating bombs.
            if not by_token:
                return refuse(request, "compressed body", 400, "compressed bodies are not accepted")
            log.warning("%s from %s: compressed body refused", request.path, peer)
            return web.Response(status=400, text="compressed bodies are not accepted")
        limit = hooks.settings.max_body_bytes
        too_large = web.Response(status=413, text=f"body larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            if not by_token:
                return refuse(request, "body too large", 413, too_large.text or "")
            log.warning("%s from %s: body of %d bytes refused", request.path, peer, request.content_length)
            return too_large
        try:
            body = await _read_limited(request, limit)
        except _TooLarge:
            if not by_token:
                return refuse(request, "body too large", 413, too_large.text or "")
            log.warning("%s from %s: body over %d bytes refused", request.path, peer, limit)
            return too_large
        except Exception as exc:  # truncated chunks, bad Content-Encoding, reset connections
            if not by_token:
                return refuse(request, "unreadable body", 400, "unreadable body")
            log.warning("%s from %s: unreadable body: %s", request.path, peer, type(exc).__name__)
            return web.Response(status=400, text="unreadable body")
        if not by_token:
            problem = hooks.signature_problem(request, body)
            if problem is not None:
                return refuse(request, problem, 401, problem)
        try:
            return await route(hooks, request, body)
        except _BadRequest as exc:
            log.warning("%s from %s: bad request: %s", request.path, peer, exc)
            return web.Response(status=400, text=str(exc))

    return handler


class _TooLarge(Exception):
    pass


class _BadRequest(Exception):
    """Client input we cannot use: answered 400 with this short reason."""


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


HOOKS_KEY = web.AppKey("hooks", _Hooks)
GATE_SWEEP_S = 1.0


def make_hook_app(registry: StreamRegistry, bans: BanList, settings: HookSettings, *,
                  namer: StreamNamer | None = None, count: OutcomeCounter | None = None) -> web.Application:
    """The aiohttp application with the hook routes (see the module docstring). `namer` makes the stream ids
    (the monitor's own, from its state directory; by default a throwaway key); `count(outcome, reason)` is
    called for every publish decision (the engine's Prometheus counter).

    Prefer start_hook_server. Whoever runs the app otherwise must give its runner `**RUNNER_KWARGS`:
    aiohttp's default access log prints the query string, and with it `?token=SECRET`."""
    hooks = _Hooks(registry, bans, settings, namer or StreamNamer.ephemeral(), count)
    # client_max_size backs up our own limit for anything that would call request.read().
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[HOOKS_KEY] = hooks
    for path, route in _ROUTES.items():
        app.router.add_post(path, _guard(hooks, route))

    async def sweep_gate(app: web.Application) -> Any:
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
    namer: StreamNamer | None = None,
    count: OutcomeCounter | None = None,
) -> web.AppRunner:
    """Serve the hooks on settings.host:settings.port (127.0.0.1:8181) unless overridden; port 0 picks a
    free one (see `runner.addresses`). The caller ends it with `await runner.cleanup()`."""
    bind_host = settings.host if host is None else host
    bind_port = settings.port if port is None else port
    if not _is_loopback(bind_host):
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


def main(argv: list[str] | None = None) -> int:
    """`python -m monitor.servers.hooks token ROUTE [--secret-file F]`: print ROUTE's own `?token=` value, to put in a
    streaming server's hook URL instead of the secret (it works on that route only and cannot sign)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m monitor.servers.hooks", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("token", help="print a route's token")
    tok.add_argument("route", choices=ROUTES)
    tok.add_argument("--secret-file", type=Path, help="file holding the hook secret (else $MONITOR_HOOK_SECRET)")
    args = parser.parse_args(argv)
    try:
        secret = (args.secret_file.read_text(encoding="utf-8").strip() if args.secret_file
                  else os.environ.get("MONITOR_HOOK_SECRET", ""))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read the secret file: {exc}", file=sys.stderr)
        return 2
    if len(secret) < 16:
        print("no hook secret (16 characters or more): pass --secret-file or set MONITOR_HOOK_SECRET",
              file=sys.stderr)
        return 2
    print(route_token(secret, args.route))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
