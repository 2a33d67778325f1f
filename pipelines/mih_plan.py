"""The layout and cost model of the multi-index hashing index (pipelines/mih.py): how the 256 bits are cut into
substrings, the per-table thresholds a radius needs (generalised pigeonhole), the flip masks probed, and the planner
costs that pick the number of tables and prefix bits under the memory cap, and a probe plan or a linear scan
per query. Pure functions of sizes: nothing here touches codes."""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
import numpy.typing as npt

from pipelines.hamming import CODE_BITS, CODE_BYTES

U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]

MAX_PREFIX_BITS = 24
MEMORY_CAP = 1.99  # index bytes / (raw codes + ids) the layout choice stays under ...
# ... or raw + this, whichever is more: a 100k bank then takes the 16-table layout (12.7 MB instead of 7.7 MB) and
# answers a sample's 11 probes in 0.4 ms instead of 2.2 ms. From ~420k codes up the ratio decides.
SMALL_BANK_EXTRA_BYTES = 16 << 20
# Planner costs in ns on one core (measured on a Xeon, 10M codes). Only ratios matter.
COST_PROBE = 35.0  # one bucket lookup: two random reads in an offset array, range expansion
COST_ENTRY = 35.0  # one bucket entry: packed-row read, random read of its code, distance
COST_VERIFY = 20.0  # one row within the substring threshold: dedupe, result handling
COST_CALL = 100_000.0  # fixed numpy call overhead of one probed chunk of queries
COST_LINEAR = 5.0  # one code of a linear scan
PACKED_MAX_ROWS = 1 << 24  # rows addressable by 3-byte permutations


@dataclass(frozen=True)
class Part:
    """Bits [64 * word + shift, ... + width) of a code, read from its little-endian uint64s."""

    word: int
    shift: int
    width: int

    @property
    def crosses(self) -> bool:
        return self.shift + self.width > 64

    @property
    def next_word(self) -> int:
        return min(self.word + 1, CODE_BYTES // 8 - 1)

    def extract(self, c64: U64) -> U64:
        """Substring values of every row of (N, 4) uint64 codes."""
        v = c64[:, self.word] >> np.uint64(self.shift)
        if self.crosses:
            v |= c64[:, self.word + 1] << np.uint64(64 - self.shift)
        return v & np.uint64((1 << self.width) - 1)


def parts(m: int) -> list[Part]:
    """m contiguous substrings, widths differing by at most one bit."""
    out, start = [], 0
    for j in range(m):
        width = CODE_BITS // m + (1 if j < CODE_BITS % m else 0)
        out.append(Part(start // 64, start % 64, width))
        start += width
    return out


def thresholds(radius: int, m: int) -> list[int]:
    """Per-table thresholds summing to radius - m + 1 (generalised pigeonhole), spread evenly."""
    need = radius - (m - 1)
    return [(need + j) // m for j in range(m)]


def n_masks(bits: int, flips: int) -> int:
    """How many `bits`-bit masks have at most `flips` set bits."""
    return sum(comb(bits, k) for k in range(min(flips, bits) + 1))


def flip_masks(bits: int, max_flips: int) -> U32:
    """All `bits`-bit masks with at most max_flips set bits, ordered by popcount.

    Built level by level (k bits = k-1 bits plus a higher one): cost follows the output size.
    """
    levels = [np.zeros(1, np.uint32)]
    top = np.full(1, -1, np.int64)  # highest set bit of each mask of the previous level
    for _ in range(min(max_flips, bits)):
        prev = levels[-1]
        parts, tops = [], []
        for b in range(bits):
            sel = top < b
            parts.append(prev[sel] | np.uint32(1 << b))
            tops.append(np.full(int(sel.sum()), b, np.int64))
        levels.append(np.concatenate(parts))
        top = np.concatenate(tops)
    return np.concatenate(levels)


def estimate(n: int, m: int, p: int, radius: int) -> float:
    """Planner cost (ns) of one query on a uniform bank with m tables and p-bit prefixes."""
    cost = 0.0
    for part, t in zip(parts(m), thresholds(radius, m), strict=True):
        if t >= 0:
            cost += n_masks(p, t) * (COST_PROBE + COST_ENTRY * n / 2**p)
            cost += COST_VERIFY * n * n_masks(part.width, t) / 2**part.width
    return cost


def choose_layout(n: int) -> tuple[int, int]:
    """(tables, prefix bits) cheapest at radius 31 whose memory stays under the cap (MEMORY_CAP x raw, or raw +
    SMALL_BANK_EXTRA_BYTES for small banks)."""
    perm_bytes = 3 if n <= PACKED_MAX_ROWS else 4
    cap_per_code = max(40 * MEMORY_CAP, 40 + SMALL_BANK_EXTRA_BYTES / max(n, 1))
    best: tuple[float, int, int] = (float("inf"), 8, 1)
    for m in range(8, 17):
        for p in range(1, min(MAX_PREFIX_BITS, CODE_BITS // m) + 1):
            per_code = 40 + (m - 1) * perm_bytes + m * 4 * (2**p + 1) / max(n, 1)
            if p > 1 and n >= 256 and per_code > cap_per_code:
                break
            cost = estimate(n, m, p, 31)
            if cost < best[0]:
                best = (cost, m, p)
    return best[1], best[2]
