"""Command for MediaMTX's runOnReady / runOnNotReady: tells the monitor a path went up or down.

mediamtx.yml:
  paths:
    all_others:
      runOnReady: python -m monitor.servers.mediamtx_hook ready
      runOnNotReady: python -m monitor.servers.mediamtx_hook not-ready

MediaMTX passes MTX_PATH, MTX_QUERY, MTX_SOURCE_TYPE and MTX_SOURCE_ID. The monitor's address comes from
--url or MONITOR_HOOK_URL (default http://127.0.0.1:8181), the shared secret from --secret-file or
MONITOR_HOOK_SECRET. The request is signed instead of putting the secret in the URL, so the secret never shows
up in an access log or a process list: `X-Hook-Signature: sha256=HMAC(secret, signing string)` over the method,
route, query, `X-Hook-Timestamp` and a fresh `X-Hook-Nonce` and then the body (monitor.servers.hooks.signing_string),
so a captured request can neither be sent to another route (a `ready` replayed as `not-ready`) nor again later.

Exit status 0 when the monitor accepted, 1 with one line on stderr otherwise (MediaMTX only logs it), 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8181"
SIGNING_PREFIX = "livesafe-hook-v2"  # the same as monitor.servers.hooks (not imported: this command must start fast)
TIMEOUT_S = 5.0
_PROG = "monitor.servers.mediamtx_hook"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would replay the signed body somewhere else: treat it as a failure."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _fail(message: str) -> int:
    print(f"{_PROG}: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _secret(secret_file: str | None, env: Mapping[str, str]) -> str | None:
    if secret_file:
        try:
            return Path(secret_file).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read secret file {secret_file}: {exc}") from None
    return env.get("MONITOR_HOOK_SECRET") or None


def signature_headers(secret: str, method: str, route: str, body: bytes) -> dict[str, str]:
    """X-Hook-Timestamp, X-Hook-Nonce and X-Hook-Signature for one request (see monitor.servers.hooks)."""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    signed = f"{SIGNING_PREFIX}\n{method}\n{route}\n\n{timestamp}\n{nonce}\n".encode() + body
    signature = hmac.new(secret.encode("utf-8", "surrogatepass"), signed, hashlib.sha256).hexdigest()
    return {"X-Hook-Timestamp": timestamp, "X-Hook-Nonce": nonce, "X-Hook-Signature": f"sha256={signature}"}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("event", choices=["ready", "not-ready"])
    parser.add_argument("--url", default=env.get("MONITOR_HOOK_URL") or DEFAULT_URL, help="monitor base URL")
    parser.add_argument("--secret-file", help="file holding the hook secret (else $MONITOR_HOOK_SECRET)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help=argparse.SUPPRESS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed why
        return exc.code if isinstance(exc.code, int) else 2

    base = str(args.url).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _fail(f"monitor URL must be http:// or https:// with a host, got {base!r}")
    try:
        secret = _secret(args.secret_file, env)
    except ValueError as exc:
        return _fail(str(exc))
    if not secret:
        return _fail("no hook secret: set MONITOR_HOOK_SECRET or pass --secret-file")
    path = env.get("MTX_PATH", "")
    if not path:
        return _fail("MTX_PATH is not set (run me from MediaMTX runOnReady/runOnNotReady)")

    body = json.dumps(
        {
            "path": path,
            "query": env.get("MTX_QUERY", ""),
            "source_type": env.get("MTX_SOURCE_TYPE", ""),
            "source_id": env.get("MTX_SOURCE_ID", ""),
        }
    ).encode()
    route = f"{parts.path.rstrip('/')}/hooks/mediamtx/{args.event}"
    url = f"{base}/hooks/mediamtx/{args.event}"
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **signature_headers(secret, "POST", route, body)},
    )
    # No proxies: MediaMTX's environment may carry http_proxy, and the monitor is local.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(request, timeout=args.timeout) as reply:
            reply.read(4096)
    except urllib.error.HTTPError as exc:
        try:
            detail = exc.read(300).decode("utf-8", "replace") if exc.fp is not None else ""
        except OSError:
            detail = ""
        return _fail(f"monitor at {url} answered HTTP {exc.code}: {detail or exc.reason}")
    except urllib.error.URLError as exc:
        return _fail(f"cannot reach the monitor at {url}: {exc.reason}")
    except (OSError, ValueError) as exc:  # timeouts mid-reply, bad port numbers
        return _fail(f"cannot reach the monitor at {url}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
