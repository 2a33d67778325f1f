"""What several commands share: broker options and writing a result to a file or stdout."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from monitor.common.errors import ConfigError

log = logging.getLogger("monitor")


def add_broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--username")
    # Refused with a clear message (see _broker_overrides): arguments show in every user's process list.
    p.add_argument("--password", help=argparse.SUPPRESS)
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="read the broker password from FILE (or set MONITOR_BROKER_PASSWORD)")
    p.add_argument("--ca-file", type=Path)
    p.add_argument("--prefix", dest="topic_prefix", help="topic prefix (default livesafe)")


def broker_overrides(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "password", None) is not None:
        raise ConfigError("--password is no longer accepted: every user on this host can read it in the process "
                          "list (change that password now); use --password-file FILE or the "
                          "MONITOR_BROKER_PASSWORD environment variable")
    keys = ("broker", "username", "password_file", "ca_file", "topic_prefix")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if "broker" in out:
        out["url"] = out.pop("broker")
    for key in ("ca_file", "password_file"):
        if key in out:
            out[key] = str(out[key])
    return out


def write_output(text: str, path: Path | None, what: str) -> None:
    if path is not None:
        path.write_text(text)
        log.info("wrote %s to %s", what, path)
    else:
        with contextlib.suppress(BrokenPipeError):  # `| head` is fine
            sys.stdout.write(text)
