"""The matcher benchmark's quick mode runs, prints one JSON document, and ours is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor_tools.bench.match import flip_bits, main
from pipelines.mih_plan import SMALL_BANK_EXTRA_BYTES

LATENCY_KEYS = {"build_s", "memory_bytes", "qps_single", "qps_batched", "mean_ms", "p50_ms", "p95_ms", "p99_ms"}


def test_quick_mode_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the JSON document and nothing else
    assert "[bench_match]" in captured.err
    assert report["config"]["quick"] is True
    cases = report["cases"]
    assert {(c["size"], c["distribution"]) for c in cases} == {(100_000, "uniform"), (100_000, "clustered")}
    for case in cases:
        ours = case["ours"]
        assert ours.keys() >= LATENCY_KEYS
        assert ours["exact"] == 1.0 and ours["exact_checked"] == 20
        assert ours["batched_equals_single"] == 1.0
        # 2x raw, or raw + 16 MB for a small bank (pipelines.mih: the faster layout for a few MB)
        raw = case["size"] * 40
        assert 0 < ours["memory_ratio_vs_raw"] <= max(2.0, (raw + SMALL_BANK_EXTRA_BYTES) / raw)
        assert ours["p50_ms"] <= ours["p95_ms"] <= ours["p99_ms"]
        faiss = case["faiss"]
        if "skipped" in faiss:
            assert "speedup" not in case
        else:
            assert faiss.keys() >= LATENCY_KEYS
            assert faiss["exact"] == 1.0  # radius + 1 turns FAISS's strict bound into <= radius
            assert case["speedup"]["single_mean_latency"] > 0


def test_no_faiss_is_reported_as_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--no-faiss", "--sizes", "2000", "--queries", "10", "--distributions", "uniform"]
    assert main(argv) == 0
    case = json.loads(capsys.readouterr().out)["cases"][0]
    assert case["faiss"] == {"skipped": "--no-faiss given"}
    assert case["ours"]["exact"] == 1.0


def test_flip_bits_flips_the_requested_count() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (500, 32), dtype=np.uint8)
    flipped = flip_bits(codes, 5, 30, rng)
    d = np.unpackbits(codes ^ flipped, axis=1).sum(axis=1)
    assert d.max() <= 30 and d.min() >= 1 and np.mean(d) > 12  # repeats may cancel a few
