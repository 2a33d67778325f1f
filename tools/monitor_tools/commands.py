"""The tools' `monitor` commands (entry-point group `monitor.commands`): each takes its arguments, returns a code.

Imports are inside the functions: `monitor --help` lists these commands without loading any tool.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BENCHES = ("ingest", "match", "soak", "evasion", "classify", "cluster")


def demo(argv: list[str]) -> int:
    """self-contained demo: generated live stream, embedded broker, console"""
    p = argparse.ArgumentParser(prog="monitor demo", description=demo.__doc__)
    p.add_argument("--duration", type=float, default=40.0, help="stream length in seconds")
    p.add_argument("--keep", type=Path, help="keep the demo's files (bank, ground truth) in this folder")
    args = p.parse_args(argv)
    from monitor.ops.logs import setup_logging
    from monitor_tools.demo import run_demo

    setup_logging("info")
    return run_demo(duration_s=args.duration, keep=args.keep)


def bench(argv: list[str]) -> int:
    """benchmarks that print JSON: `bench ingest|match|soak|evasion|classify|cluster [--quick]`"""
    if not argv or argv[0] not in BENCHES:
        p = argparse.ArgumentParser(prog="monitor bench", description=bench.__doc__)
        p.add_argument("which", choices=BENCHES)
        p.parse_args(argv[:1])  # exits with the usage and the choices
        return 2
    which, rest = argv[0], argv[1:]
    if which == "classify":
        from monitor_tools.bench.classify import main
    elif which == "ingest":
        from monitor_tools.bench.ingest.cli import main
    elif which == "evasion":
        from monitor_tools.bench.evasion import main
    elif which == "soak":
        from monitor_tools.bench.soak import main
    elif which == "cluster":
        from monitor_tools.bench.cluster import main
    else:
        from monitor_tools.bench.match import main
    code: int = main(rest)
    return code


def evaluate(argv: list[str]) -> int:
    """detection evaluation on live test streams (see `monitor eval --help`)"""
    from monitor_tools.eval.live.cli import main

    code: int = main(argv)
    return code
