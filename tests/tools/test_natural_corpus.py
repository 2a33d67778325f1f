"""The natural corpus loader (tools/test_streams/natural.py), the streaming-layout transforms and the natural-corpus
mode
of the offline image benchmark."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from monitor_tools.eval.images import cli as eval_images
from monitor_tools.eval.images.corpus import DEFAULT_KEY
from pipelines.fingerprint import pdq
from test_streams import natural
from test_streams.transforms import LAYOUT_TRANSFORMS, combo_parts, composition

REPO = Path(__file__).resolve().parents[2]
MIN_PICTURES = 150


def _picture(seed: int) -> np.ndarray:
    return composition(seed, 640, 360)


def _corpus_or_skip(n: int) -> natural.Corpus:
    corpus = natural.load_corpus()
    if len(corpus.pictures) < n:
        msg = (f"natural corpus has {len(corpus.pictures)} pictures (< {n}); missing packages: "
               f"{', '.join(corpus.missing) or 'none'} (scripts/test installs them)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return corpus


# -- transforms ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYOUT_TRANSFORMS))
def test_layout_transform_is_deterministic_and_seeded(name: str) -> None:
    img, pool = _picture(1), [_picture(2), _picture(3)]
    fn = LAYOUT_TRANSFORMS[name]
    a, b = fn(img, 5, pool), fn(img, 5, pool)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, b)
    assert any(not np.array_equal(a, fn(img, s, pool)) for s in (6, 7, 8))
    if not name.startswith(("crop", "combo")):
        assert a.shape == img.shape


def test_decorations_come_from_the_pool() -> None:
    img = np.full((360, 640, 3), 40, np.uint8)
    marker = np.zeros((360, 640, 3), np.uint8)
    marker[..., 1] = 255  # pure green: only the pool has it
    for name in ("webcam", "pip30_60"):
        out = LAYOUT_TRANSFORMS[name](img, 3, [marker])
        green = (out[..., 1] == 255) & (out[..., 0] == 0)
        assert green.mean() > 0.05, name


def test_parameter_ranges() -> None:
    img = np.full((360, 640, 3), 128, np.uint8)
    for seed in range(20):
        c = LAYOUT_TRANSFORMS["crop3_12"](img, seed, ())
        assert 0.87 <= c.shape[1] / 640 <= 0.98 and 0.87 <= c.shape[0] / 360 <= 0.98
        out = LAYOUT_TRANSFORMS["band"](np.zeros((360, 640, 3), np.uint8), seed, ())
        rows = np.flatnonzero(out.reshape(360, -1).max(axis=1) > 0)
        assert 0.07 * 360 <= rows[-1] - rows[0] + 1 <= 0.21 * 360
        black = np.zeros((360, 640, 3), np.uint8)
        cam = LAYOUT_TRANSFORMS["webcam"](black, seed, [np.full((360, 640, 3), 200, np.uint8)])
        area = float((cam == 200).all(axis=2).mean())
        assert 0.09 <= area <= 0.26
        chat = LAYOUT_TRANSFORMS["chat"](np.full((360, 640, 3), 255, np.uint8), seed, ())
        cols = np.flatnonzero((chat != 255).any(axis=(0, 2)))
        assert 0.19 * 640 <= cols[-1] - cols[0] + 1 <= 0.31 * 640
    for seed in range(40):
        for n in (2, 3):
            parts = combo_parts(seed, n)
            assert len(set(parts)) == n and not {"window", "pip"} <= set(parts)


def test_x264_keeps_the_picture() -> None:
    img = _picture(9)
    out = LAYOUT_TRANSFORMS["x264_500k"](img, 1, ())
    assert out.shape == img.shape
    mse = float(((out.astype(np.float64) - img) ** 2).mean())
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 25  # a smooth picture survives 500 kbit/s well


# -- loader ----------------------------------------------------------------------------------------------------


def test_fit_and_read(tmp_path: Path) -> None:
    tall = (np.random.default_rng(1).random((900, 400, 4)) * 255).astype(np.uint8)
    path = tmp_path / "tall.png"
    PILImage.fromarray(tall, "RGBA").save(path)
    img = natural.read_picture(str(path))
    assert img is not None and img.shape == (360, 640, 3)
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    assert natural.read_picture(str(tmp_path / "broken.jpg")) is None


def test_build_gates_and_deduplicates(tmp_path: Path) -> None:
    src = natural.Source("test", "deb", "CC0")
    a = _picture(21)
    files = []
    for i, (img, size) in enumerate([(a, (1920, 1080)), (a, (1280, 720)), (a[:, ::-1], (1280, 720)),
                                     (_picture(23), (1280, 720)), (np.full((360, 640, 3), 90, np.uint8), (640, 360))]):
        p = tmp_path / f"p{i}.png"
        PILImage.fromarray(np.ascontiguousarray(img)).resize(size).save(p)
        files.append((src, str(p)))
    pics, counts = natural.build(files)
    assert [Path(p.path).name for p in pics] == ["p0.png", "p3.png"]  # a resolution and a mirror are duplicates
    assert counts == {"files": 5, "unreadable": 0, "low_quality": 1, "duplicates": 2}
    assert len({p.name for p in pics}) == len(pics)


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = natural.Source("test", "deb", "CC0")
    p = tmp_path / "a.png"
    PILImage.fromarray(_picture(31)).save(p)
    pics, counts = natural.build([(src, str(p))])
    file = tmp_path / "cache" / "c.npz"
    natural._save(file, pics, counts)
    loaded = natural._load(file)
    assert loaded is not None
    again, counts2 = loaded
    assert counts2 == counts and np.array_equal(again[0].image, pics[0].image)
    assert np.array_equal(again[0].code, pics[0].code) and again[0].name == pics[0].name


def test_split_is_fixed_and_disjoint() -> None:
    names = [f"pkg/p{i}" for i in range(200)]
    tune, held = natural.split(names)
    assert len(held) == 60 and len(tune) == 140 and not set(tune) & set(held)
    assert natural.split(names) == (tune, held)
    # adding pictures moves few of the old ones
    _, held2 = natural.split([*names, *(f"pkg/q{i}" for i in range(20))])
    assert len(set(held) - set(held2)) <= 8
    assert natural.draw_seed("tuning", "a", "band") != natural.draw_seed("held_out", "a", "band")
    assert natural.draw_seed("tuning", "a", "band") == natural.draw_seed("tuning", "a", "band")


# -- the installed corpus --------------------------------------------------------------------------------------


def test_corpus_size_licences_and_distinctness() -> None:
    corpus = _corpus_or_skip(MIN_PICTURES)
    pics = corpus.pictures
    assert len({p.name for p in pics}) == len(pics)
    codes = np.stack([p.code for p in pics]).view(np.uint64)
    d = np.bitwise_count(codes[:, None, :] ^ codes[None, :, :]).sum(axis=2)
    np.fill_diagonal(d, 256)
    assert d.min() > natural.DEDUP_DISTANCE
    assert all(p.image.shape == (360, 640, 3) and p.quality >= natural.MIN_QUALITY for p in pics[:10])
    assert all(pdq(p.image)[1] >= natural.MIN_QUALITY for p in pics[:5])
    doc = (REPO / "docs" / "natural-corpus.md").read_text(encoding="utf-8")
    for pkg in corpus.packages:
        assert f"`{pkg}`" in doc, f"{pkg} has no licence entry in docs/natural-corpus.md"
    assert all(s.licence for s in natural.SOURCES)


# -- the benchmark on it ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_natural() -> dict[str, Any]:
    _corpus_or_skip(30)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = eval_images.main(["--corpus", "natural", "--quick"])
    assert rc == 0
    doc: dict[str, Any] = json.loads(buf.getvalue())
    return doc


def test_natural_benchmark_json(quick_natural: dict[str, Any]) -> None:
    doc = quick_natural
    assert doc["corpus"] == "natural" and doc["mode"] == "quick"
    assert set(doc["transforms"]) >= set(LAYOUT_TRANSFORMS)
    tune, held = doc["splits"]["tuning"], doc["splits"]["held_out"]
    assert not set(tune["picture_names"]) & set(held["picture_names"])
    for s in (tune, held):
        h = s["hashers"][DEFAULT_KEY]
        assert set(h["recall_at_31"]) == {"natural", "generated"}
        assert set(h["recall_at_31"]["natural"]) == set(doc["transforms"])
        assert sum(s["default_unrelated_histogram"]) == s["samples"]
    fa = doc["false_alerts_1m"]
    assert fa["samples"] > 0 and fa["samples_with_a_hit_random"] == 0
    assert {t["transform"] for t in doc["targets_held_out"]} >= {"window", "pip30_60", "combo2", "crop5"}
    assert doc["cost"]["ms_per_sample_median"] > 0


def test_natural_benchmark_floors(quick_natural: dict[str, Any]) -> None:
    """Floors that fail if detection breaks (the figures themselves are in docs/eval-images.md)."""
    for split_name in ("tuning", "held_out"):
        r = quick_natural["splits"][split_name]["hashers"][DEFAULT_KEY]["recall_at_31"]["natural"]
        assert min(r["reencode"], r["mirror"], r["letterbox"], r["tone"], r["x264_500k"]) >= 0.8, split_name
        none = quick_natural["splits"][split_name]["hashers"]["pipeline/none"]["recall_at_31"]["natural"]
        assert none["mirror"] <= 0.2
