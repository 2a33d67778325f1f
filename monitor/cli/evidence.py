"""`monitor evidence verify|export|keygen`: check the evidence log, export an incident report, make a key.

Exit codes: 0 ok, 1 the chain (or a signed head) is broken, 2 unusable input, said in one line. The log itself
is monitor/evidence/ (store.py, verify.py, export.py, signing.py); `monitor` hands this command everything after
its name (monitor/cli/main.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

from monitor.evidence.export import export_incident
from monitor.evidence.records import HEX64
from monitor.evidence.signing import KeyFileError, generate_signing_key, load_public_key
from monitor.evidence.store import EvidenceError
from monitor.evidence.verify import verify

__all__ = ["main"]

def _anchor(text: str) -> tuple[int, str]:
    """A `--anchor SEQ:HASH` argument (a head published earlier) as (seq, hash)."""
    seq, sep, hash_ = text.partition(":")
    if not sep or not seq.isdigit() or not HEX64.match(hash_.lower()):
        raise argparse.ArgumentTypeError(f"{text!r} is not SEQ:HASH (HASH is 64 hex digits)")
    return int(seq), hash_.lower()


def _parser() -> argparse.ArgumentParser:
    """The parser of `monitor evidence verify|export|keygen`."""
    parser = argparse.ArgumentParser(
        prog="monitor evidence", description="Check and export the evidence log."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain; exit 0 intact, 1 tampered, 2 not a log")
    v.add_argument("path", type=Path)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--anchor",
        type=_anchor,
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="a head published earlier",
    )
    v.add_argument("--pubkey", type=Path, metavar="FILE", help="check the signed heads with this public key")
    e = sub.add_parser("export", help="write one incident's report as JSON (images omitted)")
    e.add_argument("path", type=Path)
    e.add_argument("incident")
    e.add_argument("--out", type=Path, help="write here instead of stdout")
    e.add_argument("--pubkey", type=Path, metavar="FILE", help="check the signed heads and include this key")
    k = sub.add_parser("keygen", help="make an Ed25519 key for signing heads (keep it outside the state dir)")
    k.add_argument("key", type=Path, help="private key file to create (mode 0600)")
    k.add_argument("--pub", type=Path, metavar="FILE", help="public key file (default KEY.pub)")
    return parser


def _write_atomically(dest: Path, text: str) -> None:
    """Write text to dest through a fsynced temporary file beside it: a report is whole or absent."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`monitor evidence verify|export|keygen`: exit 0 ok, 1 chain broken, 2 unusable input (said in one line)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2); argparse already printed why
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "keygen":
            key, pub, kid = generate_signing_key(args.key, args.pub)
            print(f"signing key {key} (keep it secret, outside the state directory); public key {pub}; key id {kid}")
            print("set evidence.signing_key_file to the key; give the public key to whoever verifies the log")
            return 0
        public = load_public_key(args.pubkey) if args.pubkey is not None else None
        if args.command == "verify":
            report = verify(args.path, anchors=args.anchor, public_key=public)
            if args.json:
                print(json.dumps({"path": str(args.path), **report.to_dict()}, indent=2, ensure_ascii=False))
            elif report.ok:
                head = (
                    f"; head seq {report.head.last_seq} hash {report.head.last_hash}" if report.head else ""
                )
                print(f"{args.path}: OK, {report.records} records, hash chain intact{head}")
                sig = report.signatures
                if sig is None:
                    print("  signatures not checked (give --pubkey FILE): a recomputed chain would also pass")
                else:
                    print(f"  {sig['valid']} signed heads valid (key {sig['key_id']}), last at seq "
                          f"{sig['last_signed_seq']}; {sig['unsigned_tail']} records after it not yet signed")
            else:
                print(f"{args.path}: TAMPERED, {report.records} records, {len(report.problems)} problems:")
                for problem in report.problems:
                    print(f"  {problem}")
            return 0 if report.ok else 1
        doc = export_incident(args.path, args.incident, public_key=public)
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        if args.out is None:
            sys.stdout.write(text)
        else:
            _write_atomically(args.out, text)
            print(f"incident {args.incident}: report written to {args.out}", file=sys.stderr)
        if not doc["evidence"]["verification"]["ok"]:
            print(f"warning: {args.path} failed verification; the report lists the problems", file=sys.stderr)
            return 1
        return 0
    except (EvidenceError, KeyFileError) as exc:
        print(f"monitor evidence: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"monitor evidence: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"monitor evidence: {args.path}: database error: {exc}", file=sys.stderr)
        return 2
