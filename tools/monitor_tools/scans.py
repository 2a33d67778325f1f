"""Hamming-distance questions the benchmarks ask, answered with the analyses' public search (pipelines/hamming.py)
wherever it has the answer; radius searches in a large bank use `pipelines.mih.MultiIndexHashIndex` itself.

- `distances`: every query against every code of a small bank (a few hundred originals), from `hamming`;
- `nearest_and_within`, `nearest_distances`: the nearest distance in a large bank at any radius. Neither index
  offers that (both answer radius searches: every id within r, sorted), and `hamming` per query is about 3x slower
  at 1M codes than this scan (21.9 against 6.8 ms a query on the 2-core machine), which sums the 64-bit words
  column by column over blocks of queries. Checked against `LinearIndex` in tests/tools/test_eval_live.py and
  on a few probes in each run of the image benchmark (monitor_tools/eval/images/scoring.py).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipelines.hamming import CODE_BYTES, Codes, hamming


def _rows(codes: Codes) -> Codes:
    return np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, CODE_BYTES)


def distances(queries: Codes, bank: Codes) -> npt.NDArray[np.int32]:
    """(len(queries), len(bank)) distances, one `hamming` scan per row of the shorter side."""
    q, b = _rows(queries), _rows(bank)
    if len(q) <= len(b):
        return np.stack([hamming(b, x) for x in q]) if len(q) else np.zeros((0, len(b)), np.int32)
    return np.stack([hamming(q, x) for x in b], axis=1) if len(b) else np.zeros((len(q), 0), np.int32)


def nearest_and_within(bank: Codes, queries: Codes, radius: int, chunk: int = 1 << 16) -> tuple[list[int], list[int]]:
    """Per query: the nearest distance in the bank and the number of codes within radius, by one full scan."""
    words = _rows(bank).view(np.uint64)
    q = _rows(queries).view(np.uint64)
    nearest = np.full(len(q), 256, np.int32)
    within = np.zeros(len(q), np.int64)
    for start in range(0, len(words), chunk):
        w = words[start : start + chunk]
        for b in range(0, len(q), 16):
            qb = q[b : b + 16]
            d = np.zeros((len(qb), len(w)), np.uint16)
            for k in range(words.shape[1]):
                d += np.bitwise_count(qb[:, k, None] ^ w[None, :, k])
            nearest[b : b + 16] = np.minimum(nearest[b : b + 16], d.min(axis=1))
            within[b : b + 16] += (d <= radius).sum(axis=1)
    return [int(v) for v in nearest], [int(v) for v in within]


def nearest_distances(bank: Codes, queries: Codes, chunk: int = 1 << 16) -> npt.NDArray[np.int32]:
    """Per query, the smallest distance to any code in the bank (256 for an empty bank)."""
    nearest, _ = nearest_and_within(bank, queries, 0, chunk)
    return np.asarray(nearest, dtype=np.int32)
