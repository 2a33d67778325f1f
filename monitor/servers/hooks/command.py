"""`python -m monitor.servers.hooks token ROUTE`: a route's own `?token=` value (docs/security-hooks.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from monitor.servers.hooks.auth import route_token
from monitor.servers.hooks.handlers import ROUTES


def main(argv: list[str] | None = None) -> int:
    """`python -m monitor.servers.hooks token ROUTE [--secret-file F]`: print ROUTE's own `?token=` value, to put in a
    streaming server's hook URL instead of the secret (it works on that route only and cannot sign)."""
    parser = argparse.ArgumentParser(prog="python -m monitor.servers.hooks", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("token", help="print a route's token")
    tok.add_argument("route", choices=ROUTES)
    tok.add_argument("--secret-file", type=Path, help="file holding the hook secret (else $MONITOR_HOOK_SECRET)")
    args = parser.parse_args(argv)
    try:
        secret = (args.secret_file.read_text(encoding="utf-8").strip() if args.secret_file
                  else os.environ.get("MONITOR_HOOK_SECRET", ""))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read the secret file: {exc}", file=sys.stderr)
        return 2
    if len(secret) < 16:
        print("no hook secret (16 characters or more): pass --secret-file or set MONITOR_HOOK_SECRET",
              file=sys.stderr)
        return 2
    print(route_token(secret, args.route))
    return 0
