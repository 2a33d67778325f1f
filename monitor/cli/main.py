"""The `monitor` command (also `python -m monitor`): parses the command line and hands it to one command module.

Commands of the runtime live next to this module (`run`, `console`, `hash`, `bank`, `bans`, `evidence`). The
tooling (`demo`, `bench`, `eval`) is another distribution (tools/pyproject.toml) that adds its commands through
the `monitor.commands` entry-point group: each entry is a function taking the command's arguments and returning
the exit code. Without the tools installed those commands say how to get them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from monitor import __version__
from monitor.cli import bank, bans, cluster, console, hash_files, run, users, web
from monitor.common.errors import USER_ERRORS
from monitor.ops.logs import setup_logging

Command = Callable[[list[str]], int]
ENTRY_POINT_GROUP = "monitor.commands"
# Commands with their own parsers: `main` hands them everything after the command's name.
OWN_PARSER = {"evidence": "verify the evidence log (--pubkey: its signed heads), export an incident report, make a "
                          "signing key (keygen)"}
TOOL_COMMANDS = {"demo": "self-contained demo: generated live stream, embedded broker, console",
                 "bench": "benchmarks that print JSON: `bench ingest|match|soak|evasion|classify|cluster [--quick]`",
                 "eval": "detection evaluation on live test streams (see `monitor eval --help`)"}
_MODULES = {"run": run, "console": console, "hash": hash_files, "bank": bank, "bans": bans, "web": web,
            "users": users, "cluster": cluster}


def plugin_commands() -> dict[str, Command]:
    """The commands other installed distributions add (the tools: demo, bench, eval), loaded."""
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor", description="Livestream safety monitor.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for module in _MODULES.values():
        module.add_parser(sub)
    # Listed for --help; main() hands them to their own parsers.
    for name, text in OWN_PARSER.items():
        sub.add_parser(name, help=text, add_help=False)
    installed = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in sorted(set(TOOL_COMMANDS) | installed):
        text = TOOL_COMMANDS.get(name, "")
        if name not in installed:
            text += " [needs the tools: pip install -e tools]"
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["evidence"]:
            from monitor.cli.evidence import main as evidence_main

            return evidence_main(argv[1:])
        if argv and argv[0] in TOOL_COMMANDS:
            plugins = plugin_commands()
            if argv[0] not in plugins:
                print(f"monitor: error: `monitor {argv[0]}` is part of the monitor's tools, which are not installed "
                      "here: from a checkout of the repository run `pip install -e tools` (scripts/test does)",
                      file=sys.stderr)
                return 2
            return plugins[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        setup_logging(getattr(args, "log_level", None) or "info")
        code: int = _MODULES[args.command].run(args)
        return code
    except USER_ERRORS as exc:
        print(f"monitor: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        return 130
