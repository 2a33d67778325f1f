"""HTTP endpoints the streaming servers call when a publisher starts or stops (the hook server).

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

The package, by concern:
  naming.py    StreamNamer: keyed stream ids, redacted names and masks
  origins.py   Origin, OriginTable, StreamRegistry, StreamRefused: which publisher a stream id belongs to
  settings.py  HookSettings, the pull URL templates and pull_url
  auth.py      signatures, the replay cache, `?token=` and route tokens, rate limits of failing callers
  parsing.py   bodies within limits, forms and JSON fields (BadRequest -> 400)
  handlers.py  the routes of nginx-rtmp, SRS and MediaMTX and the publish decisions
  app.py       the aiohttp app (every route behind one guard) and start_hook_server
  command.py   `python -m monitor.servers.hooks token ROUTE`
"""

from monitor.servers.hooks.app import (
    AUTH_KEY,
    GATE_SWEEP_S,
    HOOKS_KEY,
    RUNNER_KWARGS,
    HookAccessLogger,
    RunnerKwargs,
    make_hook_app,
    start_hook_server,
)
from monitor.servers.hooks.auth import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    SIGNING_PREFIX,
    TIMESTAMP_HEADER,
    HookAuth,
    route_token,
    sign_request,
    signing_string,
)
from monitor.servers.hooks.handlers import ROUTES, Hooks, OutcomeCounter
from monitor.servers.hooks.naming import ID_KEY_FILE, StreamNamer, shown_prefix
from monitor.servers.hooks.origins import ORIGIN_REPLACE_AFTER_S, Origin, OriginTable, StreamRefused, StreamRegistry
from monitor.servers.hooks.settings import (
    DEFAULT_PORT,
    DEFAULT_PULL_URL_TEMPLATES,
    SERVER_KINDS,
    TEMPLATE_FIELDS,
    HookSettings,
    ServerKind,
    pull_url,
)

__all__ = [
    "AUTH_KEY", "DEFAULT_PORT", "DEFAULT_PULL_URL_TEMPLATES", "GATE_SWEEP_S", "HOOKS_KEY", "ID_KEY_FILE",
    "NONCE_HEADER", "ORIGIN_REPLACE_AFTER_S", "ROUTES", "RUNNER_KWARGS", "SERVER_KINDS", "SIGNATURE_HEADER",
    "SIGNING_PREFIX", "TEMPLATE_FIELDS", "TIMESTAMP_HEADER", "HookAccessLogger", "HookAuth", "HookSettings",
    "Hooks", "Origin", "OriginTable", "OutcomeCounter", "RunnerKwargs", "ServerKind", "StreamNamer",
    "StreamRefused", "StreamRegistry", "make_hook_app", "pull_url", "route_token", "shown_prefix",
    "sign_request", "signing_string", "start_hook_server",
]
