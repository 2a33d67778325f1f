"""`monitor bench classify` prints its JSON report (quick: inference cost only here; the A/B is timed)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_bench_classify_prints_inference_cost_and_the_hash_path_ab() -> None:
    r = run_cli("bench", "classify", "--quick", "--streams", "4", "--seconds", "3", timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert 2_000_000 <= report["model"]["parameters"] <= 5_000_000
    assert report["model"]["input"] == [1, 3, 224, 224]
    row = report["inference"]["threads_1"]
    assert row["batch_1_ms_per_sample"] > 0 and row["batch_8_ms_per_sample"] > 0 and row["batched_speedup"] > 0
    ab = report["hash_path"]
    for half in ("without_classifier", "with_classifier_every_4th"):
        assert ab[half]["analysed"] > 0 and ab[half]["p95_ms"] > 0
    assert ab["with_classifier_every_4th"]["classifier"]["classified"] > 0
