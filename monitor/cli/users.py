"""`monitor users add|passwd|disable|enable|list`: the web console's accounts (monitor/web/users.py).

Passwords are read from the terminal (twice), or from the first line of --password-file FILE, never from an
argument (every user of the host sees those in the process list).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from monitor.common.errors import UserError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from monitor.web.users import ROLES

    p = sub.add_parser("users", help="web console accounts: add, passwd, disable, enable, list")
    p.add_argument("--config", "-c", type=Path, help="the monitor's config (its state_dir and web.users_file)")
    p.add_argument("--state-dir", type=Path, help="state directory (default: the config's, else ./state)")
    usub = p.add_subparsers(dest="users_command", required=True)
    add = usub.add_parser("add", help="a new account")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-file", type=Path, help="read the password from this file's first line")
    pw = usub.add_parser("passwd", help="set an account's password (and, with --role, its role)")
    pw.add_argument("name")
    pw.add_argument("--password-file", type=Path)
    pw.add_argument("--role", choices=ROLES)
    for name in ("disable", "enable"):
        usub.add_parser(name, help=f"{name} an account").add_argument("name")
    usub.add_parser("list", help="accounts, roles and whether enabled")


def _password(path: Path | None) -> str:
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--password-file {path}: cannot read: {exc}") from None
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the passwords differ")
    return first


def _store_path(args: argparse.Namespace) -> Path:
    from monitor.web.users import users_path

    if args.config is not None:
        from monitor.config.models import build_config, load_config

        cfg = build_config(load_config(args.config), str(args.config))
        return users_path(args.state_dir or cfg.state_dir, cfg.web.users_file)
    return users_path(args.state_dir or Path("state"))


def run(args: argparse.Namespace) -> int:
    from monitor.web.users import UserStore

    store = UserStore(_store_path(args))
    cmd = args.users_command
    if cmd == "list":
        for u in store.load().values():
            print(f"{u.name}\t{u.role}\t{'disabled' if u.disabled else 'enabled'}")
        return 0
    if cmd == "add":
        store.add(args.name, _password(args.password_file), args.role)
        print(f"added {args.name} ({args.role}) to {store.path}")
    elif cmd == "passwd":
        store.update(args.name, password=_password(args.password_file), role=args.role)
        print(f"password of {args.name} changed; sessions end at their next request only if disabled")
    else:
        store.update(args.name, disabled=cmd == "disable")
        print(f"{args.name} {cmd}d (a disabled user's sessions end at their next request)")
    return 0
