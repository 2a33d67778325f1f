"""Hamming-distance questions the benchmarks ask, answered with the analyses' public kernel
(`pipelines.hamming.hamming`: one query against every code, blocked and column-wise).

- `distances`: every query against every code of a small bank (a few hundred originals);
- `nearest_and_within`: per query, the nearest distance in a large bank and how many codes lie within a radius, from
  one scan (the image benchmark's direct check at 1M codes; the indexes of pipelines/index.py and pipelines/mih.py
  answer either question alone, this one pass answers both);
- `nearest_distances`: per query, the nearest distance in a bank.
Radius searches that need the ids use the indexes themselves (`pipelines.mih.MultiIndexHashIndex`, `LinearIndex`).
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


def nearest_and_within(bank: Codes, queries: Codes, radius: int) -> tuple[list[int], list[int]]:
    """Per query: the nearest distance in the bank (256 for an empty bank) and the number of codes within radius."""
    b = _rows(bank)
    nearest: list[int] = []
    within: list[int] = []
    for q in _rows(queries):
        d = hamming(b, q)
        nearest.append(int(d.min()) if len(d) else 256)
        within.append(int((d <= radius).sum()))
    return nearest, within


def nearest_distances(bank: Codes, queries: Codes) -> npt.NDArray[np.int32]:
    """Per query, the smallest distance to any code in the bank (256 for an empty bank)."""
    nearest, _ = nearest_and_within(bank, queries, 0)
    return np.asarray(nearest, dtype=np.int32)
