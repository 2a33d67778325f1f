"""`monitor bank`: hash lists: convert between formats, check a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from monitor.cli.common import write_output


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def run(args: argparse.Namespace) -> int:
    from pipelines.banks import format_bank, load_bank
    from pipelines.hamming import code_to_hex

    bank = load_bank(args.input, args.input.stem, args.signal)
    if args.bank_command == "check":
        print(f"{args.input}: {len(bank)} {args.signal} entries, OK")
        return 0
    text = format_bank([code_to_hex(c) for c in bank.codes], args.format, args.signal, entries=bank.entries)
    write_output(text, args.output, f"{len(bank)} entries")
    return 0
