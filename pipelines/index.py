"""The Hamming index protocol over 256-bit codes, and its brute-force implementation.

Every Hamming search in pipelines goes through a `HammingIndex`: `LinearIndex` (here: a full scan, the
reference every faster index is tested against, and the right choice for a few thousand codes) or
`MultiIndexHashIndex` (pipelines/mih.py: exact radius search in millions of codes). Both answer the same two
questions, for one query or a batch, with the same results:
  - radius search: every id within `radius` of the query;
  - k-nearest search: the k ids nearest to the query (fewer when the index holds fewer).
Results are (ids, distances), sorted by distance, then id.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipelines.hamming import Codes, Dists, Ids, as_codes, as_words, scan_nearest, scan_within

Result = tuple[Ids, Dists]


def empty_result() -> Result:
    return np.empty(0, np.int64), np.empty(0, np.int32)


def ordered(ids: Ids, dists: Dists, k: int | None = None) -> Result:
    """(ids, dists) sorted by distance, then id; the first k when k is given."""
    order = np.lexsort((ids, dists))[:k]
    return ids[order], dists[order]


class HammingIndex(Protocol):
    """Exact search over 256-bit codes, each with an int64 id (ids may repeat)."""

    def __len__(self) -> int: ...

    def search(self, query: Codes, radius: int) -> Result:
        """(ids, distances) of all codes within radius, sorted by distance then id."""
        ...

    def search_batch(self, queries: Codes, radius: int) -> list[Result]:
        """`search` for each row of queries (Q, 32)."""
        ...

    def nearest(self, query: Codes, k: int = 1) -> Result:
        """(ids, distances) of the k codes nearest to the query, sorted by distance then id."""
        ...

    def nearest_batch(self, queries: Codes, k: int = 1) -> list[Result]:
        """`nearest` for each row of queries (Q, 32)."""
        ...


class LinearIndex:
    """Brute-force scan. The reference every faster index is tested against; satisfies `HammingIndex`."""

    def __init__(self, codes: Codes, ids: Ids) -> None:
        codes = as_codes(codes)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(codes):
            raise ValueError("codes and ids differ in length")
        self._words = as_words(codes)  # a view: the codes stay alive through it
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query: Codes, radius: int) -> Result:
        return self.search_batch(query, radius)[0]

    def search_batch(self, queries: Codes, radius: int) -> list[Result]:
        q = as_words(as_codes(queries))
        out = []
        for query in q:
            rows, dist = scan_within(self._words, query, radius)
            out.append(ordered(self._ids[rows], dist))
        return out

    def nearest(self, query: Codes, k: int = 1) -> Result:
        return self.nearest_batch(query, k)[0]

    def nearest_batch(self, queries: Codes, k: int = 1) -> list[Result]:
        q = as_words(as_codes(queries))
        return [ordered(self._ids[rows], dist, k) for rows, dist in scan_nearest(self._words, q, k)]
