"""Banks change under load: overlays equal a fresh build, and a concurrent reader never sees a mix."""

from __future__ import annotations

import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.banks import Bank, Entry
from pipelines.index import LinearIndex
from pipelines.known_content import KnownContentMatcher


def random_bank(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[Entry]]:
    centres = rng.integers(0, 256, (8, 32), dtype=np.uint8)
    codes = centres[rng.integers(0, 8, n)].copy()
    flips = rng.integers(0, 2, (n, 256), dtype=np.uint8) & (rng.random((n, 256)) < 0.06)
    codes ^= np.packbits(flips, axis=1)
    return codes, [Entry(str(i), f"l{i}") for i in range(n)]


def reference(codes: np.ndarray, entries: list[Entry], probe: np.ndarray, radius: int) -> list[tuple[str, int]]:
    ids, dists = LinearIndex(codes, np.arange(len(codes))).search(probe, radius)
    return sorted((entries[int(i)].entry_id, int(d)) for i, d in zip(ids, dists, strict=True))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.integers(0, 40), st.integers(0, 40), st.integers(0, 64))
def test_overlay_update_answers_like_a_fresh_build(seed: int, n: int, n_del: int, n_add: int, radius: int) -> None:
    rng = np.random.default_rng(seed)
    codes, entries = random_bank(rng, n)
    bank = Bank("b", "pdq", codes, entries, threshold=radius)
    keep = sorted(set(range(n)) - set(rng.choice(n, min(n_del, n - 1), replace=False).tolist()))
    add_codes, _ = random_bank(rng, n_add)
    new_codes = np.concatenate([codes[keep], add_codes]) if n_add else codes[keep]
    new_entries = [entries[i] for i in keep] + [Entry(f"new{i}") for i in range(n_add)]
    updated = bank.updated(new_codes, new_entries, max_overlay=10_000)
    assert updated.overlay_size == (n - len(keep)) + n_add
    assert sorted(e.entry_id for e in updated.entries) == sorted(e.entry_id for e in new_entries)
    probes = np.concatenate([new_codes[: min(5, len(new_codes))], rng.integers(0, 256, (3, 32), dtype=np.uint8)])
    for probe, hits in zip(probes, updated.lookup_many(probes), strict=True):
        assert sorted((m.entry.entry_id, m.distance) for m in hits) == reference(new_codes, new_entries, probe, radius)
    # Chained updates keep working, and a large change rebuilds.
    again = updated.updated(codes, entries, max_overlay=10_000)
    assert sorted(e.entry_id for e in again.entries) == sorted(e.entry_id for e in entries)
    assert bank.updated(new_codes, new_entries, max_overlay=0).overlay_size == 0


def test_reload_under_concurrent_queries_never_mixes() -> None:
    rng = np.random.default_rng(3)
    a_codes, _ = random_bank(rng, 2000)
    b_codes, _ = random_bank(rng, 2000)
    bank_a = Bank("b", "pdq", a_codes, [Entry(f"a{i}") for i in range(2000)], threshold=40)
    bank_b = Bank("b", "pdq", b_codes, [Entry(f"b{i}") for i in range(2000)], threshold=40)
    matcher = KnownContentMatcher([bank_a])
    probe = np.concatenate([a_codes[:20], b_codes[:20]])
    mixed: list[set[str]] = []
    stop = threading.Event()

    def query() -> None:
        while not stop.is_set():
            banks = matcher.banks  # what a sample sees: one reference, read once
            hits = banks[0].lookup_many(probe)
            prefixes = {m.entry.entry_id[0] for h in hits for m in h}
            if len(prefixes) > 1:
                mixed.append(prefixes)

    threads = [threading.Thread(target=query) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(200):
        matcher.set_banks([bank_b if i % 2 else bank_a])
    stop.set()
    for t in threads:
        t.join()
    assert not mixed
