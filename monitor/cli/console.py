"""`monitor console`: alerts as they arrive, in the full-screen console or as lines / JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from monitor.cli.common import add_broker_args, broker_overrides
from monitor.common.errors import ConfigError
from monitor.common.safetext import describe_char, forbidden_char


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    con = sub.add_parser("console", help="show alerts as they arrive")
    add_broker_args(con)
    con.add_argument("--json", action="store_true", help="one alert per line as JSON (for scripts)")
    con.add_argument("--lines", action="store_true", help="print alerts as lines instead of the full-screen UI")
    con.add_argument("--max-alerts", type=int, help="with --json/--lines: exit after this many alerts")
    con.add_argument("--moderator", default=os.environ.get("USER", ""), help="your name, recorded with actions")
    con.add_argument("--node", dest="node_filter", help="only this monitor node")
    con.add_argument("--actions-log", type=Path, help="also record your actions in this JSON-lines file")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from monitor.config.models import BrokerConfig, _describe
    from monitor.console.printer import run_console

    try:
        cfg = BrokerConfig.model_validate(broker_overrides(args))
    except ValidationError as exc:  # described field by field: the input (a URL with a password) is not echoed
        raise ConfigError(_describe(exc, "console")) from None
    if not args.json and not args.lines and sys.stdout.isatty():
        from monitor.console.tui import run_tui

        if not args.moderator.strip():
            raise ConfigError("console: --moderator NAME is required: every action is recorded with its author")
        bad = forbidden_char(args.moderator)
        if bad is not None:
            raise ConfigError(f"console: --moderator holds {describe_char(bad[1])} at position {bad[0]}: control "
                              "and bidirectional characters are refused by the monitor")
        return run_tui(cfg, moderator=args.moderator, node_filter=args.node_filter, actions_log=args.actions_log)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_console(cfg, as_json=args.json, max_alerts=args.max_alerts, stop=stop)

    asyncio.run(go())
    return 0
