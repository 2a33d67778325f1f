"""256-bit binary codes (PDQ and pHash) and the Hamming-distance kernels every search in pipelines runs on.

The indexes (pipelines/index.py: the protocol and the brute-force `LinearIndex`; pipelines/mih.py: multi-index
hashing) compute distances only through this module, except the MIH verifier's fused gather-and-count, which
is its own fast path. Codes are (N, CODE_BYTES) uint8 rows in the byte order of the hex string; the kernels read
them as (N, CODE_WORDS) little-endian uint64 words and add the popcounts column by column in uint16 over blocks
of rows, which keeps the temporaries in L2 and is about 3x faster than summing (N, 4) counts along a row.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

CODE_BYTES = 32  # 256-bit codes
CODE_BITS = 8 * CODE_BYTES
CODE_WORDS = CODE_BYTES // 8

Codes = npt.NDArray[np.uint8]  # shape (N, CODE_BYTES), bytes in the order of the hex string
Ids = npt.NDArray[np.int64]
Dists = npt.NDArray[np.int32]
Rows = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]  # shape (N, CODE_WORDS): codes read as little-endian 64-bit words

SCAN_ROWS = 1 << 14  # rows per block of a scan: (block x uint16) temporaries stay within L2
NEAREST_QUERIES = 16  # queries per block of a nearest scan: a (16, SCAN_ROWS) uint16 block is 512 KiB


def hex_to_code(hex_str: str) -> Codes:
    """One hex hash -> a (CODE_BYTES,) uint8 array; raises ValueError on bad input."""
    raw = bytes.fromhex(hex_str)
    if len(raw) != CODE_BYTES:
        raise ValueError(f"expected {CODE_BYTES * 2} hex digits, got {len(hex_str)}")
    return np.frombuffer(raw, dtype=np.uint8).copy()


def code_to_hex(code: Codes) -> str:
    return bytes(np.asarray(code, dtype=np.uint8)).hex()


def as_codes(codes: Codes) -> Codes:
    """Contiguous (N, CODE_BYTES) uint8 rows: one (CODE_BYTES,) code becomes one row; ValueError on other shapes."""
    arr = np.ascontiguousarray(codes, dtype=np.uint8)
    if arr.ndim == 1 and arr.size == CODE_BYTES:
        return arr.reshape(1, CODE_BYTES)
    if arr.size == 0:
        return np.empty((0, CODE_BYTES), np.uint8)
    if arr.ndim != 2 or arr.shape[1] != CODE_BYTES:
        raise ValueError(f"codes must have shape (N, {CODE_BYTES}), got {arr.shape}")
    return arr


def as_words(codes: Codes) -> Words:
    """(N, CODE_WORDS) little-endian uint64 words of contiguous (N, CODE_BYTES) codes (a view on little-endian)."""
    return codes.view(np.dtype("<u8")).astype(np.uint64, copy=False)


def _block_distances(block: Words, query: Words) -> npt.NDArray[np.uint16]:
    """Distances of one (CODE_WORDS,) query to every row of a block of words, in uint16 (<= 256)."""
    d: npt.NDArray[np.uint16] = np.bitwise_count(block[:, 0] ^ query[0]).astype(np.uint16)
    for j in range(1, CODE_WORDS):
        d += np.bitwise_count(block[:, j] ^ query[j])
    return d


def hamming(codes: Codes, query: Codes) -> Dists:
    """Distance of one query to every row of codes."""
    words = as_words(as_codes(codes))
    q = as_words(as_codes(query))[0]
    out = np.empty(len(words), np.int32)
    for lo in range(0, len(words), SCAN_ROWS):
        out[lo : lo + SCAN_ROWS] = _block_distances(words[lo : lo + SCAN_ROWS], q)
    return out


def scan_within(words: Words, query: Words, radius: int) -> tuple[Rows, Dists]:
    """Rows of (N, CODE_WORDS) words within radius of one (CODE_WORDS,) query, ascending, with their distances."""
    rows_out, dist_out = [], []
    for lo in range(0, len(words), SCAN_ROWS):
        d = _block_distances(words[lo : lo + SCAN_ROWS], query)
        hit = np.flatnonzero(d <= radius)
        if len(hit):
            rows_out.append(hit + lo)
            dist_out.append(d[hit].astype(np.int32))
    if not rows_out:
        return np.empty(0, np.int64), np.empty(0, np.int32)
    return np.concatenate(rows_out).astype(np.int64), np.concatenate(dist_out)


def scan_nearest(words: Words, queries: Words, k: int) -> list[tuple[Rows, Dists]]:
    """Per query: every row at or below the distance of its k-th nearest row (ties at that distance included, so
    that the caller can break them by id), unordered, with the distances. One pass over the rows per block of
    NEAREST_QUERIES queries; a query's bound tightens as blocks go by and candidates above it are dropped."""
    nq, n = len(queries), len(words)
    if k <= 0 or n == 0:
        return [(np.empty(0, np.int64), np.empty(0, np.int32)) for _ in range(nq)]
    k = min(k, n)
    out: list[tuple[Rows, Dists]] = []
    for qlo in range(0, nq, NEAREST_QUERIES):
        qb = queries[qlo : qlo + NEAREST_QUERIES]
        best = np.full((len(qb), k), CODE_BITS + 1, np.uint16)  # the k smallest distances so far
        found: list[list[tuple[Rows, npt.NDArray[np.uint16]]]] = [[] for _ in qb]
        for lo in range(0, n, SCAN_ROWS):
            blk = words[lo : lo + SCAN_ROWS]
            d = np.bitwise_count(qb[:, 0, None] ^ blk[None, :, 0]).astype(np.uint16)
            for j in range(1, CODE_WORDS):
                d += np.bitwise_count(qb[:, j, None] ^ blk[None, :, j])
            take = min(k, d.shape[1])
            small = np.partition(d, take - 1, axis=1)[:, :take]
            best = np.partition(np.concatenate([best, small], axis=1), k - 1, axis=1)[:, :k]
            bound = best.max(axis=1)
            qi, rows = np.nonzero(d <= bound[:, None])
            for i in np.unique(qi).tolist():
                sel = rows[qi == i]
                found[i].append((sel.astype(np.int64) + lo, d[i, sel]))
        bound = best.max(axis=1)
        for i, parts in enumerate(found):
            rows = np.concatenate([r for r, _ in parts])
            dist = np.concatenate([x for _, x in parts])
            keep = dist <= bound[i]
            out.append((rows[keep], dist[keep].astype(np.int32)))
    return out
