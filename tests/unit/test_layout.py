"""The per-stream layout model (pipelines/layout.py) and the matcher's layout probes (pipelines/known_content.py)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from pipelines.banks import Bank, Entry
from pipelines.base import Sample
from pipelines.detect import Box
from pipelines.fingerprint import pdq
from pipelines.hamming import hamming
from pipelines.known_content import KnownContentMatcher
from pipelines.layout import LayoutModel, LayoutTracker, fill_fixed, refine_window
from pipelines.robust import layout_probes
from test_streams import transforms as tf
from test_streams.images import known_image

W, H = 512, 288


def framed(content: np.ndarray, background: np.ndarray, box: Box) -> np.ndarray:
    """`content` scaled into `box` over a fixed `background`."""
    out = background.copy()
    out[box.top : box.bottom, box.left : box.right] = cv2.resize(content, (box.right - box.left,
                                                                           box.bottom - box.top),
                                                                  interpolation=cv2.INTER_AREA)
    return out


BOX = Box(40, 200, 150, 434, 1.0)


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    return tf.composition(7, W, H)


def test_nothing_before_enough_samples_and_nothing_on_a_still_stream(background: np.ndarray) -> None:
    model = LayoutModel()
    for _ in range(10):
        model.update(background)
    assert len(model) == 1 and model.layout() is None  # repeats add nothing: no content to tell layout from
    model = LayoutModel()
    for s in range(3):
        model.update(framed(known_image(s, W, H), background, BOX))
    assert model.layout() is None  # MIN_HISTORY distinct samples first


def test_fixed_surroundings_found_and_window_at_the_content(background: np.ndarray) -> None:
    model = LayoutModel()
    for s in range(6):
        model.update(framed(known_image(s, W, H), background, BOX))
    layout = model.layout()
    assert layout is not None and layout.window is not None
    assert 0.5 < layout.fixed_share < 0.85
    win = refine_window(framed(known_image(9, W, H), background, BOX), layout.window)
    assert max(abs(win.top - BOX.top), abs(win.bottom - BOX.bottom), abs(win.left - BOX.left),
               abs(win.right - BOX.right)) <= 2, win


def test_a_changing_frame_size_starts_afresh(background: np.ndarray) -> None:
    model = LayoutModel()
    for s in range(6):
        model.update(framed(known_image(s, W, H), background, BOX))
    model.update(known_image(1, 320, 180))
    assert len(model) == 1 and model.layout() is None


def test_fill_keeps_the_content_and_replaces_the_layout() -> None:
    small = np.ascontiguousarray(known_image(2, 64, 64))
    fixed = np.zeros((36, 64), bool)
    fixed[:, 48:] = True  # a column on the right
    out = fill_fixed(small, fixed)
    assert out.shape == small.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, :40], small[:, :40])
    assert not np.array_equal(out[:, 56:], small[:, 56:])


def test_tracker_bounded_and_forgets() -> None:
    tracker = LayoutTracker(max_streams=2)
    img = known_image(0, 64, 36)
    for sid in ("a", "b", "c"):
        assert tracker.observe(sid, img) is None
    assert len(tracker) == 2
    tracker.forget("b")
    assert len(tracker) == 1


def test_picture_in_a_fixed_layout_found_through_the_layout_window(background: np.ndarray) -> None:
    known = known_image(42, W, H)
    bank = Bank("known", "pdq", pdq(known)[0][None, :], [Entry("k", label="known")])
    box = Box(30, 150, 250, 463, 1.0)  # 42 % of the width, at an arbitrary place
    matcher = KnownContentMatcher([bank])
    plain = KnownContentMatcher([bank], layout=False)
    for s in range(5):  # other content in the same layout first: nothing matches
        frame = tf.jpeg(framed(known_image(100 + s, W, H), background, box), 80)
        assert matcher.process(Sample("s1", float(s), time.time(), frame)) == []
    shown = Sample("s1", 6.0, time.time(), tf.jpeg(framed(known, background, box), 80))
    matches = matcher.process_detailed(shown)
    assert [m.finding.entry_id for m in matches] == ["k"]
    assert plain.process(shown)  # found without the layout too (boxes: a clean synthetic window) ...
    model = LayoutModel()  # ... and through the layout's own window, at the stream's 6th sample
    for s in range(5):
        model.update(tf.jpeg(framed(known_image(100 + s, W, H), background, box), 80))
    model.update(shown.rgb)
    layout = model.layout()
    assert layout is not None
    probes = {p.view: p for p in layout_probes(shown.rgb, layout)}
    assert set(probes) == {"layout_window", "layout_fill"}
    assert hamming(probes["layout_window"].codes["pdq"], pdq(known)[0]) <= 20
    other_stream = matcher.process_detailed(Sample("s2", 0.0, time.time(), shown.rgb))
    assert all(not m.view.startswith("layout_") for m in other_stream)  # a stream's layout is its own
