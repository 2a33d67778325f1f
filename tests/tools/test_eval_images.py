"""The offline image benchmark in CI size: structure of its JSON and recall floors that fail if detection breaks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from monitor_tools.eval.images import cli as eval_images
from test_streams.transforms import TRANSFORMS


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("eval") / "table.md"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = eval_images.main(["--quick", "--markdown", str(out)])
    assert rc == 0
    return json.loads(buf.getvalue()), Path(out).read_text(encoding="utf-8")


def test_json_structure(quick: tuple[dict[str, Any], str]) -> None:
    doc, md = quick
    assert doc["mode"] == "quick" and doc["images"] >= 30
    assert set(doc["styles"]) == {"known_image", "background", "composition"}
    assert set(doc["transforms"]) == set(TRANSFORMS)
    for key in ("pdq", "phash", "dhash", "pipeline/none", "pipeline/strip_bars", "pipeline/dihedral",
                "pipeline/crops", "pipeline/pip", "pipeline/boxes", "pipeline/default", "pipeline/all"):
        h = doc["hashers"][key]
        assert set(h["recall"]) == set(doc["transforms"])
        assert 0 <= h["threshold"] <= 256
        assert h["negative_comparisons"] == h["negatives"] * (doc["images"] - 1)
        assert all(v is None or 0.0 <= v <= 1.0 for v in h["recall"].values())
    assert doc["hashers"]["pdq"]["default_threshold"] == 31
    assert doc["hashers"]["dhash"]["default_threshold"] is None
    for name, cost in doc["costs"].items():
        assert cost["ms_per_sample"] > 0 and cost["probes_per_sample"] >= 1, name
    assert doc["costs"]["dihedral"]["probes_per_sample"] == 8
    fm = doc["false_match_1m"]
    assert fm["bank_size"] == 1_000_000 and fm["uniform"]["direct_hits"] == 0
    assert fm["uniform"]["nearest_distance"] > 31
    assert set(fm["per_switch"]) == set(doc["costs"])
    assert {t["transform"] for t in doc["targets"]} >= {"reencode", "mirror", "letterbox", "crop10"}
    assert "| pipeline/default |" in md and "False alerts" in md


def test_recall_floors(quick: tuple[dict[str, Any], str]) -> None:
    h = quick[0]["hashers"]
    at31 = {k: v.get("recall_at_default") for k, v in h.items()}
    assert at31["pdq"]["reencode"] >= 0.95
    assert at31["pdq"]["downscale"] >= 0.95
    assert at31["pipeline/dihedral"]["mirror"] >= 0.9
    assert at31["pipeline/none"]["mirror"] <= 0.2
    assert at31["pipeline/strip_bars"]["letterbox"] >= 0.9 and at31["pipeline/none"]["letterbox"] <= 0.2
    assert at31["pipeline/boxes"]["pip"] >= 0.8 and at31["pipeline/none"]["pip"] <= 0.2
    d = at31["pipeline/default"]
    assert min(d["reencode"], d["gamma"], d["pillarbox"], d["mirror"], d["rotate90"], d["inset"]) >= 0.9
    # no switch may cost a false match at the default threshold on this set
    assert all(v.get("false_matches_at_default", 0) == 0 for v in h.values())
