"""The streaming servers the engine talks to: their control APIs, the hook server and discovery.

The hook server (monitor/servers/hooks/) and discovery (monitor/servers/discovery.py) announce streams to a
`StreamRegistry`, the engine; the server APIs (monitor/servers/api.py) drop publishers when a stream is
terminated.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from monitor.config.models import MonitorConfig, hook_secret
from monitor.ops.metrics import Metrics
from monitor.servers.api import MediaMTXAPI, NginxRtmpAPI, ServerAPI, SrsAPI
from monitor.servers.bans import BanList
from monitor.servers.discovery import DiscoveredServer, Discovery
from monitor.servers.hooks import (
    DEFAULT_PULL_URL_TEMPLATES,
    HookSettings,
    StreamNamer,
    StreamRegistry,
    start_hook_server,
)


def make_server_api(kind: str, url: str) -> ServerAPI:
    apis: dict[str, type[ServerAPI]] = {"nginx-rtmp": NginxRtmpAPI, "srs": SrsAPI, "mediamtx": MediaMTXAPI}
    return apis[kind](url)


def server_apis(cfg: MonitorConfig) -> dict[str, ServerAPI]:
    """One API client per configured server, by kind."""
    return {s.kind: make_server_api(s.kind, s.api_url) for s in cfg.servers}


def make_discovery(cfg: MonitorConfig, registry: StreamRegistry, apis: Mapping[str, ServerAPI],
                   namer: StreamNamer) -> Discovery | None:
    """Polling of the servers with `discover: true` (None when there are none)."""
    polled = [s for s in cfg.servers if s.discover]
    if not polled:
        return None
    servers = [DiscoveredServer(s.kind, apis[s.kind], s.pull_url_template
                                or cfg.hooks.pull_url_templates.get(s.kind)
                                or DEFAULT_PULL_URL_TEMPLATES[s.kind]) for s in polled]
    return Discovery(registry, servers, min(s.poll_interval_s for s in polled), namer)


async def start_hooks(cfg: MonitorConfig, registry: StreamRegistry, bans: BanList, namer: StreamNamer,
                      metrics: Metrics) -> web.AppRunner:
    """The hook server, counting each publish decision in `monitor_hook_publishes`."""
    h = cfg.hooks
    settings = HookSettings(secret=hook_secret(h), host=h.host, port=h.port,
                            pull_url_templates=dict(h.pull_url_templates), fail_open=h.fail_open,
                            token_peers=h.token_peers, signature_window_s=h.signature_window_s,
                            mediamtx_ready_timeout_s=h.mediamtx_ready_timeout_s)
    return await start_hook_server(registry, bans, settings, namer=namer,
                                   count=lambda outcome, reason: metrics.hook_publishes.labels(outcome, reason).inc())
