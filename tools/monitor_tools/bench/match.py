"""Benchmark: exact radius search with MultiIndexHashIndex vs FAISS IndexBinaryMultiHash.

Both indexes are built and queried side by side in one process on the same banks (uniform
random 256-bit codes and a clustered bank: codes scattered 10-40 bits around a few thousand
centres) and the same queries (half near-duplicates of bank entries, 5-30 bits flipped, half
random). The two indexes take turns in blocks of queries (--block, default 50), so that load
from other processes hits both alike; --block 1 alternates every query, which leaves each
index's caches cold from the other's last query. Exactness is checked against brute force
(`LinearIndex`) on a sample of queries.

FAISS reference: `IndexBinaryMultiHash(256, 16, 16)` with nflip=1, exact for radius <= 31 by
pigeonhole. Its `range_search` keeps distances strictly below the radius it is given, so it is
called with radius + 1; the exactness check confirms the two agree.

One JSON document goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.hamming import CODE_BYTES
from pipelines.index import LinearIndex
from pipelines.mih import MultiIndexHashIndex

Codes = npt.NDArray[np.uint8]
Result = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]
FAISS_CONFIG = "IndexBinaryMultiHash(256, nhash=16, b=16), nflip=1"
BYTES_PER_ENTRY = CODE_BYTES + 8  # raw code + int64 id
BATCH_ROUNDS = 4  # batched timing: the queries in this many batches, engines alternating


def _log(msg: str) -> None:
    print(f"[bench_match] {msg}", file=sys.stderr, flush=True)


def _rss() -> int:
    """Resident set size of this process in bytes (/proc on Linux, else psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        psutil: Any = importlib.import_module("psutil")
        return int(psutil.Process().memory_info().rss)


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS so that RSS growth measures the next build only."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def flip_bits(codes: Codes, low: int, high: int, rng: np.random.Generator) -> Codes:
    """Copy of codes with low..high random bits flipped per row (repeated positions cancel)."""
    out = np.ascontiguousarray(codes, dtype=np.uint8).copy()
    words = out.view(np.uint64)  # (N, 4)
    n = len(out)
    count = rng.integers(low, high + 1, n)
    rows = np.arange(n)
    for c in range(high):
        pos = rng.integers(0, 8 * CODE_BYTES, n)
        sel = rows[count > c]
        p = pos[sel]
        words[sel, p // 64] ^= np.left_shift(np.uint64(1), (p % 64).astype(np.uint64))
    return out


def make_bank(n: int, kind: str, rng: np.random.Generator, centres: int = 2000) -> Codes:
    """uniform: random codes; clustered: each code is a random centre with 10-40 flips."""
    if kind == "uniform":
        return rng.integers(0, 256, (n, CODE_BYTES), dtype=np.uint8)
    base = rng.integers(0, 256, (min(centres, max(n, 1)), CODE_BYTES), dtype=np.uint8)
    out = np.empty((n, CODE_BYTES), np.uint8)
    step = 1 << 20
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        pick = base[rng.integers(0, len(base), hi - lo)]
        out[lo:hi] = flip_bits(pick, 10, 40, rng)
    return out


def make_queries(bank: Codes, count: int, rng: np.random.Generator) -> Codes:
    """First half: bank entries with 5-30 bits flipped; second half: random codes."""
    near = count // 2
    picked = bank[rng.integers(0, len(bank), near)] if len(bank) else bank[:0]
    q_near = flip_bits(picked, 5, 30, rng)
    q_rand = rng.integers(0, 256, (count - len(q_near), CODE_BYTES), dtype=np.uint8)
    return np.ascontiguousarray(np.concatenate([q_near, q_rand]))


def _same(got: Result, want: Result, ordered: bool) -> bool:
    if ordered:
        return np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    a = sorted(zip(got[0].tolist(), got[1].tolist(), strict=True))
    b = sorted(zip(want[0].tolist(), want[1].tolist(), strict=True))
    return a == b


@dataclass
class _Engine:
    """One index under test: how to query it and what its build cost."""

    name: str
    single: Callable[[Codes], Result]
    batch: Callable[[Codes], list[Result]]
    info: dict[str, Any]
    ordered: bool  # results sorted like LinearIndex's (else compared as sets)


def _build_ours(bank: Codes, radius: int) -> _Engine:
    _release_freed_memory()
    t0 = time.perf_counter()
    index = MultiIndexHashIndex(bank, np.arange(len(bank), dtype=np.int64))
    build_s = time.perf_counter() - t0
    _log(f"  ours: built in {build_s:.2f} s, layout {index.layout}, {index.nbytes / 2**20:.0f} MiB")
    index.search_batch(bank[:4], radius)  # builds the probe masks for this radius
    info = {
        "build_s": build_s,
        "memory_bytes": index.nbytes,
        "memory_note": "index.nbytes: codes, ids, bucket offsets, permutations, probe masks",
        "memory_ratio_vs_raw": index.nbytes / max(1, BYTES_PER_ENTRY * len(bank)),
        "layout": {"tables": index.layout[0], "prefix_bits": index.layout[1]},
        "threads": 1,
    }
    return _Engine("ours", lambda q: index.search(q, radius), lambda qs: index.search_batch(qs, radius), info, True)


def _build_faiss(faiss: Any, bank: Codes, radius: int, threads: int) -> _Engine:
    faiss.omp_set_num_threads(threads)
    _release_freed_memory()
    rss0 = _rss()
    t0 = time.perf_counter()
    index = faiss.IndexBinaryMultiHash(8 * CODE_BYTES, 16, 16)
    index.nflip = 1
    index.add(bank)
    build_s = time.perf_counter() - t0
    rss_growth = _rss() - rss0
    _log(f"  faiss: built in {build_s:.2f} s, RSS +{rss_growth / 2**20:.0f} MiB")

    def batch(qs: Codes) -> list[Result]:
        # range_search keeps d < radius: radius + 1 gives d <= radius. lims[k]:lims[k + 1]
        # delimit query k's hits in the flat distance and label arrays.
        lims, dist, labels = index.range_search(np.ascontiguousarray(qs), radius + 1)
        return [
            (labels[a:b].astype(np.int64), dist[a:b].astype(np.int32)) for a, b in itertools.pairwise(lims.tolist())
        ]

    info = {
        "config": FAISS_CONFIG,
        "omp_threads": threads,
        "build_s": build_s,
        "memory_bytes": rss_growth,
        "memory_note": "RSS growth of the process during the build",
        "memory_ratio_vs_raw": rss_growth / max(1, BYTES_PER_ENTRY * len(bank)),
    }
    batch(bank[:1])
    return _Engine("faiss", lambda q: batch(q.reshape(1, CODE_BYTES))[0], batch, info, False)


def _measure(engines: list[_Engine], queries: Codes, truth: dict[int, Result], block: int) -> dict[str, dict[str, Any]]:
    """Time all engines on the same queries, alternating in blocks of `block` queries so that
    load from other processes hits them alike (block=1: every query finds the caches cold
    from the other engine's last query)."""
    seconds: dict[str, list[float]] = {e.name: [] for e in engines}
    results: dict[str, list[Result]] = {e.name: [] for e in engines}
    for b, lo in enumerate(range(0, len(queries), block)):
        for e in engines if b % 2 == 0 else engines[::-1]:
            for q in queries[lo : lo + block]:
                t0 = time.perf_counter()
                results[e.name].append(e.single(q))
                seconds[e.name].append(time.perf_counter() - t0)
    batch_s = dict.fromkeys(seconds, 0.0)
    batched: dict[str, list[Result]] = {e.name: [] for e in engines}
    for k, part in enumerate(p for p in np.array_split(queries, BATCH_ROUNDS) if len(p)):
        for e in engines if k % 2 == 0 else engines[::-1]:
            t0 = time.perf_counter()
            batched[e.name] += e.batch(part)
            batch_s[e.name] += time.perf_counter() - t0
    out = {}
    for e in engines:
        single, ms = results[e.name], np.asarray(seconds[e.name]) * 1e3
        agree = sum(_same(b, s, e.ordered) for b, s in zip(batched[e.name], single, strict=True))
        exact = sum(_same(single[k], want, e.ordered) for k, want in truth.items())
        out[e.name] = {
            **e.info,
            "qps_single": len(ms) / max(1e-12, ms.sum() / 1e3),
            "qps_batched": len(queries) / max(1e-12, batch_s[e.name]),
            "batch_size": -(-len(queries) // BATCH_ROUNDS),
            "mean_ms": float(ms.mean()),
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)),
            "exact": exact / max(1, len(truth)),
            "exact_checked": len(truth),
            "batched_equals_single": agree / max(1, len(queries)),
            "mean_results": float(np.mean([len(r[0]) for r in single])),
        }
        _log(f"  {e.name}: {out[e.name]['mean_ms']:.3f} ms/query, exact {out[e.name]['exact']:.2f}")
    return out


def run_case(n: int, kind: str, args: argparse.Namespace, faiss: Any, faiss_skip: str | None) -> dict[str, Any]:
    rng = np.random.default_rng([args.seed, n, kind == "clustered"])
    _log(f"size {n:,} {kind}: generating")
    bank = make_bank(n, kind, rng, args.centres)
    queries = make_queries(bank, args.queries, rng)
    # Brute-force truth on a sample: half near-duplicate, half random queries.
    half = args.queries // 2
    k = min(args.exact_sample // 2, half)
    sample = np.concatenate([np.arange(k), half + np.arange(min(k, args.queries - half))])
    _log(f"  brute force on {len(sample)} queries")
    linear = LinearIndex(bank, np.arange(n, dtype=np.int64))
    truth = {int(i): linear.search(queries[i], args.radius) for i in sample}
    del linear
    case: dict[str, Any] = {
        "size": n,
        "distribution": kind,
        "raw_bytes": BYTES_PER_ENTRY * n,
        "mean_true_results_sampled": float(np.mean([len(t[0]) for t in truth.values()])),
    }
    # FAISS first, so that its RSS growth is not blurred by pages freed from other builds.
    engines = [] if faiss_skip else [_build_faiss(faiss, bank, args.radius, args.threads)]
    engines.insert(0, _build_ours(bank, args.radius))
    measured = _measure(engines, queries, truth, max(1, args.block))
    case["ours"] = measured["ours"]
    if faiss_skip is None:
        ours, theirs = measured["ours"], measured["faiss"]
        case["faiss"] = theirs
        case["speedup"] = {
            "single_mean_latency": theirs["mean_ms"] / ours["mean_ms"],
            "single_p50_latency": theirs["p50_ms"] / ours["p50_ms"],
            "single_p99_latency": theirs["p99_ms"] / ours["p99_ms"],
            "batched_qps": ours["qps_batched"] / theirs["qps_batched"],
        }
    else:
        case["faiss"] = {"skipped": faiss_skip}
    return case


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m monitor_tools.bench.match", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI mode: 100k codes, 200 queries")
    ap.add_argument("--sizes", default=None, help="comma-separated bank sizes (default 1000000,10000000)")
    ap.add_argument("--queries", type=int, default=None, help="queries per case (default 1000)")
    ap.add_argument("--radius", type=int, default=31)
    ap.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (ours is single-threaded)")
    ap.add_argument("--exact-sample", type=int, default=20, help="queries checked against brute force")
    ap.add_argument("--centres", type=int, default=2000, help="cluster centres of the clustered bank")
    ap.add_argument("--distributions", default="uniform,clustered")
    ap.add_argument("--no-faiss", action="store_true", help="skip the FAISS reference")
    ap.add_argument("--block", type=int, default=50, help="single-query timing alternates engines every BLOCK queries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = "100000" if args.quick else "1000000,10000000"
    if args.queries is None:
        args.queries = 200 if args.quick else 1000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    kinds = [k.strip() for k in args.distributions.split(",") if k.strip()]
    if any(k not in ("uniform", "clustered") for k in kinds):
        raise SystemExit("distributions must be uniform and/or clustered")
    faiss: Any = None
    faiss_skip: str | None = "--no-faiss given" if args.no_faiss else None
    if faiss_skip is None:
        try:
            import faiss as faiss_module

            faiss = faiss_module
        except ImportError as exc:
            faiss_skip = f"faiss not importable: {exc}"
    if faiss_skip is None and args.radius > 31:
        _log(f"note: the FAISS config is exact only up to radius 31, not {args.radius}")
    started = time.perf_counter()
    cases = [run_case(n, kind, args, faiss, faiss_skip) for n in sizes for kind in kinds]
    report = {
        "benchmark": "exact Hamming radius search, 256-bit codes",
        "config": {
            "sizes": sizes,
            "distributions": kinds,
            "queries": args.queries,
            "query_mix": "half bank entries with 5-30 bits flipped, half uniform random",
            "clustered_bank": f"{args.centres} random centres, each code 10-40 random bit flips away",
            "radius": args.radius,
            "threads": args.threads,
            "interleave_block": args.block,
            "exact_sample": args.exact_sample,
            "quick": args.quick,
            "seed": args.seed,
            "faiss_radius_note": "FAISS range_search keeps d < radius, so it gets radius + 1",
        },
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": getattr(faiss, "__version__", None),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "cases": cases,
        "total_s": time.perf_counter() - started,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
