"""`monitor web`: the web moderation console (monitor/web/), on 127.0.0.1 unless the config's `web:` says otherwise."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.cli.common import add_broker_args, broker_overrides
from monitor.common.errors import ConfigError

if TYPE_CHECKING:
    from monitor.config.models import BrokerConfig, MonitorConfig

log = logging.getLogger("monitor")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="the web moderation console (accounts: `monitor users`)")
    p.add_argument("--config", "-c", type=Path, help="the monitor's YAML config (its broker, state_dir, web:)")
    p.add_argument("--host", help="address to listen on (default web.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default web.port, 8088; 0: a free one)")
    p.add_argument("--state-dir", type=Path, help="the monitor's state directory (users, evidence log)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    add_broker_args(p)


def load(args: argparse.Namespace) -> MonitorConfig:
    """The monitor's config with the command line's broker, host, port and state directory over it."""
    from monitor.config.models import build_config, load_config

    data: dict[str, Any] = load_config(args.config) if args.config else {}
    broker = broker_overrides(args)
    if broker:
        data["broker"] = {**(data.get("broker") or {}), **broker}
    web = dict(data.get("web") or {})
    for key in ("host", "port"):
        if getattr(args, key) is not None:
            web[key] = getattr(args, key)
    data["web"] = web
    if args.state_dir is not None:
        data["state_dir"] = str(args.state_dir)
    return build_config(data, str(args.config) if args.config else "command line")


def broker_of(cfg: MonitorConfig) -> BrokerConfig:
    """The broker settings the console connects with: its own account when web.broker_username is set."""
    if cfg.web.broker_username is None:
        return cfg.broker
    return cfg.broker.model_copy(update={"username": cfg.web.broker_username, "password": None,
                                         "password_file": cfg.web.broker_password_file})


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    if (cfg.web.tls_cert_file is None) != (cfg.web.tls_key_file is None):
        raise ConfigError("web: set both tls_cert_file and tls_key_file, or neither")

    async def go() -> None:
        from monitor.web.bridge import Bridge
        from monitor.web.server import WebConsole, make_app, serving

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        bridge: Bridge | None = None

        def send(node: str, cmd: dict[str, object]) -> None:
            assert bridge is not None
            bridge.send(node, cmd)

        console = WebConsole.build(cfg, send)
        bridge = Bridge(broker_of(cfg), cfg.web.client_id, console.queue, console.incident_changed)
        tls = (cfg.web.tls_cert_file, cfg.web.tls_key_file) if cfg.web.tls_cert_file and cfg.web.tls_key_file \
            else None
        async with serving(make_app(console), cfg.web.host, cfg.web.port, tls) as port:
            scheme = "https" if tls else "http"
            log.info("web console on %s://%s:%d/ (users file %s; commands %s)", scheme, cfg.web.host, port,
                     console.users.path, f"signed with key {console.signer.key_id}" if console.signer.key_id
                     else "unsigned: set web.command_key_file so the monitor can verify who acted")
            print(f"web console listening on {scheme}://{cfg.web.host}:{port}/", flush=True)
            await bridge.run(stop)
        console.audit.close()

    try:
        asyncio.run(go())
    except OSError as exc:
        raise ConfigError(f"web: cannot listen on {cfg.web.host}:{cfg.web.port}: {exc.strerror or exc}") from None
    return 0
