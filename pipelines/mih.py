"""Exact Hamming radius and k-nearest search over 256-bit codes by multi-index hashing (MIH).

Layout. The 256 bits are cut into m disjoint contiguous substrings (m = 11-12 at 1M-10M codes,
chosen by a cost model under a memory cap: 2x raw, or raw + 16 MB for small banks; pipelines/mih_plan.py). Table j
indexes substring j by its top p bits (p ~ log2(N) - 2) in CSR form: `dirs[j]` holds 2**p + 1
bucket offsets and the permutation of the main-array rows in bucket order, packed in 3 bytes
(uint16 + uint8) while N <= 2**24. The main arrays are sorted by table 0's key, so table 0 needs
no permutation. Per code that is 32 (code) + 8 (id) + 3 (m - 1) bytes plus the offsets: for large
banks the layout keeps the total under 2x raw.

Search. By the generalised pigeonhole principle, if d(q, x) <= r and the thresholds t_j sum to
at least r - m + 1, then some substring j has d_j <= t_j (t_j = -1: skip table j). For each
table we enumerate the keys within t_j flips of the query's prefix (precomputed masks,
vectorised over queries and tables), expand the bucket ranges into rows with one gather for
all tables, and verify every row on all 256 bits: a row costs one random cache line either
way, so a separate substring filter would only add numpy passes. Rows found by several tables
are deduplicated after verification, when few are left. The radius is per call; a large one
means many probes, and the cost model (checked again against the real bucket sizes, which
matter for clustered banks) then falls back to a linear scan.

Nearest. `nearest(query, k)` runs radius searches at growing radii (NEAREST_RADII) while the planner
puts them below a linear scan; once k entries lie within one, they are the k nearest. The queries
left are answered by one scan (pipelines/hamming.py: `scan_nearest`).

Updates. `add` appends to a delta buffer that queries scan linearly; `remove` marks main rows
dead (a sorted row list) and drops delta rows. Past a size threshold both are merged by
`compact()`, a full rebuild (about a second per million codes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from pipelines import mih_plan
from pipelines.hamming import (
    CODE_BITS,
    CODE_BYTES,
    Codes,
    Dists,
    Ids,
    Words,
    as_codes,
    as_words,
    scan_nearest,
    scan_within,
)
from pipelines.index import Result, empty_result, ordered

U32 = npt.NDArray[np.uint32]
U64 = Words
I64 = npt.NDArray[np.int64]
Mode = Literal["auto", "mih", "linear"]

QUERY_CHUNK = 32  # most queries probed together
CHUNK_ITEMS = 1 << 17  # probes + bucket entries per chunk: keeps temporaries within L2 (few MB)
NEAREST_RADII = (0, 8, 16, 24, 32)  # radius searches a k-nearest search tries before it scans


def _order_by(keys: U64) -> U64:
    """Rows sorted by key, rows ascending within a key.

    Sorting (key << row_bits | row) values is ~4x faster than argsort (vectorised sort) and
    leaves each bucket in row order, which helps the cache when a bucket is read.
    """
    row_bits = max(1, (len(keys) - 1).bit_length())
    packed = (keys << np.uint64(row_bits)) | np.arange(len(keys), dtype=np.uint64)
    packed.sort()
    packed &= np.uint64((1 << row_bits) - 1)
    return packed


def _split_rows(perm: U64) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint8]]:
    """Row numbers < 2**24 as low 16 bits + high 8 bits: 3 bytes a row, both arrays aligned
    (a strided 3-byte view is as small, but numpy's unaligned gather cannot overlap misses)."""
    return (perm & np.uint64(0xFFFF)).astype(np.uint16), (perm >> np.uint64(16)).astype(np.uint8)


def _expand(starts: npt.NDArray[np.integer], lens: U32) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Positions covered by the (Q, P) ranges [starts, starts + lens), query by query, and how
    many belong to each query."""
    flat = lens.reshape(-1)
    ends = np.cumsum(flat, dtype=np.intp)
    total = int(ends[-1]) if len(ends) else 0
    pos = np.repeat(starts.reshape(-1) - (ends - flat), flat)
    pos += np.arange(total, dtype=np.intp)
    return pos, lens.sum(axis=1, dtype=np.intp)


@dataclass(frozen=True)
class _Plan:
    """How to probe for one radius: tables grouped by threshold, planner costs."""

    groups: list[tuple[int, npt.NDArray[np.intp], U32]]  # (t, tables, flip masks)
    work: float  # planner ns per query, excluding the fixed call overhead
    items: float  # probes + bucket entries per query expected on a uniform bank
    probes: int  # bucket lookups per query


class MultiIndexHashIndex:
    """Exact radius search over 256-bit codes; same results as `LinearIndex`, much faster.

    Satisfies the `HammingIndex` protocol (pipelines/index.py). Not safe for concurrent updates and searches.
    `tables`, `prefix_bits` and `mode` ("mih" or "linear" forces one plan, "auto" picks the
    cheaper per query) override the planner; tests use them to reach every path on small banks.
    """

    def __init__(
        self,
        codes: Codes,
        ids: Ids,
        *,
        tables: int | None = None,
        prefix_bits: int | None = None,
        delta_limit: int | None = None,
        mode: Mode = "auto",
    ) -> None:
        codes = as_codes(codes)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(codes):
            raise ValueError("codes and ids differ in length")
        if tables is not None and not 4 <= tables <= 64:
            raise ValueError("tables must be in 4..64 (a substring must fit in 64 bits)")
        if prefix_bits is not None and not 1 <= prefix_bits <= mih_plan.MAX_PREFIX_BITS:
            raise ValueError(f"prefix_bits must be in 1..{mih_plan.MAX_PREFIX_BITS}")
        if mode not in ("auto", "mih", "linear"):
            raise ValueError("mode must be auto, mih or linear")
        self._fixed = (tables, prefix_bits)
        self._fixed_delta_limit = delta_limit
        self._mode: Mode = mode
        self._build(codes, ids)

    # ------------------------------------------------------------------ build / update

    def _build(self, codes: Codes, ids: I64) -> None:
        n = len(codes)
        if n >= 2**32 - 1:
            raise ValueError("at most 2**32 - 2 codes")
        m, p = mih_plan.choose_layout(n)
        m = self._fixed[0] or m
        parts = mih_plan.parts(m)
        p = min(self._fixed[1] or p, min(part.width for part in parts))
        self._m, self._p, self.parts = m, p, parts
        self._plans: dict[int, _Plan] = {}
        self._masks: U32 = np.zeros(1, np.uint32)  # flip masks for the largest threshold so far
        self._mask_flips = 0
        # Per-part constants, vectorised over tables for the queries' keys.
        self._p_word = np.array([q.word for q in parts], np.intp)
        self._p_next = np.array([q.next_word for q in parts], np.intp)
        self._p_shift = np.array([q.shift for q in parts], np.uint64)
        self._p_shift_hi = np.array([(64 - q.shift) % 64 for q in parts], np.uint64)
        self._p_cross = np.array([2**64 - 1 if q.crosses else 0 for q in parts], np.uint64)
        self._p_mask = np.array([(1 << q.width) - 1 for q in parts], np.uint64)
        self._p_keyshift = np.array([q.width - p for q in parts], np.uint64)
        self._stride = (1 << p) + 1

        def keys_of(c64: U64, part: mih_plan.Part) -> U64:
            return part.extract(c64) >> np.uint64(part.width - p)

        order = _order_by(keys_of(as_words(codes), parts[0]))
        self._codes: Codes = np.ascontiguousarray(codes[order])
        self._ids: I64 = np.ascontiguousarray(ids[order])
        del order
        self._c64: U64 = as_words(self._codes)  # (N, 4) view on little-endian hosts
        # dirs[j, k]: first position of bucket k of table j; all tables in one array so that
        # one gather serves every table of a threshold group.
        self._dirs: U32 = np.zeros((m, self._stride), np.uint32)
        # Rows in bucket order of tables 1..m-1, back to back (table j at (j - 1) * N) so that
        # one gather serves every table: low 16 bits + high 8 bits while N <= 2**24, else
        # uint32 rows and no high part. Table 0 is the main order itself.
        packed = n <= mih_plan.PACKED_MAX_ROWS
        self._perm_lo: npt.NDArray[np.unsignedinteger] = np.empty((m - 1) * n, np.uint16 if packed else np.uint32)
        self._perm_hi: npt.NDArray[np.uint8] | None = np.empty((m - 1) * n, np.uint8) if packed else None
        for j, part in enumerate(parts):
            keys = keys_of(self._c64, part)
            np.cumsum(np.bincount(keys, minlength=1 << p), out=self._dirs[j, 1:])
            if j:
                perm = _order_by(keys)
                span = slice((j - 1) * n, j * n)
                if self._perm_hi is None:
                    self._perm_lo[span] = perm
                else:
                    self._perm_lo[span], self._perm_hi[span] = _split_rows(perm)
        self._dirs_flat = self._dirs.reshape(-1)
        self._dead: I64 = np.empty(0, np.int64)  # sorted main rows removed since the build
        self._dcodes: Codes = np.empty((0, CODE_BYTES), np.uint8)
        self._dids: I64 = np.empty(0, np.int64)
        lim = self._fixed_delta_limit
        self._delta_limit = lim if lim is not None else max(1024, min(65536, n // 16))

    def __len__(self) -> int:
        return len(self._ids) - len(self._dead) + len(self._dids)

    @property
    def layout(self) -> tuple[int, int]:
        """(number of tables, prefix bits per table) of the current build."""
        return self._m, self._p

    @property
    def nbytes(self) -> int:
        """Bytes held by the index: codes, ids, tables, delta buffer, tombstones, probe masks."""
        arrays: list[npt.NDArray[np.generic]] = [self._codes, self._ids, self._dirs, self._masks]
        arrays += [self._dead, self._dcodes, self._dids, self._perm_lo]
        arrays += [] if self._perm_hi is None else [self._perm_hi]
        return int(sum(a.nbytes for a in arrays))

    def add(self, codes: Codes, ids: Ids) -> None:
        """Append entries; searchable at once, merged into the tables once the delta is large."""
        codes = as_codes(codes)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(codes):
            raise ValueError("codes and ids differ in length")
        self._dcodes = np.concatenate([self._dcodes, codes])
        self._dids = np.concatenate([self._dids, ids])
        if len(self._dids) > self._delta_limit:
            self.compact()

    def remove(self, ids: Ids) -> int:
        """Remove every entry whose id is in `ids`; returns how many entries went."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids) == 0:
            return 0
        rows = np.flatnonzero(np.isin(self._ids, ids)).astype(np.int64)
        before = len(self._dead)
        self._dead = np.union1d(self._dead, rows)
        gone = len(self._dead) - before
        keep = ~np.isin(self._dids, ids)
        gone += int(len(keep) - keep.sum())
        self._dcodes = self._dcodes[keep]
        self._dids = self._dids[keep]
        if len(self._dead) > max(self._delta_limit, len(self._ids) // 4):
            self.compact()
        return gone

    def compact(self) -> None:
        """Rebuild the tables from the live main entries plus the delta buffer."""
        alive = np.ones(len(self._ids), bool)
        alive[self._dead] = False
        codes = np.concatenate([self._codes[alive], self._dcodes])
        ids = np.concatenate([self._ids[alive], self._dids])
        self._build(codes, ids)

    # ------------------------------------------------------------------ search

    def search(self, query: Codes, radius: int) -> Result:
        """(ids, distances) of all entries within radius, sorted by distance then id."""
        return self.search_batch(np.asarray(query, np.uint8).reshape(1, CODE_BYTES), radius)[0]

    def search_batch(self, queries: Codes, radius: int) -> list[Result]:
        """`search` for each row of queries (Q, 32); probing is vectorised across queries."""
        queries = as_codes(queries)
        nq = len(queries)
        if radius < 0 or nq == 0 or len(self) == 0:
            return [empty_result() for _ in range(nq)]
        radius = min(int(radius), CODE_BITS)
        q64 = as_words(queries)
        # Large radii mean many probes per query: fewer queries a chunk keep temporaries bounded.
        step = int(np.clip(CHUNK_ITEMS // max(1.0, self._plan(radius).items), 1, QUERY_CHUNK))
        hits: list[tuple[I64, I64, Dists]] = []  # (query, row, distance); row < 0: ~delta row
        for lo in range(0, nq, step):
            chunk = q64[lo : lo + step]
            for qi, rows, dist in self._search_main(chunk, radius):
                hits.append((qi + lo, rows, dist))
            if len(self._dids):
                d64 = as_words(self._dcodes)
                for k in range(len(chunk)):
                    rows, dist = scan_within(d64, chunk[k], radius)
                    hits.append((np.full(len(rows), lo + k, np.int64), ~rows, dist))
        qi = np.concatenate([h[0] for h in hits]) if hits else np.empty(0, np.int64)
        rows = np.concatenate([h[1] for h in hits]) if hits else np.empty(0, np.int64)
        dist = np.concatenate([h[2] for h in hits]) if hits else np.empty(0, np.int32)
        if len(self._dead):
            pos = np.minimum(np.searchsorted(self._dead, rows), len(self._dead) - 1)
            keep = self._dead[pos] != rows
            qi, rows, dist = qi[keep], rows[keep], dist[keep]
        if len(self._dids):
            ids = np.empty(len(rows), np.int64)
            in_main = rows >= 0
            ids[in_main] = self._ids[rows[in_main]]
            ids[~in_main] = self._dids[~rows[~in_main]]
        else:
            ids = self._ids[rows]
        if nq == 1:
            return [ordered(ids, dist)]
        order = np.lexsort((ids, dist, qi))
        qi, ids, dist = qi[order], ids[order], dist[order]
        bounds = np.searchsorted(qi, np.arange(nq + 1))
        return [(ids[a:b], dist[a:b]) for a, b in itertools.pairwise(bounds.tolist())]

    def nearest(self, query: Codes, k: int = 1) -> Result:
        """(ids, distances) of the k entries nearest to the query, sorted by distance then id."""
        return self.nearest_batch(np.asarray(query, np.uint8).reshape(1, CODE_BYTES), k)[0]

    def nearest_batch(self, queries: Codes, k: int = 1) -> list[Result]:
        """`nearest` for each row of queries: radius searches at growing radii while they cost less than a scan
        (NEAREST_RADII); a query with k entries within one has its answer (none outside lies nearer), the
        others are answered by one scan of the live entries."""
        queries = as_codes(queries)
        out: list[Result] = [empty_result() for _ in range(len(queries))]
        if k <= 0 or len(self) == 0:
            return out
        k = min(k, len(self))
        todo = np.arange(len(queries))
        for radius in NEAREST_RADII:
            if len(todo) == 0 or self._plan(radius).work > mih_plan.COST_LINEAR * len(self._ids):
                break
            left = []
            for i, (ids, dist) in zip(todo.tolist(), self.search_batch(queries[todo], radius), strict=True):
                if len(ids) >= k:
                    out[i] = (ids[:k], dist[:k])
                else:
                    left.append(i)
            todo = np.array(left, np.intp)
        if len(todo):
            ids, words = self._live()
            for i, (rows, dist) in zip(todo.tolist(), scan_nearest(words, as_words(queries[todo]), k), strict=True):
                out[i] = ordered(ids[rows], dist, k)
        return out

    def _live(self) -> tuple[I64, U64]:
        """Ids and words of every live entry: the main arrays, or a copy without dead rows plus the delta."""
        if not len(self._dead) and not len(self._dids):
            return self._ids, self._c64
        alive = np.ones(len(self._ids), bool)
        alive[self._dead] = False
        codes = np.concatenate([self._codes[alive], self._dcodes])
        return np.concatenate([self._ids[alive], self._dids]), as_words(codes)

    def _plan(self, radius: int) -> _Plan:
        plan = self._plans.get(radius)
        if plan is None:
            thresholds = mih_plan.thresholds(radius, self._m)
            top = min(max(thresholds), self._p)
            if top > self._mask_flips or len(self._masks) == 1:
                self._masks = mih_plan.flip_masks(self._p, max(top, self._mask_flips))
                self._mask_flips = max(top, self._mask_flips)
            groups = []
            for t in sorted({t for t in thresholds if t >= 0}):
                tables = np.array([j for j, tj in enumerate(thresholds) if tj == t], np.intp)
                groups.append((t, tables, self._masks[: mih_plan.n_masks(self._p, t)]))
            n = len(self._ids)
            work = mih_plan.estimate(n, self._m, self._p, radius)
            probes = sum(len(masks) * len(tables) for _, tables, masks in groups)
            items = probes * (1 + n / 2**self._p)
            plan = self._plans[radius] = _Plan(groups, work, items, probes)
        return plan

    def _search_main(self, q64: U64, radius: int) -> list[tuple[I64, I64, Dists]]:
        """Hits in the main arrays as (query index, row, distance) triples, unordered, unique."""
        n = len(self._ids)
        nq = len(q64)
        if n == 0:
            return []
        plan = self._plan(radius)
        lin_cost = mih_plan.COST_LINEAR * n
        if self._mode == "linear" or (self._mode == "auto" and plan.work + mih_plan.COST_CALL / nq > lin_cost):
            return self._scan_main(q64, np.arange(nq), radius)

        # Phase 1: bucket ranges of every probe of every table, one gather per threshold group.
        lo = q64[:, self._p_word]  # (Q, m)
        hi = q64[:, self._p_next]
        sub = ((lo >> self._p_shift) | ((hi << self._p_shift_hi) & self._p_cross)) & self._p_mask
        keys = (sub >> self._p_keyshift).astype(np.uint32)
        starts_0 = lens_0 = None  # table 0: positions are rows
        starts_p, lens_p = [], []  # other tables: positions into the permutations
        offsets = []
        for _, tables, masks in plan.groups:
            flat = keys[:, tables, None] ^ masks  # (Q, g, P)
            flat += (tables * self._stride).astype(np.uint32)[None, :, None]
            starts = self._dirs_flat[flat]
            lens = self._dirs_flat[flat + np.uint32(1)] - starts
            if tables[0] == 0:
                starts_0, lens_0 = starts[:, 0], lens[:, 0]
                tables, starts, lens = tables[1:], starts[:, 1:], lens[:, 1:]
            starts_p.append(starts.reshape(nq, -1))
            lens_p.append(lens.reshape(nq, -1))
            offsets.append(np.repeat((tables - 1) * n, len(masks)))
        starts_all = np.concatenate(starts_p, axis=1).astype(np.intp) + np.concatenate(offsets)
        lens_all = np.concatenate(lens_p, axis=1)
        entries = lens_all.sum(axis=1, dtype=np.intp)
        if lens_0 is not None:
            entries += lens_0.sum(axis=1, dtype=np.intp)
        # Clustered banks can have huge buckets: such queries are cheaper to scan linearly.
        heavy = np.zeros(nq, bool)
        if self._mode == "auto":
            heavy = entries * mih_plan.COST_ENTRY + plan.probes * mih_plan.COST_PROBE > lin_cost
        out = self._scan_main(q64, np.flatnonzero(heavy), radius) if heavy.any() else []
        light = np.flatnonzero(~heavy)
        if len(light) == 0:
            return out
        if len(light) < nq:
            starts_all, lens_all = starts_all[light], lens_all[light]
            if starts_0 is not None and lens_0 is not None:
                starts_0, lens_0 = starts_0[light], lens_0[light]

        # Phase 2: expand the ranges into rows (one pass for all tables but table 0). Rows come
        # grouped by query: group k spans bounds[k]:bounds[k + 1] and belongs to owner[k].
        pos, per_query = _expand(starts_all, lens_all)
        rows = self._perm_lo[pos].astype(np.intp)
        if self._perm_hi is not None:
            rows |= self._perm_hi[pos].astype(np.intp) << 16
        counts, owner = per_query, light
        if starts_0 is not None and lens_0 is not None:
            rows_0, per_query_0 = _expand(starts_0, lens_0)
            rows = np.concatenate([rows_0, rows])
            counts, owner = np.concatenate([per_query_0, per_query]), np.concatenate([light, light])
        bounds = np.zeros(len(counts) + 1, np.intp)
        np.cumsum(counts, out=bounds[1:])

        # Phase 3: verify on all 256 bits (one cache line per row, the same line a substring
        # filter would have read), then drop rows found by more than one table.
        full = np.take(self._c64, rows, axis=0)
        if len(light) == 1:
            full ^= q64[light[0]]
        else:  # a slice per query: cheaper than gathering the query for every row
            for k, (a, b) in enumerate(itertools.pairwise(bounds.tolist())):
                full[a:b] ^= q64[owner[k]]
        pc = np.bitwise_count(full)  # (E, 4) uint8
        # Sum the 4 byte counts with one multiply; d = 256 wraps to 0, so recheck survivors.
        approx = pc.view(np.uint32).reshape(-1) * np.uint32(0x01010101)  # a copy: pc stays
        approx >>= np.uint32(24)
        ok = np.flatnonzero(approx <= radius)
        dist = pc[ok].sum(axis=1, dtype=np.int32)
        ok, dist = ok[dist <= radius], dist[dist <= radius]
        qi = owner[np.searchsorted(bounds, ok, side="right") - 1].astype(np.int64)
        rows = rows[ok].astype(np.int64)
        _, first = np.unique(qi * n + rows, return_index=True)
        out.append((qi[first], rows[first], dist[first]))
        return out

    def _scan_main(self, q64: U64, which: npt.NDArray[np.intp], radius: int) -> list[tuple[I64, I64, Dists]]:
        out = []
        for k in which:
            rows, dist = scan_within(self._c64, q64[k], radius)
            out.append((np.full(len(rows), k, np.int64), rows, dist))
        return out
