"""Hamming-distance search over fixed-length binary codes (PDQ and pHash are 256 bits)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

CODE_BYTES = 32  # 256-bit codes

Codes = npt.NDArray[np.uint8]  # shape (N, CODE_BYTES), bytes in the order of the hex string
Ids = npt.NDArray[np.int64]


def hex_to_code(hex_str: str) -> Codes:
    """One hex hash -> a (CODE_BYTES,) uint8 array; raises ValueError on bad input."""
    raw = bytes.fromhex(hex_str)
    if len(raw) != CODE_BYTES:
        raise ValueError(f"expected {CODE_BYTES * 2} hex digits, got {len(hex_str)}")
    return np.frombuffer(raw, dtype=np.uint8).copy()


def code_to_hex(code: Codes) -> str:
    return bytes(np.asarray(code, dtype=np.uint8)).hex()


def hamming(codes: Codes, query: Codes) -> npt.NDArray[np.int32]:
    """Distance of one query to every row of codes."""
    a = np.ascontiguousarray(codes).view(np.uint64)
    q = np.ascontiguousarray(query).reshape(1, -1).view(np.uint64)
    out: npt.NDArray[np.int32] = np.bitwise_count(a ^ q).sum(axis=1, dtype=np.int32)
    return out


class HammingIndex(Protocol):
    """Exact radius search: every id whose code lies within `radius` of the query."""

    def __len__(self) -> int: ...

    def search(self, query: Codes, radius: int) -> tuple[Ids, npt.NDArray[np.int32]]:
        """(ids, distances) of all codes within radius, sorted by distance then id."""
        ...


class LinearIndex:
    """Brute-force scan. The reference every faster index is tested against."""

    def __init__(self, codes: Codes, ids: Ids) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, CODE_BYTES)
        if len(ids) != len(codes):
            raise ValueError("codes and ids differ in length")
        self._codes = codes
        self._ids = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query: Codes, radius: int) -> tuple[Ids, npt.NDArray[np.int32]]:
        if len(self._ids) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        dist = hamming(self._codes, query)
        hit = np.flatnonzero(dist <= radius)
        order = np.lexsort((self._ids[hit], dist[hit]))
        hit = hit[order]
        return self._ids[hit], dist[hit]
