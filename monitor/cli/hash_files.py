"""`monitor hash`: fingerprint image and video files into a hash list."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monitor.cli.common import write_output

log = logging.getLogger("monitor")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    h = sub.add_parser("hash", help="fingerprint image/video files into a hash list")
    h.add_argument("files", nargs="+", type=Path)
    h.add_argument("--signal", choices=["pdq", "phash"], default="pdq")
    h.add_argument("--format", choices=["csv", "plain", "typed", "jsonl"], default="csv")
    h.add_argument("--every", type=float, default=1.0, help="seconds between hashed video frames")
    h.add_argument("--crops", action="store_true",
                   help="also hash 34 crop windows of each still image (same entry id, tag variant:<window>): "
                        "finds the picture shown cropped by 5-10%%")
    h.add_argument("--output", "-o", type=Path, help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    from monitor.ingest.hashfiles import MIN_QUALITY, hash_file
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
    write_output(format_bank(hexes, args.format, args.signal, entries=entries), args.output, f"{len(hexes)} hashes")
    return 0
