"""`monitor run`: watch streams and publish alerts."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
from pathlib import Path
from typing import Any

from monitor.cli.common import add_broker_args, broker_overrides
from monitor.common.errors import ConfigError
from monitor.ops.logs import setup_logging

log = logging.getLogger("monitor")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="watch streams and publish alerts")
    run.add_argument("--config", "-c", type=Path, help="YAML config file")
    run.add_argument("--stream", action="append", default=[], metavar="[ID=]URL", help="repeatable")
    run.add_argument("--bank", action="append", default=[], metavar="[NAME=]PATH", help="PDQ hash list")
    run.add_argument("--node", help="node name (topic level)")
    run.add_argument("--once", action="store_true", help="exit when every stream has ended (files)")
    run.add_argument("--validate-config", action="store_true", help="check the config and banks, then exit")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    add_broker_args(run)


def _stream_arg(text: str) -> dict[str, str]:
    """`ID=URL` or a bare URL (the id is then the last path part)."""
    if "=" in text.split("://", 1)[0]:
        sid, url = text.split("=", 1)
    else:
        url = text
        tail = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        sid = re.sub(r"[^A-Za-z0-9._-]", "-", tail.rsplit(".", 1)[0] if "." in tail else tail) or "stream"
    return {"id": sid, "url": url}


def _bank_arg(text: str) -> dict[str, str]:
    """`NAME=PATH` or a bare path (the name is the file's stem)."""
    if "=" in text:
        name, path = text.split("=", 1)
    else:
        path, name = text, Path(text).stem
    return {"name": re.sub(r"[^A-Za-z0-9._-]", "-", name), "path": path}


def run(args: argparse.Namespace) -> int:
    from monitor.app.engine import Engine, load_banks
    from monitor.config.models import build_config, load_config

    data: dict[str, Any] = load_config(args.config) if args.config else {}
    source = str(args.config) if args.config else "command line"
    if args.stream:
        data["streams"] = list(data.get("streams") or []) + [_stream_arg(s) for s in args.stream]
    if args.bank:
        data["banks"] = list(data.get("banks") or []) + [_bank_arg(b) for b in args.bank]
    if args.node:
        data["node"] = args.node
    if args.log_level:
        data["log_level"] = args.log_level
    overrides = broker_overrides(args)
    if overrides:
        broker = data.get("broker") or {}
        if not isinstance(broker, dict):
            raise ConfigError(f"{source}: broker: must be a mapping")
        data["broker"] = {**broker, **overrides}
    cfg = build_config(data, source)
    setup_logging(cfg.log_level, cfg.log_format)
    banks = load_banks(cfg)
    if cfg.evidence.enabled and cfg.evidence.signing_key_file is not None:
        from monitor.evidence.signing import load_signing_key

        load_signing_key(cfg.evidence.signing_key_file, state_dir=cfg.state_dir)  # KeyFileError: one line, exit 2
    from monitor.app.commands import CommandTrustPolicy

    CommandTrustPolicy.from_config(cfg.web, cfg.terminate)  # as the engine loads it: one line, exit 2
    from monitor.runtime.analyses import check_classifiers

    check_classifiers(cfg.analyses, cfg.matching)  # a model that cannot run as configured: one line, exit 2
    if args.validate_config:
        print(f"{source}: OK ({len(cfg.streams)} streams, {len(banks)} banks, "
              f"{sum(len(b) for b in banks)} entries)")
        return 0
    if not cfg.streams:
        log.warning("no streams configured: waiting (add streams with --stream or in the config)")
    engine = Engine(cfg, banks)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, engine.reload_requested.set)  # reload banks
        await engine.run(stop, until_streams_end=args.once)

    asyncio.run(go())
    log.info("stopped: %d alerts sent", engine.alerts_sent)
    return 0
