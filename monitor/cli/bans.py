"""`monitor bans`: list, add or remove bans (stream keys, addresses)."""

from __future__ import annotations

import argparse
from pathlib import Path

from monitor.common.errors import UserError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bans = sub.add_parser("bans", help="list, add or remove bans (stream keys, addresses)")
    bans.add_argument("--state-dir", type=Path, default=Path("state"))
    bsub = bans.add_subparsers(dest="bans_command", required=True)
    bsub.add_parser("list")
    badd = bsub.add_parser("add")
    badd.add_argument("kind", choices=["key", "addr"])
    badd.add_argument("value")
    badd.add_argument("--reason", required=True)
    badd.add_argument("--author", required=True)
    badd.add_argument("--hours", type=float, help="expire after this many hours")
    brm = bsub.add_parser("remove")
    brm.add_argument("kind", choices=["key", "addr"])
    brm.add_argument("value")


def run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from monitor.servers.bans import BanList

    bans = BanList(args.state_dir / "bans.json")
    if args.bans_command == "list":
        for b in bans.list():
            until = b.expires_at.isoformat() if b.expires_at else "never"
            print(f"{b.kind}\t{b.value}\t{b.author}\t{b.created_at.isoformat()}\texpires {until}\t{b.reason}")
        return 0
    if args.bans_command == "add":
        expires = datetime.now(UTC) + timedelta(hours=args.hours) if args.hours else None
        try:
            bans.add(args.kind, args.value, reason=args.reason, author=args.author, expires_at=expires)
        except ValueError as exc:
            raise UserError(f"bans add: {exc}") from None
        print(f"banned {args.kind} {args.value}")
        return 0
    if not bans.remove(args.kind, args.value):
        raise UserError(f"bans remove: no {args.kind} ban for {args.value!r}")
    print(f"removed {args.kind} {args.value}")
    return 0
