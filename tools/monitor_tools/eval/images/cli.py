"""`python -m monitor_tools.eval.images`: options, the run on either corpus, the JSON document and the tables."""

from __future__ import annotations

import argparse
import json
import sys

from monitor_tools.eval import images
from monitor_tools.eval.images.corpus import BANK_SIZE, INGEST_WIDTH, set_ingest_width
from monitor_tools.eval.images.report import markdown, markdown_natural
from monitor_tools.eval.images.scoring import run
from monitor_tools.eval.images.splits import run_natural
from test_streams.transforms import LAYOUT_TRANSFORMS, TRANSFORMS

DESCRIPTION = (images.__doc__ or "").split("\n")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m monitor_tools.eval.images",
                                 description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="CI size: 45 originals, fewer cost and 1M probes")
    ap.add_argument("--images", type=int, help="number of originals (default 300, quick 45)")
    ap.add_argument("--transforms", help="comma-separated subset of: " + ",".join(TRANSFORMS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--width", type=int, default=INGEST_WIDTH,
                    help=f"ingest scale width (default {INGEST_WIDTH}, the monitor's ingest.scale_width)")
    ap.add_argument("--table", action="store_true", help="also print Markdown tables on stderr")
    ap.add_argument("--markdown", metavar="FILE", help="write the Markdown tables to FILE")
    ap.add_argument("--corpus", choices=("generated", "natural"), default="generated",
                    help="generated pictures (the original benchmark) or the natural corpus in a tuning and a "
                         "held-out split with the streaming-layout transforms (docs/eval-images.md)")
    ap.add_argument("--generated", type=int, default=60, help="natural corpus: generated pictures as one more class")
    ap.add_argument("--bank-size", type=int, default=BANK_SIZE, help="natural corpus: codes in the false-alert bank")
    ap.add_argument("--unrelated", type=int, default=0, metavar="N",
                    help="natural corpus: N more held-out layout samples for the false-alert scan (1800 = 1 h)")
    args = ap.parse_args(argv)
    if not 64 <= args.width <= 4096:
        ap.error("--width must be between 64 and 4096")
    set_ingest_width(args.width)
    n = args.images or (45 if args.quick else 300)
    if n < 3:
        ap.error("--images must be at least 3")
    known = list(TRANSFORMS) + (list(LAYOUT_TRANSFORMS) if args.corpus == "natural" else [])
    transforms = args.transforms.split(",") if args.transforms else known
    unknown = [t for t in transforms if t not in known]
    if unknown:
        ap.error(f"unknown transforms: {', '.join(unknown)}")
    if args.corpus == "natural":
        doc = run_natural(transforms, n_generated=min(args.generated, 12) if args.quick else args.generated,
                          max_per_split=(args.images or 10) if args.quick else args.images,
                          cost_frames=6 if args.quick else 24,
                          bank_size=min(args.bank_size, 100_000) if args.quick else args.bank_size, seed=args.seed,
                          unrelated=min(args.unrelated, 50) if args.quick else args.unrelated)
    elif args.quick:
        doc = run(n, transforms, cost_frames=8, cost_repeats=1, direct_probes=64, seed=args.seed)
    else:
        doc = run(n, transforms, cost_frames=24, cost_repeats=3, direct_probes=2000, seed=args.seed, stream_bgs=8,
                  stream_times=25)
    doc["mode"] = "quick" if args.quick else "full"
    print(json.dumps(doc, indent=2))
    if args.table or args.markdown:
        md = markdown_natural(doc) if args.corpus == "natural" else markdown(doc)
        if args.table:
            print(md, file=sys.stderr)
        if args.markdown:
            with open(args.markdown, "w", encoding="utf-8") as f:
                f.write(md)
    return 0
