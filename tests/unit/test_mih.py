"""MultiIndexHashIndex must return exactly what the brute-force LinearIndex returns (radius and k-nearest search),
and LinearIndex exactly what a full distance table says."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import mih_plan
from pipelines.hamming import hamming
from pipelines.index import HammingIndex, LinearIndex
from pipelines.mih import MultiIndexHashIndex
from pipelines.mih_plan import SMALL_BANK_EXTRA_BYTES, flip_masks, n_masks, parts, thresholds

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = ("uniform", "duplicates", "clustered", "sparse")


def flip(codes: np.ndarray, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Copy of codes with low..high distinct random bits flipped per row."""
    bits = np.unpackbits(np.atleast_2d(codes).copy(), axis=1)
    for row in bits:
        k = int(rng.integers(low, high + 1))
        row[rng.choice(256, k, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def make_bank(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if n == 0:
        return np.empty((0, 32), np.uint8)
    if kind == "uniform":
        return rng.integers(0, 256, (n, 32), dtype=np.uint8)
    if kind == "duplicates":  # many identical codes: one bucket holds them all in every table
        pool = rng.integers(0, 256, (max(1, n // 8), 32), dtype=np.uint8)
        return pool[rng.integers(0, len(pool), n)]
    if kind == "clustered":
        centres = rng.integers(0, 256, (max(1, n // 40), 32), dtype=np.uint8)
        return flip(centres[rng.integers(0, len(centres), n)], 0, 12, rng)
    # sparse: mostly zero bits, so bucket sizes are badly skewed
    return np.packbits(rng.random((n, 256)) < 0.08, axis=1)


def make_queries(bank: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    out = [rng.integers(0, 256, (count, 32), dtype=np.uint8)]
    if len(bank):
        near = bank[rng.integers(0, len(bank), count)]
        out += [near[: count // 3], flip(near, 0, 40, rng), ~near[:1]]  # ~code: 256 bits away
    return np.concatenate(out)


def same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return (
        a[0].dtype == b[0].dtype == np.int64
        and a[1].dtype == b[1].dtype == np.int32
        and np.array_equal(a[0], b[0])
        and np.array_equal(a[1], b[1])
    )


index_options = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["mih", "mih", "auto"]),
        "tables": st.one_of(st.none(), st.integers(4, 16)),
        "prefix_bits": st.one_of(st.none(), st.integers(1, 10)),
    }
)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    n=st.integers(0, 400),
    options=index_options,
    radii=st.lists(st.integers(0, 64), min_size=1, max_size=3),
)
def test_matches_linear(seed: int, kind: str, n: int, options: dict, radii: list[int]) -> None:
    rng = np.random.default_rng(seed)
    bank = make_bank(kind, n, rng)
    ids = rng.integers(0, max(1, n // 2), n).astype(np.int64)  # duplicate ids too
    index: HammingIndex = MultiIndexHashIndex(bank, ids, **options)
    linear = LinearIndex(bank, ids)
    assert len(index) == n
    for q in make_queries(bank, 4, rng):
        for r in radii:
            assert same(index.search(q, r), linear.search(q, r)), (r, options)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    n=st.integers(0, 300),
    options=index_options,
    radius=st.integers(-2, 64) | st.sampled_from([128, 255, 256, 1000]),
)
def test_batch_equals_single(seed: int, kind: str, n: int, options: dict, radius: int) -> None:
    rng = np.random.default_rng(seed)
    bank = make_bank(kind, n, rng)
    index = MultiIndexHashIndex(bank, np.arange(n), **options)
    linear = LinearIndex(bank, np.arange(n))
    queries = make_queries(bank, 5, rng)
    batch = index.search_batch(queries, radius)
    assert len(batch) == len(queries)
    for q, got in zip(queries, batch, strict=True):
        assert same(got, index.search(q, radius))
        assert same(got, linear.search(q, radius))


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    n=st.integers(0, 300),
    options=index_options,
    delta_limit=st.sampled_from([None, 0, 3, 50]),
    steps=st.lists(st.tuples(st.sampled_from(["add", "remove", "compact"]), st.integers(0, 20)), max_size=6),
)
def test_updates_match_linear(
    seed: int, kind: str, n: int, options: dict, delta_limit: int | None, steps: list[tuple[str, int]]
) -> None:
    rng = np.random.default_rng(seed)
    codes = make_bank(kind, n, rng)
    ids = rng.integers(0, 2 * n + 10, n).astype(np.int64)
    index = MultiIndexHashIndex(codes, ids, delta_limit=delta_limit, **options)
    for op, k in steps:
        if op == "add":
            if len(codes) and k:
                new = flip(codes[rng.integers(0, len(codes), k)], 0, 20, rng)
            else:
                new = make_bank("uniform", k, rng)
            new_ids = rng.integers(0, 2 * n + 10, k).astype(np.int64)
            index.add(new, new_ids)
            codes, ids = np.concatenate([codes, new]), np.concatenate([ids, new_ids])
        elif op == "remove":
            gone = rng.integers(0, 2 * n + 10, k).astype(np.int64)
            keep = ~np.isin(ids, gone)
            assert index.remove(gone) == int((~keep).sum())
            codes, ids = codes[keep], ids[keep]
        else:
            index.compact()
        assert len(index) == len(ids)
        linear = LinearIndex(codes, ids)
        for q in make_queries(codes, 2, rng):
            r = int(rng.integers(0, 65))
            assert same(index.search(q, r), linear.search(q, r))
        batch = index.search_batch(make_queries(codes, 2, rng), 31)
        assert len(batch) == len(make_queries(codes, 2, rng))


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    n=st.integers(1, 300),
    linear_cost=st.floats(0.001, 4.0),
    radius=st.integers(0, 40),
)
def test_mixed_plans_match_linear(seed: int, kind: str, n: int, linear_cost: float, radius: int) -> None:
    """With costs skewed so that some queries of a batch are probed and others scanned."""
    rng = np.random.default_rng(seed)
    bank = make_bank(kind, n, rng)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in [("COST_PROBE", 0.0), ("COST_VERIFY", 0.0), ("COST_CALL", 0.0)]:
            mp.setattr(mih_plan, name, value)
        mp.setattr(mih_plan, "COST_ENTRY", 1.0)
        mp.setattr(mih_plan, "COST_LINEAR", linear_cost)
        index = MultiIndexHashIndex(bank, np.arange(n), tables=16, prefix_bits=8)
        queries = make_queries(bank, 6, rng)
        batch = index.search_batch(queries, radius)
    linear = LinearIndex(bank, np.arange(n))
    for q, got in zip(queries, batch, strict=True):
        assert same(got, linear.search(q, radius))


def reference_nearest(codes: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of every (distance, id), from one full distance table."""
    d = hamming(codes, query) if len(codes) else np.empty(0, np.int32)
    order = np.lexsort((ids, d))[:k]
    return ids[order].astype(np.int64), d[order].astype(np.int32)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    n=st.integers(0, 300),
    options=index_options,
    k=st.sampled_from([0, 1, 2, 5, 40, 1000]),
    removed=st.integers(0, 20),
    added=st.integers(0, 20),
)
def test_nearest_matches_a_full_table(
    seed: int, kind: str, n: int, options: dict, k: int, removed: int, added: int
) -> None:
    """k-nearest, ties broken by id (ids repeat), with dead main rows and a delta buffer in the MIH index."""
    rng = np.random.default_rng(seed)
    codes = make_bank(kind, n, rng)
    ids = rng.integers(0, max(1, n // 2), n).astype(np.int64)
    index: HammingIndex = MultiIndexHashIndex(codes, ids, delta_limit=10_000, **options)
    queries = make_queries(codes, 4, rng)
    if removed and n:
        gone = rng.integers(0, max(1, n // 2), removed).astype(np.int64)
        assert isinstance(index, MultiIndexHashIndex)
        index.remove(gone)
        keep = ~np.isin(ids, gone)
        codes, ids = codes[keep], ids[keep]
    if added:
        new = make_bank("uniform", added, rng)
        new_ids = rng.integers(0, n + 10, added).astype(np.int64)
        assert isinstance(index, MultiIndexHashIndex)
        index.add(new, new_ids)
        codes, ids = np.concatenate([codes, new]), np.concatenate([ids, new_ids])
    linear: HammingIndex = LinearIndex(codes, ids)
    for engine in (index, linear):
        batch = engine.nearest_batch(queries, k)
        assert len(batch) == len(queries)
        for q, got in zip(queries, batch, strict=True):
            want = reference_nearest(codes, ids, q, max(k, 0))
            assert same(got, want), (k, options)
            assert same(engine.nearest(q, k), want)


def test_nearest_scans_past_the_radii_and_blocks() -> None:
    """Queries far from every code (beyond NEAREST_RADII), a bank over one scan block, more queries than a block."""
    rng = np.random.default_rng(3)
    bank = rng.integers(0, 256, (40_000, 32), dtype=np.uint8)
    ids = np.arange(len(bank), dtype=np.int64)[::-1].copy()
    queries = np.concatenate([rng.integers(0, 256, (20, 32), dtype=np.uint8), flip(bank[:5], 1, 6, rng)])
    index = MultiIndexHashIndex(bank, ids)
    for q, got, lin in zip(queries, index.nearest_batch(queries, 3), LinearIndex(bank, ids).nearest_batch(queries, 3),
                           strict=True):
        want = reference_nearest(bank, ids, q, 3)
        assert same(got, want) and same(lin, want)


@pytest.mark.parametrize("m", [4, 7, 8, 11, 12, 16, 64])
def test_parts_partition_the_code(m: int) -> None:
    substrings = parts(m)
    covered = sorted(b for p in substrings for b in range(64 * p.word + p.shift, 64 * p.word + p.shift + p.width))
    assert covered == list(range(256))


@pytest.mark.parametrize("m", [4, 8, 11, 16])
@pytest.mark.parametrize("radius", [0, 1, 5, 10, 31, 52, 64, 256])
def test_thresholds_pigeonhole(m: int, radius: int) -> None:
    t = thresholds(radius, m)
    assert sum(t) >= radius - m + 1 and min(t) >= -1 and max(t) - min(t) <= 1


@pytest.mark.parametrize(("bits", "flips"), [(1, 0), (1, 3), (5, 2), (12, 3), (20, 2)])
def test_flip_masks(bits: int, flips: int) -> None:
    masks = flip_masks(bits, flips)
    want = {sum(1 << b for b in c) for k in range(min(flips, bits) + 1) for c in itertools.combinations(range(bits), k)}
    assert len(masks) == len(want) == n_masks(bits, flips)
    assert set(masks.tolist()) == want
    assert np.all(np.diff(np.bitwise_count(masks)) >= 0)  # fewer flips first: a prefix serves smaller t


@pytest.mark.parametrize("n", [200_000, 1_000_000])
def test_memory_within_twice_raw_or_raw_plus_16mb(n: int) -> None:
    rng = np.random.default_rng(0)
    bank = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    index = MultiIndexHashIndex(bank, np.arange(n))
    index.search(bank[0], 31)
    raw = n * (32 + 8)
    assert index.nbytes <= max(2 * raw, raw + SMALL_BANK_EXTRA_BYTES)
    if n >= 1_000_000:
        assert index.nbytes <= 2 * raw  # large banks: the ratio decides
    q = flip(bank[:20], 5, 30, rng)
    linear = LinearIndex(bank, np.arange(n))
    for query in q:
        assert same(index.search(query, 31), linear.search(query, 31))


@pytest.mark.parametrize("mode", ["mih", "linear"])
def test_complement_is_256_away(mode: str) -> None:
    """d = 256 must not wrap to 0 anywhere (the verifier sums byte counts modulo 256)."""
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, 32, dtype=np.uint8)
    bank = np.stack([~q, q, ~q])
    index = MultiIndexHashIndex(bank, np.arange(3), mode=mode, tables=4, prefix_bits=2)
    assert same(index.search(q, 31), (np.array([1]), np.array([0], np.int32)))
    assert same(index.search(q, 256), (np.array([1, 0, 2]), np.array([0, 256, 256], np.int32)))
    assert same(index.search_batch(np.stack([q, ~q]), 255)[1], (np.array([0, 2]), np.array([0, 0], np.int32)))


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        MultiIndexHashIndex(np.zeros((3, 31), np.uint8), np.arange(3))
    with pytest.raises(ValueError):
        MultiIndexHashIndex(np.zeros((3, 32), np.uint8), np.arange(2))
    index = MultiIndexHashIndex(np.zeros((3, 32), np.uint8), np.arange(3))
    with pytest.raises(ValueError):
        index.add(np.zeros((2, 32), np.uint8), np.arange(3))
    assert index.search(np.zeros(32, np.uint8), -1)[0].size == 0
    assert index.search_batch(np.zeros((0, 32), np.uint8), 10) == []
