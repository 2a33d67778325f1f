"""Who may call the hooks: HMAC signatures with a replay cache, `?token=` secrets and route tokens, and the
rate limits (of callers and of log lines) for those who fail.

The scheme is in the package docstring (monitor/servers/hooks/__init__.py) and docs/security-hooks.md.
`HookAuth` holds the checks for one hook app; the guard in monitor/servers/hooks/app.py runs them first.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable

from aiohttp import web

from monitor.servers.hooks.naming import utf8
from monitor.servers.hooks.settings import HookSettings

log = logging.getLogger("monitor.servers.hooks")  # one logger for the hook server, whichever module logs

SIGNATURE_HEADER = "X-Hook-Signature"
TIMESTAMP_HEADER = "X-Hook-Timestamp"
NONCE_HEADER = "X-Hook-Nonce"
SIGNING_PREFIX = "livesafe-hook-v2"

_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_MAX_BUCKETS = 10_000


def signing_string(method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What `X-Hook-Signature` signs: method, route (the decoded path: what picks the route), the query string
    as sent (still percent-encoded, no `?`), time and nonce, then the raw body."""
    head = f"{SIGNING_PREFIX}\n{method.upper()}\n{path}\n{query}\n{timestamp}\n{nonce}\n"
    return utf8(head) + body


def sign_request(secret: str, method: str, path: str, body: bytes, *, query: str = "",
                 timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The three headers of a signed hook request (for monitor.servers.mediamtx_hook and whoever else signs)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_hex(16) if nonce is None else nonce
    mac = hmac.new(utf8(secret), signing_string(method, path, query, ts, nonce, body), hashlib.sha256)
    return {TIMESTAMP_HEADER: ts, NONCE_HEADER: nonce, SIGNATURE_HEADER: "sha256=" + mac.hexdigest()}


def route_token(secret: str, route: str) -> str:
    """A `?token=` for one route only: a leaked server config then neither signs nor opens other routes."""
    return hmac.new(utf8(secret), utf8(f"livesafe-hook-token v1\n{route}"), hashlib.sha256).hexdigest()


class ReplayCache:
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


class TokenBuckets:
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


class LogLimiter:
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



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HookAuth:
    """The secret checks of one hook app (`routes`: the paths that have a route token), and the counters and
    limits of the callers that fail them: an authenticated server is never throttled."""

    def __init__(self, settings: HookSettings, routes: Iterable[str]) -> None:
        self.settings = settings
        secret_text = settings.secret.get_secret_value()
        self._secret = utf8(secret_text)
        self._route_tokens = {r: utf8(route_token(secret_text, r)) for r in routes}
        self.failures = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.refusal_log = LogLimiter()
        self.replays = ReplayCache(settings.replay_cache_size)
        self.rejected: Counter[str] = Counter()  # reason -> requests refused before any route ran

    def token_ok(self, request: web.Request) -> bool:
        tokens = request.query.getall("token", [])
        if not tokens or self.settings.token_peers == "none":
            return False
        if self.settings.token_peers == "loopback" and not is_loopback(request.remote or ""):
            return False
        route = self._route_tokens.get(request.path)
        for token in tokens:
            value = utf8(token)
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
        if not hmac.compare_digest(utf8(signature[7:].strip().lower()), utf8(expected)):
            return "missing or wrong hook secret"
        now = time.time()
        ts = int(ts_text)
        window = self.settings.signature_window_s
        if abs(now - ts) > window:
            return "signature outside the time window"
        return self.replays.check_and_add(nonce, ts, now, window)

    def refuse(self, request: web.Request, reason: str, status: int, text: str) -> web.Response:
        """The answer to a caller that failed a check: counted, rate limited per address, logged within limits."""
        peer = request.remote or "?"
        self.rejected[reason] += 1
        wait = self.failures.take(peer)
        if wait > 0:
            self.rejected["rate_limited"] += 1
            self.refusal_log.warning("%s from %s: rate limited (%s)", request.path, peer, reason)
            retry = str(max(1, math.ceil(wait)))
            return web.Response(status=429, text="too many requests", headers={"Retry-After": retry})
        self.refusal_log.warning("%s from %s: %s", request.path, peer, reason)
        return web.Response(status=status, text=text)
