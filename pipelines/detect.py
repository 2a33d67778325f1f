"""Where the picture is inside a frame: black bars at its edges (letterbox, pillarbox), inner rectangles bounded by
long straight edges (picture-in-picture, inset content) and small boxes in a corner that are overlays (a logo plate,
a chat box, a watermark), evened out. pipelines/robust.py turns what is found here into views to hash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipelines.fingerprint import area_resize

Image = npt.NDArray[np.uint8]

MAX_BOXES = 3  # boxes detect_boxes reports at most


# Bars are searched on a copy at most this long on its longer side, at a quarter of the CPU (a bar edge found to
# +-2 px of a 512-px sample costs PDQ about a bit). Boxes are not: a picture-in-picture window cut 2 px off costs
# far more (measured: PiP recall 97% -> 21% when boxes were searched at 256 px).
DETECT_MAX_SIDE = 256


def _detection_copy(rgb: Image) -> Image:
    h, w = rgb.shape[:2]
    side = max(h, w)
    if side <= DETECT_MAX_SIDE:
        return rgb
    size = (max(16, round(w * DETECT_MAX_SIDE / side)), max(16, round(h * DETECT_MAX_SIDE / side)))
    return area_resize(rgb, size)


@dataclass(frozen=True, slots=True)
class Bars:
    """Pixels of black bar found at each edge (0: none)."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def __bool__(self) -> bool:
        return bool(self.top or self.bottom or self.left or self.right)

    def crop(self, rgb: Image) -> Image:
        h, w = rgb.shape[:2]
        return rgb[self.top : h - self.bottom, self.left : w - self.right]


# -- black bars ------------------------------------------------------------------------------------------------

BLACK_LEVEL = 40.0  # luma (0-255) at or below which a line's mean counts as black; video black is 16 or 0
BAR_MAX_STD = 5.0  # a bar line is flat: compression noise stays under this (measured <= 4 at JPEG q10)
BAR_MAX_BRIGHT = 0.01  # share of pixels brighter than BLACK_LEVEL + 24 tolerated in a bar line
BAR_MIN_FRACTION = 0.02  # thinner runs (and at least 3 px) are not bars
BAR_MAX_FRACTION = 0.40  # a longer dark run is dark content, not a bar: that side is left alone
BAR_STEP = 10.0  # where the bar ends, content starts: one of the next 3 lines differs by this in mean (or in std)


def _luma(rgb: Image) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return out


def _line_stats(luma: npt.NDArray[np.float32], axis: int) -> tuple[npt.NDArray[np.float32], ...]:
    """Per line along `axis` (1: rows, 0: columns): mean, std, and is it a flat near-black line?"""
    mean = luma.mean(axis=axis)
    std = luma.std(axis=axis)
    bright = (luma > BLACK_LEVEL + 24.0).mean(axis=axis)
    flat = ((mean <= BLACK_LEVEL) & (std <= BAR_MAX_STD) & (bright <= BAR_MAX_BRIGHT)).astype(np.float32)
    return mean, std, flat


def _side(mean: npt.NDArray[np.float32], std: npt.NDArray[np.float32], flat: npt.NDArray[np.float32]) -> int:
    """Bar lines at the start of the arrays (0: none). Dark, smooth content also makes flat dark lines; a bar is told
    from it by the step into the content where it ends."""
    size = len(flat)
    stops = np.flatnonzero(flat == 0)
    run = int(stops[0]) if len(stops) else size
    if run < max(3, round(BAR_MIN_FRACTION * size)) or run > BAR_MAX_FRACTION * size:
        return 0
    level = float(np.median(mean[:run]))
    after = slice(run, min(size, run + 3))
    if not (np.any(np.abs(mean[after] - level) >= BAR_STEP) or np.any(std[after] >= 2 * BAR_STEP)):
        return 0
    return min(run + 1, int(BAR_MAX_FRACTION * size))  # one more line: the row where bar and content blend


def detect_bars(rgb: Image) -> Bars:
    """Letterbox (top/bottom) and pillarbox (left/right) bars, in pixels; Bars() when there are none.

    A bar is a run of flat, near-black lines from an edge: at least 2% of the side (3 px), at most 40% (a longer
    run is dark content: nothing is cut on that side), ending in a step into the content (a change of mean or of
    texture within 3 lines: dark but smooth content fades in instead). Rows are tested first; columns are then
    tested within the rows left, so a windowbox (both) is found too.
    """
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return Bars()
    small = _detection_copy(rgb)  # found at most DETECT_MAX_SIDE wide (4x fewer pixels at 512), mapped back
    if small.shape[:2] != (h, w):
        b = detect_bars(small)
        fy, fx = h / small.shape[0], w / small.shape[1]
        # rounded up: a line of bar left in the view costs more bits than a line of content cut off
        return Bars(math.ceil(b.top * fy), math.ceil(b.bottom * fy), math.ceil(b.left * fx), math.ceil(b.right * fx))
    luma = _luma(rgb)
    rows = _line_stats(luma, axis=1)
    top = _side(*rows)
    bottom = _side(*(a[::-1] for a in rows))
    cols = _line_stats(luma[top : h - bottom], axis=0)
    left = _side(*cols)
    right = _side(*(a[::-1] for a in cols))
    return Bars(top, bottom, left, right)


def strip_bars(rgb: Image) -> Image:
    """The frame without its black bars (the frame itself when there are none)."""
    return detect_bars(rgb).crop(rgb)


# -- boxes: inner rectangles bounded by long straight edges ------------------------------------------------------

BOX_EDGE = 12  # colour step (max over channels, across 2 px) that counts as an edge pixel
BOX_MIN_RUN = 0.12  # a line is a straight run of edge pixels at least this share of the frame side
BOX_MIN_SIDE = 0.2  # a box is at least 20% of the frame in each direction ...
BOX_MAX_AREA = 0.9  # ... and less than 90% of its area (the frame itself is hashed anyway)
BOX_MIN_COVERAGE = 0.6  # every inner side of a box is at least this much edge
BOX_MAX_LINES = 8  # strongest lines kept per direction


@dataclass(frozen=True, slots=True)
class Box:
    """Rows top..bottom and columns left..right (exclusive ends) of a detected inner picture."""

    top: int
    bottom: int
    left: int
    right: int
    score: float

    def crop(self, rgb: Image) -> Image:
        return rgb[self.top : self.bottom, self.left : self.right]


def _edge_lines(edges: npt.NDArray[np.uint8], min_run: int) -> list[tuple[int, int]]:
    """(position, strength) of straight runs along the rows of `edges`; adjacent rows merged (a scaled edge blends
    over two or three rows), strongest first."""
    kernel = np.ones((1, min_run), np.uint8)
    eroded = cv2.erode(edges, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    strength = eroded.sum(axis=1, dtype=np.int64)
    merged: list[tuple[int, int]] = []
    for pos in np.flatnonzero(strength):
        s = int(strength[pos])
        if merged and pos - merged[-1][0] <= 2:
            if s > merged[-1][1]:
                merged[-1] = (int(pos), s)
        else:
            merged.append((int(pos), s))
    merged.sort(key=lambda ps: -ps[1])
    return merged[:BOX_MAX_LINES]


def _coverage(edges: npt.NDArray[np.uint8], positions: list[int]) -> npt.NDArray[np.float64]:
    """For each line position (an edge row, +-1 row tolerated) the cumulative edge count along the row, so that the
    coverage of [a, b) is (c[b] - c[a]) / (b - a). Shape (len(positions), L + 1)."""
    n = edges.shape[0]
    out = np.zeros((len(positions), edges.shape[1] + 1), np.float64)
    for i, p in enumerate(positions):
        band = edges[max(0, p - 1) : min(n, p + 2)].max(axis=0)
        out[i, 1:] = np.cumsum(band)
    return out


def _edges(a: Image, b: Image) -> npt.NDArray[np.uint8]:
    """1 where any colour channel differs by more than BOX_EDGE between a and b."""
    d = cv2.absdiff(np.ascontiguousarray(a), np.ascontiguousarray(b))
    r, g, bl = cv2.split(d)  # cv2 on contiguous planes: ~3x faster than numpy over the channel axis
    out: npt.NDArray[np.uint8] = (cv2.max(cv2.max(r, g), bl) > BOX_EDGE).view(np.uint8)
    return out


def detect_boxes(rgb: Image, max_boxes: int = MAX_BOXES) -> list[Box]:
    """Inner rectangles whose inner sides are long straight edges (picture-in-picture, inset content).

    A box side may lie on the frame border (a window in a corner shows two edges); at least two sides must be
    inner edges, each covered by edge pixels for at least 60% of its length. Best first (sum of side coverages),
    overlapping boxes (IoU > 0.7) suppressed. The rows/columns of the edge itself are left out of the box.
    """
    h, w = rgb.shape[:2]
    if h < 16 or w < 16:
        return []
    # Edge strength across two pixels: index i is the boundary around row (column) i + 1.
    ey = _edges(rgb[2:], rgb[:-2])  # (h-2, w): horizontal edges
    ex = np.ascontiguousarray(_edges(rgb[:, 2:], rgb[:, :-2]).T)  # (w-2, h): vertical edges
    hlines = _edge_lines(ey, max(8, round(BOX_MIN_RUN * w)))
    vlines = _edge_lines(ex, max(8, round(BOX_MIN_RUN * h)))
    if len(hlines) + len(vlines) < 2:
        return []
    hpos = [p for p, _ in hlines]
    vpos = [p for p, _ in vlines]
    hcov, vcov = _coverage(ey, hpos), _coverage(ex, vpos)
    # Candidate sides: frame borders (-1: no edge needed) and the lines; coordinates are boundary rows/columns.
    ypos = np.array([0, h] + [p + 1 for p in hpos], np.int64)
    yidx = np.arange(-2, len(hpos), dtype=np.int64).clip(-1)
    xpos = np.array([0, w] + [p + 1 for p in vpos], np.int64)
    xidx = np.arange(-2, len(vpos), dtype=np.int64).clip(-1)
    # Every box (y0, y1, x0, x1) over the candidates at once, axes [y0, y1, x0, x1]: the coverage of each side
    # (NaN for a side on the frame border, which needs no edge).
    top = _side_coverage(hcov, yidx, xpos)  # [y, x0, x1]
    left = _side_coverage(vcov, xidx, ypos)  # [x, y0, y1]
    sides = np.stack(np.broadcast_arrays(
        top[:, None, :, :],  # top side: line y0 over x0..x1
        top[None, :, :, :],  # bottom side: line y1 over x0..x1
        left.transpose(1, 2, 0)[:, :, :, None],  # left side: line x0 over y0..y1
        left.transpose(1, 2, 0)[:, :, None, :],  # right side: line x1 over y0..y1
    ))
    bh = (ypos[None, :] - ypos[:, None])[:, :, None, None]
    bw = (xpos[None, :] - xpos[:, None])[None, None, :, :]
    inner = ~np.isnan(sides)
    n_inner = inner.sum(axis=0)
    worst = np.where(inner, sides, np.inf).min(axis=0)
    total = np.where(inner, sides, 0.0).sum(axis=0)
    ok = ((bh >= BOX_MIN_SIDE * h) & (bw >= BOX_MIN_SIDE * w) & (bh * bw <= BOX_MAX_AREA * h * w)
          & (n_inner >= 2) & (worst >= BOX_MIN_COVERAGE))
    cands = sorted(((float(total[i]), int(ypos[i[0]]), int(ypos[i[1]]), int(xpos[i[2]]), int(xpos[i[3]]))
                    for i in zip(*np.nonzero(ok), strict=True)), reverse=True)
    kept: list[Box] = []
    for score, y0, y1, x0, x1 in cands:
        # leave out the edge rows/columns themselves (they blend content and surroundings)
        box = Box(y0 + 1 if y0 else 0, y1 - 1 if y1 < h else h, x0 + 1 if x0 else 0, x1 - 1 if x1 < w else w, score)
        if all(_iou(box, k) <= 0.7 for k in kept):
            kept.append(box)
            if len(kept) >= max_boxes:
                break
    return kept


def _side_coverage(cov: npt.NDArray[np.float64], idx: npt.NDArray[np.int64],
                   pos: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """[i, a, b]: share of edge pixels of candidate line i between positions pos[a] and pos[b] (NaN where i is a
    frame border or b <= a)."""
    if not len(cov):  # no line in this direction: every side is a frame border
        return np.full((len(idx), len(pos), len(pos)), np.nan)
    ends = np.minimum(pos, cov.shape[1] - 1)
    rows = cov[np.maximum(idx, 0)]  # [i, L+1]
    length = (pos[None, :] - pos[:, None]).astype(np.float64)  # [a, b]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (rows[:, ends][:, None, :] - rows[:, pos][:, :, None]) / length[None]
    out[idx < 0] = np.nan
    out[:, length <= 0] = np.nan
    return out


# An overlay box: in a corner (two sides on the frame border) and at most this share of the frame's area.
OVERLAY_MAX_AREA = 0.2
OVERLAY_RING_PX = 8  # the band around the box whose statistics the evened-out corner takes
OVERLAY_MEDIAN_PX = 9  # text strokes and logo details inside the overlay are median-filtered away first


def is_overlay(box: Box, h: int, w: int) -> bool:
    on_border = (box.top == 0) + (box.bottom == h) + (box.left == 0) + (box.right == w)
    return on_border >= 2 and (box.bottom - box.top) * (box.right - box.left) <= OVERLAY_MAX_AREA * h * w


# A corner inset: a box near a corner (each of two adjacent sides within INSET_MARGIN of the frame border) of
# INSET_MIN_AREA-INSET_MAX_AREA of the frame -- a webcam picture, a logo plate, a sticker panel. What it covers is
# gone; `pipelines.robust.cover_view` inpaints it from the picture around it.
INSET_MARGIN = 0.06
INSET_MIN_AREA = 0.03
INSET_MAX_AREA = 0.30


def is_corner_inset(box: Box, h: int, w: int) -> bool:
    near_top, near_bottom = box.top <= INSET_MARGIN * h, box.bottom >= (1 - INSET_MARGIN) * h
    near_left, near_right = box.left <= INSET_MARGIN * w, box.right >= (1 - INSET_MARGIN) * w
    if near_top == near_bottom or near_left == near_right:  # not in exactly one corner (a band or column is not)
        return False
    return INSET_MIN_AREA * h * w <= (box.bottom - box.top) * (box.right - box.left) <= INSET_MAX_AREA * h * w


def even_out(rgb: Image, box: Box) -> Image | None:
    """The frame with `box` median-filtered and given the mean and contrast of the band around it, per channel.

    A semi-transparent plate scales and shifts what is under it (out = a * in + b): matching the band's mean and
    spread undoes most of that, and an opaque overlay becomes a block of the surroundings' colour. None if the band
    is too small to go by."""
    h, w = rgb.shape[:2]
    y0, y1 = max(0, box.top - OVERLAY_RING_PX), min(h, box.bottom + OVERLAY_RING_PX)
    x0, x1 = max(0, box.left - OVERLAY_RING_PX), min(w, box.right + OVERLAY_RING_PX)
    ring = np.ones((y1 - y0, x1 - x0), bool)
    ring[box.top - y0 : box.bottom - y0, box.left - x0 : box.right - x0] = False
    around = rgb[y0:y1, x0:x1][ring].astype(np.float32)
    if len(around) < 64 or box.bottom - box.top < 3 or box.right - box.left < 3:
        return None
    inside = cv2.medianBlur(np.ascontiguousarray(box.crop(rgb)), OVERLAY_MEDIAN_PX).astype(np.float32)
    mean, std = inside.reshape(-1, 3).mean(axis=0), inside.reshape(-1, 3).std(axis=0)
    gain = np.clip((around.std(axis=0) + 1e-3) / (std + 1e-3), 0.5, 3.0)
    out = rgb.copy()
    out[box.top : box.bottom, box.left : box.right] = np.clip((inside - mean) * gain + around.mean(axis=0), 0, 255)
    return out


def _iou(a: Box, b: Box) -> float:
    ih = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    iw = max(0, min(a.right, b.right) - max(a.left, b.left))
    inter = ih * iw
    union = (a.bottom - a.top) * (a.right - a.left) + (b.bottom - b.top) * (b.right - b.left) - inter
    return inter / union if union else 0.0
