"""Sessions, CSRF tokens and login rate limits of the web console (in memory: a restart logs everyone out).

A session is a 256-bit random token in an HttpOnly, SameSite=Strict cookie (Secure over TLS, direct or behind a
proxy that says so: monitor/web/server.py); it ends `ttl_s` after login or `idle_s` after its last request. Each
session has its own CSRF token, which every state-changing request must send in the X-CSRF-Token header.
Failed logins are counted per user name and per client address over a sliding window; past the limit, logins
are refused (HTTP 429) until the oldest failure leaves the window, right password or not.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoginLimiter", "Session", "SessionStore"]

Clock = Callable[[], float]


@dataclass(slots=True)
class Session:
    token: str
    user: str
    role: str
    csrf: str
    created: float
    last_seen: float
    data: dict[str, str] = field(default_factory=dict)

    def csrf_ok(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class SessionStore:
    def __init__(self, *, ttl_s: float, idle_s: float, clock: Clock = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(self, user: str, role: str) -> Session:
        now = self._clock()
        self._expire(now)
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), now, now)
        self._sessions[s.token] = s
        return s

    def get(self, token: str | None, *, touch: bool = True) -> Session | None:
        """The live session of token, or None: unknown, expired or ended. touch restarts its idle time (a
        request does; the event stream's own checks do not, so an open page alone keeps nobody logged in)."""
        if not token:
            return None
        now = self._clock()
        s = self._sessions.get(token)
        if s is None:
            return None
        if now - s.created > self.ttl_s or now - s.last_seen > self.idle_s:
            del self._sessions[token]
            return None
        if touch:
            s.last_seen = now
        return s

    def end(self, token: str) -> None:
        self._sessions.pop(token, None)

    def end_user(self, user: str) -> None:
        for token in [t for t, s in self._sessions.items() if s.user == user]:
            del self._sessions[token]

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items()
                      if now - s.created > self.ttl_s or now - s.last_seen > self.idle_s]:
            del self._sessions[token]


class LoginLimiter:
    """At most max_failures failed logins per key (user name, client address) in window_s."""

    def __init__(self, *, max_failures: int, window_s: float, clock: Clock = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after(self, *keys: str) -> float | None:
        """Seconds until a login for these keys is allowed again, or None when it is allowed now."""
        now = self._clock()
        waits = [self.window_s - (now - q[0]) for q in (self._recent(k, now) for k in keys)
                 if len(q) >= self.max_failures]
        return max(waits) if waits else None

    def failed(self, *keys: str) -> None:
        now = self._clock()
        for k in keys:
            self._recent(k, now).append(now)

    def succeeded(self, user_key: str) -> None:
        self._failures.pop(user_key, None)
