"""Robustness before hashing: bar stripping, dihedral variants, crops, picture-in-picture, and the matcher."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.banks import Bank, Entry
from pipelines.base import Sample
from pipelines.detect import (
    BAR_MAX_FRACTION,
    Bars,
    Box,
    detect_bars,
    detect_boxes,
    even_out,
    is_corner_inset,
    is_overlay,
)
from pipelines.fingerprint import DIHEDRAL, pdq, pdq_dihedral, phash, phash_dihedral
from pipelines.known_content import KnownContentMatcher
from pipelines.robust import (
    REEXTEND_VIEWS,
    STRIP_VIEWS,
    TILT_VIEWS,
    RobustOptions,
    compute_probes,
    cover_view,
    reextend_views,
    select_probes,
    strip_views,
    tilt_views,
)
from test_streams import transforms as tf
from test_streams.images import Background, known_image

W, H = 512, 288


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    return [known_image(s, W, H) for s in range(4)] + [tf.composition(s, W, H) for s in range(2)]


def bank_of(images: list[np.ndarray], signal: str = "pdq", name: str = "known") -> Bank:
    codes = np.stack([pdq(i)[0] if signal == "pdq" else phash(i) for i in images])
    return Bank(name, signal, codes, [Entry(f"e{k}", label=f"picture {k}") for k in range(len(images))])


def sample(rgb: np.ndarray) -> Sample:
    return Sample("s1", 12.0, time.time(), np.ascontiguousarray(rgb))


def as_stream(rgb: np.ndarray) -> np.ndarray:
    """Re-encoded, as a stream frame would be."""
    return tf.jpeg(rgb, 70)


# -- black bars ----------------------------------------------------------------------------------------------------


def test_letterbox_bars_found(pictures: list[np.ndarray]) -> None:
    for seed, pic in enumerate(pictures):
        framed = as_stream(tf.letterbox(pic, seed))  # 512x384, bars of 48 rows
        bars = detect_bars(framed)
        assert 47 <= bars.top <= 51 and 47 <= bars.bottom <= 51, bars
        assert bars.left == bars.right == 0


def test_pillarbox_bars_found(pictures: list[np.ndarray]) -> None:
    for seed, pic in enumerate(pictures):
        framed = as_stream(tf.pillarbox(pic, seed))  # 4:3 content in 16:9
        bars = detect_bars(framed)
        h, w = framed.shape[:2]
        expect = (w - round(h * 4 / 3)) // 2
        assert abs(bars.left - expect) <= 3 and abs(bars.right - expect) <= 3, (bars, expect)
        assert bars.top == bars.bottom == 0


def test_no_bars_on_plain_content(pictures: list[np.ndarray]) -> None:
    for pic in pictures:
        assert not detect_bars(as_stream(pic))


def test_no_bars_on_dark_textured_content() -> None:
    for seed in range(4):
        dark = (known_image(seed, W, H).astype(np.float32) * 0.22).astype(np.uint8)  # luma mostly under 40
        assert not detect_bars(as_stream(dark)), seed
        night = (Background(seed, W, H).frame(1.0).astype(np.float32) * 0.25).astype(np.uint8)
        assert not detect_bars(as_stream(night)), seed


def test_black_frame_and_mostly_black_frame_not_cropped() -> None:
    assert detect_bars(np.zeros((H, W, 3), np.uint8)) == Bars()
    # content in a thin band in the middle: the dark runs exceed 40% per side, so nothing is cut
    img = np.zeros((H, W, 3), np.uint8)
    img[130:160] = known_image(1, W, 30)
    assert detect_bars(img) == Bars()


@settings(max_examples=40, deadline=None)
@given(
    top=st.floats(0, 0.6), bottom=st.floats(0, 0.6), left=st.floats(0, 0.6), right=st.floats(0, 0.6),
    level=st.integers(0, 30), seed=st.integers(0, 50),
)
def test_never_over_crops(top: float, bottom: float, left: float, right: float, level: int, seed: int) -> None:
    img = known_image(seed, 160, 90).copy()
    h, w = img.shape[:2]
    t, b = round(top * h / 2), round(bottom * h / 2)
    lft, r = round(left * w / 2), round(right * w / 2)
    img[:t] = level
    img[h - b :] = level
    img[:, :lft] = level
    img[:, w - r :] = level
    bars = detect_bars(img)
    assert bars.top <= BAR_MAX_FRACTION * h and bars.bottom <= BAR_MAX_FRACTION * h
    assert bars.left <= BAR_MAX_FRACTION * w and bars.right <= BAR_MAX_FRACTION * w
    assert bars.crop(img).size > 0


def test_letterboxed_content_matches_only_with_bar_stripping(pictures: list[np.ndarray]) -> None:
    bank = bank_of(pictures)
    for seed, pic in enumerate(pictures):
        framed = as_stream(tf.letterbox(pic, seed))
        off = KnownContentMatcher([bank], strip_bars=False, dihedral=False, boxes=False)
        on = KnownContentMatcher([bank], strip_bars=True, dihedral=False, boxes=False)
        assert not off.process(sample(framed))
        matches = on.process_detailed(sample(framed))
        assert [m.finding.entry_id for m in matches] == [f"e{seed}"]
        assert matches[0].view == "stripped" and matches[0].finding.distance <= 31


# -- dihedral ------------------------------------------------------------------------------------------------------


def test_pdq_dihedral_first_is_pdq_and_phash_dihedral_is_exact(pictures: list[np.ndarray]) -> None:
    for pic in pictures:
        codes, quality = pdq_dihedral(pic)
        ref, ref_q = pdq(pic)
        assert len(codes) == 8 and np.array_equal(codes[0], ref) and quality == ref_q
        ph = phash_dihedral(pic)
        assert np.array_equal(ph[0], phash(pic))
        assert np.array_equal(ph[DIHEDRAL.index("flip_h")], phash(np.ascontiguousarray(pic[:, ::-1])))
        assert np.array_equal(ph[DIHEDRAL.index("flip_v")], phash(np.ascontiguousarray(pic[::-1])))
        rot = np.ascontiguousarray(np.rot90(pic))
        diff = np.unpackbits(ph[DIHEDRAL.index("rot90")] ^ phash(rot)).sum()
        assert diff <= 8


@pytest.mark.parametrize("signal", ["pdq", "phash"])
def test_mirror_matches_with_dihedral_only(pictures: list[np.ndarray], signal: str) -> None:
    bank = bank_of(pictures, signal)
    for seed, pic in enumerate(pictures):
        mirrored = as_stream(tf.mirror(pic, seed))
        off = KnownContentMatcher([bank], dihedral=False)
        on = KnownContentMatcher([bank], dihedral=True)
        assert not off.process(sample(mirrored))
        matches = on.process_detailed(sample(mirrored))
        assert [m.finding.entry_id for m in matches] == [f"e{seed}"]
        assert matches[0].variant == "full:flip_h"


def test_rotation_reported_as_shown(pictures: list[np.ndarray]) -> None:
    bank = bank_of(pictures)
    matcher = KnownContentMatcher([bank])
    pic = pictures[0]
    cw = np.ascontiguousarray(np.rot90(pic, -1))  # the stream shows the picture turned clockwise
    (m,) = matcher.process_detailed(sample(as_stream(cw)))
    assert m.finding.entry_id == "e0" and m.shown_as == "rot270"  # np.rot90(k=3) is clockwise
    ccw = np.ascontiguousarray(np.rot90(pic, 1))
    (m,) = matcher.process_detailed(sample(as_stream(ccw)))
    assert m.shown_as == "rot90"


# -- crops and picture-in-picture ----------------------------------------------------------------------------------


def test_inset_content_matches_with_crops(pictures: list[np.ndarray]) -> None:
    """The bank picture shown at 90% size in the middle of another picture (an overlay frame): the centre 90% crop
    of the sample is the picture. (A sample that shows *less* than the bank picture is not helped by crops.)"""
    bank = bank_of(pictures)
    for seed, pic in enumerate(pictures[:3]):
        canvas = tf.soft_background(77 + seed, W, H)
        inner = tf._resize(pic, round(W * 0.9), round(H * 0.9))
        framed = as_stream(tf.place(canvas, inner, round(H * 0.05), round(W * 0.05)))
        off = KnownContentMatcher([bank], strip_bars=False, dihedral=False, boxes=False)
        on = KnownContentMatcher([bank], strip_bars=False, dihedral=False, boxes=False, crops=True)
        assert not off.process(sample(framed))
        (m,) = on.process_detailed(sample(framed))
        assert m.finding.entry_id == f"e{seed}" and m.view == "crop90_c"


def test_pip_found_by_boxes(pictures: list[np.ndarray]) -> None:
    bank = bank_of(pictures)
    found = 0
    for seed, pic in enumerate(pictures):
        shown = as_stream(tf.pip(pic, seed))
        assert not KnownContentMatcher([bank], boxes=False).process(sample(shown))
        matches = KnownContentMatcher([bank], boxes=True).process_detailed(sample(shown))
        if matches:
            assert [m.finding.entry_id for m in matches] == [f"e{seed}"]
            assert matches[0].view.startswith("box")
            found += 1
    assert found >= len(pictures) - 1


def test_corner_overlay_evened_out_restores_the_surroundings() -> None:
    rng = np.random.default_rng(3)
    base = np.clip(120 + rng.normal(0, 25, (H, W, 3)), 0, 255).astype(np.uint8)
    plated = base.copy()
    bh, bw = H // 3, W // 3
    plated[:bh, :bw] = (plated[:bh, :bw] * 0.55 + 9).astype(np.uint8)  # a dark plate at alpha 0.45
    box = Box(0, bh, 0, bw, 1.0)
    assert is_overlay(box, H, W) and not is_overlay(Box(40, 200, 60, 400, 1.0), H, W)
    evened = even_out(plated, box)
    assert evened is not None
    assert abs(float(evened[:bh, :bw].mean()) - float(base.mean())) < 5  # the plate's darkening is gone
    assert np.array_equal(evened[bh:], plated[bh:])  # nothing outside the box changes


def test_watermark_plates_found_through_the_overlay_view() -> None:
    pictures = [known_image(s, W, H) for s in range(10, 30)]
    bank = bank_of(pictures)
    plain = overlay = 0
    for seed, pic in enumerate(pictures):
        shown = as_stream(tf.watermark(pic, seed))
        matches = KnownContentMatcher([bank]).process_detailed(sample(shown))
        assert {m.finding.entry_id for m in matches} <= {f"e{seed}"}  # never another picture
        if matches:
            if matches[0].view.startswith("overlay"):
                overlay += 1
            else:
                plain += 1
    assert overlay >= 3, (plain, overlay)  # found only with the corner evened out


def test_corner_insets_are_boxes_near_exactly_one_corner() -> None:
    assert is_corner_inset(Box(0, 110, 0, 200, 1.0), H, W)  # top left, ~15 % of the area
    assert is_corner_inset(Box(H - 120, H - 8, W - 190, W - 10, 1.0), H, W)  # bottom right, off the edges a little
    assert not is_corner_inset(Box(60, 200, 120, 400, 1.0), H, W)  # in the middle: picture-in-picture
    assert not is_corner_inset(Box(H - 50, H, 0, W, 1.0), H, W)  # a full-width band
    assert not is_corner_inset(Box(0, H, W - 140, W, 1.0), H, W)  # a full-height chat column
    assert not is_corner_inset(Box(0, 20, 0, 30, 1.0), H, W)  # too small to matter
    assert not is_corner_inset(Box(0, 200, 0, 380, 1.0), H, W)  # half the frame: not an inset over content


def test_cover_view_inpaints_the_box_and_nothing_else() -> None:
    small = np.ascontiguousarray(known_image(5, 64, 64))
    inset = small.copy()
    inset[40:, 36:] = (250, 0, 250)  # a webcam inset of one loud colour, bottom right
    covered = cover_view(inset, Box(H * 40 // 64, H, W * 36 // 64, W, 1.0), H, W)
    assert np.array_equal(covered[:40], small[:40]) and np.array_equal(covered[:, :36], small[:, :36])
    assert not (covered[40:, 36:] == (250, 0, 250)).all(axis=2).any()  # the inset's colour is gone
    # filled from around it: nearer the hidden picture than the inset was
    assert np.abs(covered.astype(int) - small).mean() < 0.5 * np.abs(inset.astype(int) - small).mean()


def found_via(pictures: list[np.ndarray], show: Callable[[np.ndarray, int], np.ndarray], view: str,
              **off: bool) -> tuple[int, int, int]:
    """Each picture shown through `show` against a bank of them all: how many the matcher finds with the switches
    `off` turned off, how many with the defaults, and how many of those through a probe whose view starts with
    `view`. Never another picture."""
    bank = bank_of(pictures)
    without = found = via = 0
    for seed, pic in enumerate(pictures):
        shown = sample(as_stream(show(pic, seed)))
        if off:
            without += bool(KnownContentMatcher([bank], **off).process(shown))
        matches = KnownContentMatcher([bank]).process_detailed(shown)
        assert {m.finding.entry_id for m in matches} <= {f"e{seed}"}  # never another picture
        found += bool(matches)
        via += bool(matches) and matches[0].view.startswith(view)
    return without, found, via


def test_webcam_insets_found_through_the_cover_view() -> None:
    others = [tf.composition(s, W, H) for s in range(8)]
    off, on, via = found_via([known_image(s, W, H) for s in range(120, 150)],
                             lambda pic, seed: tf.webcam(pic, seed, others), "cover", boxes=False)
    assert on >= off + 3 and via >= 3, (off, on, via)


def test_small_picture_in_picture_found_through_the_snapped_box() -> None:
    others = [tf.composition(s, W, H) for s in range(8)]
    _, found, via = found_via([known_image(s, W, H) for s in range(200, 230)],
                              lambda pic, seed: tf.pip_small(pic, seed, others), "boxsnap")
    assert via >= 10, (found, via)  # nearer with the box's sides on the window's edges than as detected


def test_gamma_changed_pictures_found_through_the_tone_views() -> None:
    off, on, via_tone = found_via([known_image(s, W, H) for s in range(40, 80)], tf.gamma, "tone", tones=False)
    assert on >= off + 2 and via_tone >= 2, (off, on, via_tone)


def test_cropped_pictures_found_through_the_reextended_views() -> None:
    off, on, via = found_via([known_image(s, W, H) for s in range(80, 110)], tf.crop5, "reext_", reextend=False)
    assert on >= off + 5 and via >= 5, (off, on, via)


def test_slightly_rotated_pictures_found_through_the_tilt_views() -> None:
    off, on, via = found_via([known_image(s, W, H) for s in range(160, 190)], tf.rotate_small, "tilt", tilts=False)
    assert on >= off + 5 and via >= 5, (off, on, via)


def test_tilt_views_turn_the_reduction_about_its_centre() -> None:
    small = np.zeros((64, 64, 3), np.uint8)
    small[:, 31:33] = 255  # a vertical bar through the centre
    views = dict(tilt_views(small))
    assert list(views) == list(TILT_VIEWS) == ["tilt-2", "tilt+2"]
    for view in views.values():
        assert view.shape == small.shape
        assert view[32, 31:33].min() > 200  # the centre stays
        top, bottom = np.argmax(view[2, :, 0]), np.argmax(view[61, :, 0])
        assert top != bottom  # the bar is no longer vertical
    assert np.argmax(views["tilt+2"][2, :, 0]) < 31 < np.argmax(views["tilt-2"][2, :, 0])  # counter-clockwise


def test_strip_views_replace_only_the_strip() -> None:
    small = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3).astype(np.uint8)
    views = dict(strip_views(small))
    assert list(views) == list(STRIP_VIEWS)
    k = round(0.2 * 64)
    bottom = views["strip_b20"]
    assert bottom.shape == small.shape and np.array_equal(bottom[: 64 - k], small[: 64 - k])
    assert (bottom[64 - k :] == small[64 - k - 1]).all()  # the row above the strip, repeated
    left = views["strip_l30"]
    assert (left[:, : round(0.3 * 64)] == small[:, round(0.3 * 64) : round(0.3 * 64) + 1]).all()


def test_reextend_views_are_the_shrunk_frame_padded_back() -> None:
    small = np.ascontiguousarray(known_image(3, 64, 64))
    views = dict(reextend_views(small))
    assert list(views) == list(REEXTEND_VIEWS) and len(views) == 16
    assert all(v.shape == small.shape for v in views.values())
    corner = views["reext_00"]  # all padding at the bottom and right: the shrunk picture at the top left
    assert not np.array_equal(corner, views["reext_33"])
    assert (corner[-1] == corner[-2]).all() and (corner[:, -1] == corner[:, -2]).all()


def test_pip_in_a_quadrant_found_by_pip_switch(pictures: list[np.ndarray]) -> None:
    bank = bank_of(pictures)
    pic = pictures[2]
    canvas = tf.soft_background(5, W, H)
    shown = as_stream(tf.place(canvas, tf._resize(pic, W // 2, H // 2), H // 2, W // 2))  # bottom-right quadrant
    plain = dict(strip_bars=False, dihedral=False, boxes=False)
    assert not KnownContentMatcher([bank], **plain).process(sample(shown))
    (m,) = KnownContentMatcher([bank], **plain, pip=True).process_detailed(sample(shown))
    assert m.finding.entry_id == "e2" and m.view == "pip_br"


def test_boxes_none_on_plain_pictures() -> None:
    for seed in range(4):
        assert detect_boxes(as_stream(known_image(seed, W, H))) == []


# -- matcher -------------------------------------------------------------------------------------------------------


def test_one_finding_per_entry_with_the_best_variant(pictures: list[np.ndarray]) -> None:
    pic = pictures[1]
    mirrored = np.ascontiguousarray(pic[:, ::-1])
    codes = np.stack([pdq(pic)[0], pdq(mirrored)[0], pdq(pictures[3])[0]])
    bank = Bank("b", "pdq", codes, [Entry("plain"), Entry("mirror"), Entry("other")])
    second = Bank("b2", "pdq", codes[:1], [Entry("plain")])
    matcher = KnownContentMatcher([bank, second], strip_bars=True, dihedral=True, boxes=True, crops=True, pip=True)
    framed = as_stream(tf.letterbox(pic, 0))  # matches through several probes: stripped x 8 variants
    matches = matcher.process_detailed(sample(framed))
    keys = [(m.finding.bank, m.finding.entry_id) for m in matches]
    assert sorted(keys) == [("b", "mirror"), ("b", "plain"), ("b2", "plain")]
    by_key = {(m.finding.bank, m.finding.entry_id): m for m in matches}
    # the bars stripped, or the box between them with its sides snapped to the bars' edges: as near or nearer
    assert by_key[("b", "plain")].variant in ("stripped:identity", "boxsnap1:identity")
    assert by_key[("b", "mirror")].variant == "stripped:flip_h"
    for m in matches:  # each is the nearest probe: no probe is closer to that entry
        f = m.finding
        probes = [p for p in compute_probes(framed, matcher.options) if p.quality >= matcher.min_quality]
        row = {"plain": 0, "mirror": 1}[f.entry_id]
        best = min(int(np.unpackbits(p.codes["pdq"] ^ codes[row]).sum()) for p in probes)
        assert f.distance == best
        assert int(np.unpackbits(np.frombuffer(bytes.fromhex(f.sample_hash), np.uint8) ^ codes[row]).sum()) == best
    assert [m.finding.distance for m in matches if m.finding.bank == "b"] == sorted(
        m.finding.distance for m in matches if m.finding.bank == "b"
    )
    assert matcher.stats.findings == 3 and sum(matcher.stats.by_variant.values()) == 3


def test_min_quality_gate_still_applies(pictures: list[np.ndarray]) -> None:
    bank = bank_of(pictures)
    matcher = KnownContentMatcher([bank], crops=True, pip=True)
    assert matcher.process(sample(np.full((H, W, 3), 90, np.uint8))) == []
    assert matcher.process(sample(np.zeros((H, W, 3), np.uint8))) == []
    assert matcher.stats.low_quality == 2 and matcher.stats.samples == 2
    strict = KnownContentMatcher([bank], 101)
    assert strict.process(sample(pictures[0])) == []
    assert strict.stats.low_quality == 1
    assert KnownContentMatcher([bank], 50).process(sample(pictures[0]))[0].quality >= 50


def test_constructible_as_before(pictures: list[np.ndarray]) -> None:
    bank = bank_of(pictures)
    m = KnownContentMatcher([bank], 50)
    assert m.options == RobustOptions()
    (f,) = m.process(sample(pictures[0]))
    assert f.entry_id == "e0" and f.distance == 0 and f.sample_hash == pdq(pictures[0])[0].tobytes().hex()
    assert f.entry_label == "picture 0"


def test_select_probes_equals_compute_probes(pictures: list[np.ndarray]) -> None:
    frames = [pictures[0], as_stream(tf.letterbox(pictures[1], 1)), as_stream(tf.pip(pictures[2], 2))]
    variants = [RobustOptions.none(), RobustOptions(), RobustOptions(strip_bars=False, crops=True),
                RobustOptions(dihedral=False, pip=True, boxes=False), RobustOptions(reextend=False),
                RobustOptions(strips=False, tones=False), RobustOptions(tilts=False), RobustOptions.all()]
    for f in frames:
        everything = compute_probes(f, RobustOptions.all())
        for opts in variants:
            got = [(p.view, p.variant, p.codes["pdq"].tobytes()) for p in select_probes(everything, opts)]
            want = [(p.view, p.variant, p.codes["pdq"].tobytes()) for p in compute_probes(f, opts)]
            assert got == want, opts


# -- transforms ----------------------------------------------------------------------------------------------------


def test_transforms_deterministic_and_shaped() -> None:
    pic = known_image(3, 320, 180)
    for name, fn in tf.TRANSFORMS.items():
        a, b = fn(pic, 5), fn(pic, 5)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
        assert np.array_equal(a, b), name
    assert tf.letterbox(pic, 0).shape[:2] == (240, 320)
    assert tf.pillarbox(pic, 0).shape[:2] == (180, 320)
    assert tf.rotate90(pic, 0).shape[:2] == (320, 180)
    assert tf.crop10(pic, 0).shape[:2] == (162, 288)
    assert tf.pad20(pic, 0).shape[:2] == (216, 384)
    assert np.array_equal(tf.mirror(pic, 0), pic[:, ::-1])


def test_tiny_and_odd_frames_do_not_fail(pictures: list[np.ndarray]) -> None:
    matcher = KnownContentMatcher([bank_of(pictures)], crops=True, pip=True)
    for shape in [(1, 1), (2, 2), (4, 6), (3, 100), (100, 3)]:
        img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
        assert matcher.process(sample(img)) == []
