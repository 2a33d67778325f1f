"""A per-stream layout model: what stays fixed while the content changes, learned over a stream's samples.

A re-streamer shows the material inside a layout -- a content window, a webcam inset, a chat column, a ticker band,
logos and stickers -- and the layout does not move while the material plays. Over a few samples of one stream the
pixels of the layout keep their values (opaque parts) or vary much less than the content does (semi-transparent
bands and columns: out = a * in + b with a < 1), while the content's pixels change. `LayoutModel` keeps a short
history of small luma copies of a stream's samples, marks the pixels whose variation over it is well below the
frame's typical variation as layout, and gives two views to hash (pipelines/robust.py `layout_views`):

- the content window: the bounding box of the changing pixels, cut from the sample (a picture shown in a window
  or at picture-in-picture size, wherever it sits);
- the sample with the layout's pixels filled from the content around them (normalised convolution on the 64x64
  reduction PDQ hashes), which takes a webcam inset, a chat column or a band out of PDQ's low frequencies.

Nothing is given until the history holds `min_history` distinct samples and the fixed part covers at least
`MIN_FIXED` of the frame. `LayoutTracker` holds one model per stream (bounded; a stream's model is dropped with
`forget`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipelines.detect import Box
from pipelines.fingerprint import area_resize

Image = npt.NDArray[np.uint8]

MODEL_WIDTH = 128  # the history is kept at this width (luma), the aspect of the samples kept
HISTORY = 8  # distinct samples remembered per stream
MIN_HISTORY = 4  # samples needed before the model says anything
SAME_LEVEL = 2.0  # a sample whose mean absolute difference to the last one is under this is not new content
TYPICAL_PERCENTILE = 90  # the content's variation: this percentile of the frame's (the layout may be most of it)
FIXED_RATIO = 0.4  # a pixel varying less than this share of the content's variation is layout
MIN_FIXED = 0.01  # a layout covers at least this share of the frame (a logo bug or two: 1-5 %; tuning split) ...
MAX_FIXED = 0.93  # ... and leaves at least this much changing (a still stream is all "fixed")
SMOOTH_PX = 5  # the variation map is box-filtered over this many model pixels (a layout part is a region)
WINDOW_MIN_SIDE = 0.2  # a content window at least this share of each side ...
WINDOW_MAX_AREA = 0.92  # ... and visibly smaller than the frame
FILL_BLUR = 15  # the normalised-convolution kernel filling the layout on the 64x64 reduction (pixels)


@dataclass(frozen=True, slots=True)
class Layout:
    """What the model found: the fixed pixels (True: layout) at model size and the content window (or None)."""

    fixed: npt.NDArray[np.bool_]
    window: Box | None  # in the sample's pixels

    @property
    def fixed_share(self) -> float:
        return float(self.fixed.mean())


def _luma(rgb: Image) -> npt.NDArray[np.uint8]:
    h, w = rgb.shape[:2]
    size = (MODEL_WIDTH, max(8, round(h * MODEL_WIDTH / max(1, w))))
    small = area_resize(np.ascontiguousarray(rgb), size) if (w, h) != size else rgb
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY), np.uint8)


class LayoutModel:
    """One stream's history and the layout it implies."""

    def __init__(self, history: int = HISTORY, min_history: int = MIN_HISTORY) -> None:
        if not 2 <= min_history <= history:
            raise ValueError("need 2 <= min_history <= history")
        self.min_history = min_history
        self._frames: deque[npt.NDArray[np.uint8]] = deque(maxlen=history)  # luma at MODEL_WIDTH
        self._shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    def update(self, rgb: Image) -> None:
        """Remember a sample (a repeat of the last one adds nothing; a change of frame size starts afresh)."""
        h, w = rgb.shape[:2]
        if h < 16 or w < 16:
            return
        if self._shape != (h, w):
            self._frames.clear()
            self._shape = (h, w)
        luma = _luma(rgb)
        if self._frames and float(cv2.absdiff(luma, self._frames[-1]).mean()) < SAME_LEVEL:
            return
        self._frames.append(luma)

    def layout(self) -> Layout | None:
        """The layout the history shows, or None (too few samples, no fixed region, or nothing changing)."""
        if len(self._frames) < self.min_history or self._shape is None:
            return None
        stack = np.stack(self._frames).astype(np.float32)
        var = cv2.blur(stack.std(axis=0), (SMOOTH_PX, SMOOTH_PX))
        typical = float(np.percentile(var, TYPICAL_PERCENTILE))
        if typical < 4.0:  # hardly anything changes: no content to tell the layout from
            return None
        fixed = var < FIXED_RATIO * typical
        share = float(fixed.mean())
        if not MIN_FIXED <= share <= MAX_FIXED:
            return None
        return Layout(fixed, self._window(~fixed))

    def _window(self, changing: npt.NDArray[np.bool_]) -> Box | None:
        assert self._shape is not None
        h, w = self._shape
        mh, mw = changing.shape
        # rows (columns) where the changing part is at least half as wide (high) as at its widest
        rs, cs = changing.sum(axis=1), changing.sum(axis=0)
        rows, cols = np.flatnonzero(rs >= 0.5 * rs.max()), np.flatnonzero(cs >= 0.5 * cs.max())
        if not len(rows) or not len(cols):
            return None
        fy, fx = h / mh, w / mw
        box = Box(round(rows[0] * fy), min(h, round((rows[-1] + 1) * fy)), round(cols[0] * fx),
                  min(w, round((cols[-1] + 1) * fx)), 1.0)
        bh, bw = box.bottom - box.top, box.right - box.left
        if bh < WINDOW_MIN_SIDE * h or bw < WINDOW_MIN_SIDE * w or bh * bw > WINDOW_MAX_AREA * h * w:
            return None
        return box


REFINE_PX = 8  # a window side is moved to the strongest edge within this many sample pixels


def frame_luma(rgb: Image) -> npt.NDArray[np.float32]:
    """The sample's luma as float32, what `refine_window` looks for edges in."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _snap(lines: npt.NDArray[np.float32], at: int) -> int:
    """The boundary in [at - REFINE_PX, at + REFINE_PX] between two of `lines` (rows of luma, the span of one
    window side) with the largest mean absolute step across it; `at` where no step reaches 8 levels."""
    n = len(lines)
    a, b = max(0, at - REFINE_PX - 1), min(n, at + REFINE_PX + 1)
    if b - a < 2:
        return at
    steps = np.abs(np.diff(lines[a:b], axis=0)).mean(axis=1)  # steps[i]: between lines a+i and a+i+1
    i = int(np.argmax(steps))
    return a + i + 1 if steps[i] > 8.0 else at


def refine_window(rgb: Image, box: Box, luma: npt.NDArray[np.float32] | None = None) -> Box:
    """`box` with each inner side moved to the sample's strongest straight edge near it (the model finds the window
    at its own coarse resolution; a window cut a few pixels off moves PDQ by many bits). Sides on the frame border
    stay. `luma`: the sample's `frame_luma`, when the caller refines several boxes of one sample."""
    h, w = rgb.shape[:2]
    if luma is None:
        luma = frame_luma(rgb)
    rows = luma[:, box.left : box.right]
    cols = np.ascontiguousarray(luma[box.top : box.bottom].T)
    top = _snap(rows, box.top) if box.top > 0 else 0
    bottom = _snap(rows, box.bottom) if box.bottom < h else h
    left = _snap(cols, box.left) if box.left > 0 else 0
    right = _snap(cols, box.right) if box.right < w else w
    if bottom - top < 8 or right - left < 8:
        return box
    return Box(top, bottom, left, right, box.score)


def fill_fixed(small: Image, fixed: npt.NDArray[np.bool_]) -> Image:
    """`small` (the 64x64 reduction) with the layout's pixels replaced by a normalised-convolution fill of the
    content around them."""
    h, w = small.shape[:2]
    keep = cv2.resize((~fixed).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    keep = (keep > 0.5).astype(np.float32)
    img = small.astype(np.float32)
    k = (FILL_BLUR, FILL_BLUR)
    num = cv2.blur(img * keep[:, :, None], k, borderType=cv2.BORDER_REFLECT)
    den = cv2.blur(keep, k, borderType=cv2.BORDER_REFLECT)[:, :, None]
    fill = np.where(den > 1e-3, num / np.maximum(den, 1e-3), img.reshape(-1, 3).mean(axis=0))
    out = np.where(keep[:, :, None] > 0, img, fill)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class LayoutTracker:
    """One LayoutModel per stream, at most `max_streams` (the least recently seen dropped first)."""

    def __init__(self, max_streams: int = 1024) -> None:  # ~18 KB of history a stream
        self.max_streams = max_streams
        self._models: OrderedDict[str, LayoutModel] = OrderedDict()

    def observe(self, stream_id: str, rgb: Image) -> Layout | None:
        """Remember the sample, then the stream's layout as its history (this sample included) shows it."""
        model = self._models.get(stream_id)
        if model is None:
            model = self._models[stream_id] = LayoutModel()
            while len(self._models) > self.max_streams:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(stream_id)
        model.update(rgb)
        return model.layout()

    def forget(self, stream_id: str) -> None:
        self._models.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._models)
