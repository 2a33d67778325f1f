"""The `monitor` command (also `python -m monitor`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.errors import ConfigError, UserError
from monitor.safetext import EscapingFormatter, describe_char, forbidden_char, printable

log = logging.getLogger("monitor")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; stream and incident ids as fields when known."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": printable(record.getMessage()),  # bidi overrides too, which JSON would keep as they are
        }
        for key in ("stream_id", "incident_id"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # Escaping: a moderator's name, a bank label or a stream name never forges a line or a terminal escape.
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # Third-party chatter (amqtt logs every client) is kept to warnings. paho (logger "mqtt") logs an ERROR for
    # the socket of a client we closed on purpose; our own messages say what a connection problem means.
    for noisy in ("amqtt", "transitions", "libav"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)


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


def _add_broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--username")
    # Refused with a clear message (see _broker_overrides): arguments show in every user's process list.
    p.add_argument("--password", help=argparse.SUPPRESS)
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="read the broker password from FILE (or set MONITOR_BROKER_PASSWORD)")
    p.add_argument("--ca-file", type=Path)
    p.add_argument("--prefix", dest="topic_prefix", help="topic prefix (default livesafe)")


def _broker_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor", description="Livestream safety monitor.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="watch streams and publish alerts")
    run.add_argument("--config", "-c", type=Path, help="YAML config file")
    run.add_argument("--stream", action="append", default=[], metavar="[ID=]URL", help="repeatable")
    run.add_argument("--bank", action="append", default=[], metavar="[NAME=]PATH", help="PDQ hash list")
    run.add_argument("--node", help="node name (topic level)")
    run.add_argument("--once", action="store_true", help="exit when every stream has ended (files)")
    run.add_argument("--validate-config", action="store_true", help="check the config and banks, then exit")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _add_broker_args(run)

    con = sub.add_parser("console", help="show alerts as they arrive")
    _add_broker_args(con)
    con.add_argument("--json", action="store_true", help="one alert per line as JSON (for scripts)")
    con.add_argument("--lines", action="store_true", help="print alerts as lines instead of the full-screen UI")
    con.add_argument("--max-alerts", type=int, help="with --json/--lines: exit after this many alerts")
    con.add_argument("--moderator", default=os.environ.get("USER", ""), help="your name, recorded with actions")
    con.add_argument("--node", dest="node_filter", help="only this monitor node")
    con.add_argument("--actions-log", type=Path, help="also record your actions in this JSON-lines file")

    h = sub.add_parser("hash", help="fingerprint image/video files into a hash list")
    h.add_argument("files", nargs="+", type=Path)
    h.add_argument("--signal", choices=["pdq", "phash"], default="pdq")
    h.add_argument("--format", choices=["csv", "plain", "typed", "jsonl"], default="csv")
    h.add_argument("--every", type=float, default=1.0, help="seconds between hashed video frames")
    h.add_argument("--crops", action="store_true",
                   help="also hash 34 crop windows of each still image (same entry id, tag variant:<window>): "
                        "finds the picture shown cropped by 5-10%%")
    h.add_argument("--output", "-o", type=Path, help="write here instead of stdout")

    # Listed for --help; main() hands them to their own parsers.
    sub.add_parser("evidence", help="verify the evidence log (--pubkey: its signed heads), export an incident "
                   "report, make a signing key (keygen)", add_help=False)
    bench = sub.add_parser("bench", help="benchmarks that print JSON: `bench ingest|match|soak|evasion|classify "
                           "[--quick]`")
    bench.add_argument("which", choices=["ingest", "match", "soak", "evasion", "classify"])

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

    sub.add_parser("eval", help="detection evaluation on live test streams (see `monitor eval --help`)",
                   add_help=False)

    bk = sub.add_parser("bank", help="hash lists: convert between formats, check a file")
    bksub = bk.add_subparsers(dest="bank_command", required=True)
    conv = bksub.add_parser("convert", help="read any accepted format, write another")
    conv.add_argument("input", type=Path)
    conv.add_argument("--format", choices=["csv", "plain", "typed", "jsonl"], required=True)
    conv.add_argument("--signal", choices=["pdq", "phash"], default="pdq")
    conv.add_argument("--output", "-o", type=Path)
    chk = bksub.add_parser("check", help="parse a hash list and report its entries or its first error")
    chk.add_argument("input", type=Path)
    chk.add_argument("--signal", choices=["pdq", "phash"], default="pdq")

    d = sub.add_parser("demo", help="self-contained demo: generated live stream, embedded broker, console")
    d.add_argument("--duration", type=float, default=40.0, help="stream length in seconds")
    d.add_argument("--keep", type=Path, help="keep the demo's files (bank, ground truth) in this folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # These commands have their own parsers (options first included: `monitor eval --quick`).
    delegated = _delegate(argv)
    if delegated is not None:
        return delegated
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", None) or "info")
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "console":
            return _cmd_console(args)
        if args.command == "hash":
            return _cmd_hash(args)
        if args.command == "bank":
            return _cmd_bank(args)
        if args.command == "bans":
            return _cmd_bans(args)
        if args.command == "demo":
            from monitor.demo import run_demo

            return run_demo(duration_s=args.duration, keep=args.keep)
    except UserError as exc:
        print(f"monitor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 2


def _delegate(argv: list[str]) -> int | None:
    if argv[:1] == ["eval"]:
        from monitor.eval_live import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["evidence"]:
        from monitor.evidence import main as evidence_main

        return evidence_main(argv[1:])
    if argv[:1] == ["bench"] and len(argv) > 1 and argv[1] in ("ingest", "match", "soak", "evasion", "classify"):
        if argv[1] == "classify":
            from monitor.bench_classify import main as bench_main
        elif argv[1] == "ingest":
            from monitor.bench_ingest import main as bench_main
        elif argv[1] == "evasion":
            from monitor.bench_evasion import main as bench_main
        elif argv[1] == "soak":
            from monitor.soak import main as bench_main
        else:
            from monitor.bench_match import main as bench_main
        return bench_main(argv[2:])
    return None


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.config import build_config, load_config
    from monitor.engine import Engine, load_banks

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
    overrides = _broker_overrides(args)
    if overrides:
        broker = data.get("broker") or {}
        if not isinstance(broker, dict):
            raise ConfigError(f"{source}: broker: must be a mapping")
        data["broker"] = {**broker, **overrides}
    cfg = build_config(data, source)
    setup_logging(cfg.log_level, cfg.log_format)
    banks = load_banks(cfg)
    if cfg.evidence.enabled and cfg.evidence.signing_key_file is not None:
        from monitor.evidence import load_signing_key

        load_signing_key(cfg.evidence.signing_key_file, state_dir=cfg.state_dir)  # KeyFileError: one line, exit 2
    from monitor.supervisor import check_classifiers

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


def _cmd_console(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from monitor.config import BrokerConfig, _describe
    from monitor.console import run_console

    try:
        cfg = BrokerConfig.model_validate(_broker_overrides(args))
    except ValidationError as exc:  # described field by field: the input (a URL with a password) is not echoed
        raise ConfigError(_describe(exc, "console")) from None
    if not args.json and not args.lines and sys.stdout.isatty():
        from monitor.tui import run_tui

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


def _cmd_hash(args: argparse.Namespace) -> int:
    from monitor.hashfiles import MIN_QUALITY, hash_file
    from pipelines.banks import Entry, format_bank

    hexes: list[str] = []
    entries: list[Entry] = []
    for n, path in enumerate(args.files, start=1):
        for fh in hash_file(path, signal_type=args.signal, every_s=args.every, crops=args.crops):
            if fh.variant is not None:  # a crop window: the same entry, found when the picture is shown cropped
                hexes.append(fh.hex)
                entries.append(Entry(str(n), path.name, (f"variant:{fh.variant}",)))
                continue
            if fh.quality < MIN_QUALITY:
                log.warning("%s%s: PDQ quality %d < %d: hashes of such frames match unreliably", path,
                            f" at {fh.time_s}s" if fh.time_s is not None else "", fh.quality, MIN_QUALITY)
            hexes.append(fh.hex)
            # Every frame of one video shares the file's entry id: together they are one known video.
            entries.append(Entry(str(n), path.name, frame_s=fh.time_s))
    _write_output(format_bank(hexes, args.format, args.signal, entries=entries), args.output, f"{len(hexes)} hashes")
    return 0


def _write_output(text: str, path: Path | None, what: str) -> None:
    if path is not None:
        path.write_text(text)
        log.info("wrote %s to %s", what, path)
    else:
        with contextlib.suppress(BrokenPipeError):  # `| head` is fine
            sys.stdout.write(text)


def _cmd_bans(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from monitor.bans import BanList

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


def _cmd_bank(args: argparse.Namespace) -> int:
    from pipelines.banks import format_bank, load_bank
    from pipelines.hamming import code_to_hex

    bank = load_bank(args.input, args.input.stem, args.signal)
    if args.bank_command == "check":
        print(f"{args.input}: {len(bank)} {args.signal} entries, OK")
        return 0
    text = format_bank([code_to_hex(c) for c in bank.codes], args.format, args.signal, entries=bank.entries)
    _write_output(text, args.output, f"{len(bank)} entries")
    return 0
