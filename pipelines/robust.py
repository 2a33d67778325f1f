"""Robustness before hashing: the views and variants of one sample that are looked up in the banks.

A global hash (PDQ, pHash) of the whole frame is defeated by black bars, mirroring, rotation and cropping
(docs/eval-images.md). Each switch here adds probes -- (view, variant, code)
triples -- that are looked up alongside the plain hash of the full frame:

- `strip_bars`: detect letterbox/pillarbox bars (near-black, flat rows/columns at the edges) and also hash the
  frame without them. The full frame is always hashed too: the bank entry may contain the bars itself.
- `dihedral`: the 8 rotations/mirrors of the full (and bar-stripped) frame, all from one DCT
  (`pdq_dihedral`, `phash_dihedral`), so the hashing cost is that of one hash; the lookups are 8x.
- `crops`: centre 90% and 80% crops and the four 90% corner crops. They find a bank picture shown with something
  around it (an overlay frame, a border) when it sits exactly there; they cannot find a picture shown cropped (the
  sample then holds less than the entry, and cutting it further does not bring that back). Identity orientation
  only (dihedral x crops would be 48 lookups per sample).
- `pip`: picture-in-picture search at fixed places: the four quadrants and the centre, each a quarter of the area.
  PDQ does not survive a shift of more than 1-2% of the picture, so this only finds a window that sits exactly in a
  quadrant; `boxes` finds it wherever it is.
- `tones`: the frame re-toned by four gamma curves (`TONE_GAMMAS`): a stream whose brightness, contrast or gamma
  was changed moves PDQ by up to ~40 bits (gamma recall at 31: 96.3% -> 99.0%, docs/eval-images.md). Identity
  orientation only.
- `reextend`: the frame as the crop of a larger original: the 64x64 reduction PDQ hashes is shrunk to 95 % and
  re-extended to 64x64 by repeating its edge pixels, the missing 5 % placed on a 4x4 grid of positions
  (`REEXTEND_FRACTION`, `REEXTEND_STEPS`). A clip shown cropped lacks its border; PDQ is dominated by low
  frequencies, and a picture at its original scale and place with a smeared border is nearer its bank code than the
  crop itself (tuning split, natural pictures: crop 5 % recall at 31: 0.9 % -> 72 %, at ~1 ms). 16 probes of 64x64.
- `strips`: the frame with an edge strip replaced by its neighbouring row or column repeated: the bottom and top 20 %
  and 12 % (a ticker or caption band over the picture) and the right and left 30 % (a chat column), `STRIPS`. The
  strip's content is gone either way; smearing the edge of what is left keeps PDQ's low frequencies nearer the
  picture's than the band's or column's block does (tuning split: band 47 -> 60 %, chat 20 -> 26 %; the 12 % strips:
  band 60 -> 65 %). 6 probes of 64x64.
- `tilts`: the frame turned back by small angles (`TILT_ANGLES`, ±2 degrees) on the 64x64 reduction, its corners
  filled by reflection: a re-streamed picture slightly rotated (a phone filming a screen, a tilted layout window)
  moves PDQ past 31 bits within a degree or two (tuning split, rotations of 1-3 degrees: 21 -> 68 %). 2 probes.
- `layout` (the matcher's, per stream, not a switch of `compute_probes`): what stays fixed over a stream's samples
  while the content changes (pipelines/layout.py): the content window cut out and the frame with the layout filled
  from the content around it (`layout_probes`). Stream mode of the benchmark, tuning split: picture-in-picture
  30-60 % 64 -> 84 %, chat 27 -> 36 %, webcam 5 -> 20 %.
- `boxes`: inner rectangles found by long straight edges (`detect_boxes`): a picture-in-picture window, content
  inset in a stream layout or framed by a non-black border. Up to 3 per sample. Each box is also hashed with its
  sides moved to the strongest straight edge within 8 px (`refine_window`, as for the layout's window): a box found
  1-2 px inside its window's edges costs PDQ more than the window's border does (tuning split: picture-in-picture
  30-60 % 59 -> 73 %, 25-30 % 33 -> 60 %; the true box would give 97 %). A box near one corner of the frame
  (`is_corner_inset`: a webcam picture, a panel) is also inpainted from the picture around it (`cover_view`,
  Telea on the 64x64 reduction; tuning split, webcam insets: 9 -> 30 %). A small box in a corner is more
  often an overlay on the picture (a logo plate, a chat box, a semi-transparent watermark): the frame is also
  hashed with that corner evened out (`even_out`), which takes the overlay's dark or bright block out of PDQ's low
  frequencies (watermark recall at 31: 55% -> 81%, docs/eval-images.md).

Bars, boxes and overlays are found by pipelines/detect.py. Crops and picture-in-picture views are cut from the full
frame (so that every switch adds probes independently of the others, and the benchmark can score each switch from
one hashing pass: `select_probes`).
Every view carries its own PDQ quality; the matcher ignores views below its minimum quality.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.detect import (
    MAX_BOXES,
    Box,
    Image,
    detect_bars,
    detect_boxes,
    even_out,
    is_corner_inset,
    is_overlay,
)
from pipelines.fingerprint import (
    DIHEDRAL,
    DIHEDRAL_INVERSE,
    area_resize,
    hash_input,
    pdq,
    pdq_dihedral,
    phash,
    phash_dihedral,
)
from pipelines.hamming import Codes
from pipelines.layout import Layout, fill_fixed, frame_luma, refine_window

SWITCH_NAMES = ("strip_bars", "dihedral", "crops", "pip", "boxes", "tones", "reextend", "strips", "tilts")
FULL = "full"
STRIPPED = "stripped"
CROP_VIEWS = ("crop90_c", "crop80_c", "crop90_tl", "crop90_tr", "crop90_bl", "crop90_br")
PIP_VIEWS = ("pip_tl", "pip_tr", "pip_bl", "pip_br", "pip_c")
BOX_VIEWS = tuple(f"box{i + 1}" for i in range(MAX_BOXES))
OVERLAY_VIEWS = tuple(f"overlay{i + 1}" for i in range(MAX_BOXES))
COVER_VIEWS = tuple(f"cover{i + 1}" for i in range(MAX_BOXES))
SNAP_VIEWS = tuple(f"boxsnap{i + 1}" for i in range(MAX_BOXES))
# `boxes`, corner insets: the box, its sides rounded outwards on the 64x64 reduction, is inpainted (Telea) with this
# radius. Chosen on the tuning split (docs/eval-images.md; growing it by 1-2 more pixels for its border did worse).
COVER_RADIUS = 5
# `tones`: the frame re-toned by these gammas (undoing a stream's gamma of 0.65, 0.8, 1.35, 1.55), applied to the
# 64x64 reduction PDQ hashes anyway, so each costs a lookup table and a PDQ of 64x64 (~0.1 ms).
TONE_GAMMAS = (1 / 0.65, 1 / 0.8, 1 / 1.35, 1 / 1.55)
TONE_VIEWS = tuple(f"tone{i + 1}" for i in range(len(TONE_GAMMAS)))
# `reextend`: the share of each side a crop is assumed to have cut away, and the grid of positions of the missing part
# (0: all of it at the top/left ... 1: all at the bottom/right). Chosen on the tuning split (docs/eval-images.md).
REEXTEND_FRACTION = 0.05
REEXTEND_STEPS = (0.0, 1 / 3, 2 / 3, 1.0)
REEXTEND_VIEWS = tuple(f"reext_{iy}{ix}" for iy in range(len(REEXTEND_STEPS)) for ix in range(len(REEXTEND_STEPS)))
# `strips`: (view name, edge, share of the side) of each strip smeared over.
STRIPS = (("strip_b20", "bottom", 0.20), ("strip_t20", "top", 0.20), ("strip_r30", "right", 0.30),
          ("strip_l30", "left", 0.30), ("strip_b12", "bottom", 0.12), ("strip_t12", "top", 0.12))
STRIP_VIEWS = tuple(name for name, _, _ in STRIPS)
# `tilts`: the angles (degrees, counter-clockwise) the frame is turned by to undo a small rotation.
TILT_ANGLES = (-2.0, 2.0)
TILT_VIEWS = tuple(f"tilt{a:+g}" for a in TILT_ANGLES)
LAYOUT_VIEWS = ("layout_window", "layout_fill")
_TONE_LUTS = [np.clip((np.arange(256) / 255.0) ** g * 255.0 + 0.5, 0, 255).astype(np.uint8) for g in TONE_GAMMAS]


@dataclass(frozen=True, slots=True)
class RobustOptions:
    """Which probes to hash. The defaults are the recommended configuration (docs/eval-images.md)."""

    strip_bars: bool = True
    dihedral: bool = True
    crops: bool = False
    pip: bool = False
    boxes: bool = True
    tones: bool = True
    reextend: bool = True
    strips: bool = True
    tilts: bool = True

    @classmethod
    def none(cls) -> RobustOptions:
        return cls(**dict.fromkeys(SWITCH_NAMES, False))

    @classmethod
    def all(cls) -> RobustOptions:
        return cls(**dict.fromkeys(SWITCH_NAMES, True))

    def label(self) -> str:
        on = [n for n in SWITCH_NAMES if getattr(self, n)]
        return "+".join(on) if on else "none"

@dataclass(frozen=True, slots=True)
class Probe:
    """One hash of one view of a sample. `variant` is the dihedral operation applied to the view."""

    view: str
    variant: str
    quality: int
    codes: dict[str, Codes]  # signal type -> code

    @property
    def shown_as(self) -> str:
        """How the stream shows the bank's picture: the inverse of `variant` ('flip_h' means mirrored)."""
        return DIHEDRAL_INVERSE.get(self.variant, self.variant)

    @property
    def name(self) -> str:
        """`<view>:<transform the stream applied>`, e.g. 'full:identity', 'stripped:flip_h', 'crop90_tl:identity'."""
        return f"{self.view}:{self.shown_as}"

# -- crops and picture-in-picture ------------------------------------------------------------------------------


def _window(rgb: Image, fh: float, fw: float, ay: float, ax: float) -> Image:
    """A window of fh x fw of the frame, its free margin split ay:1-ay vertically and ax:1-ax horizontally."""
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * fh)), max(1, round(w * fw))
    y, x = round((h - ch) * ay), round((w - cw) * ax)
    return rgb[y : y + ch, x : x + cw]


def crop_views(rgb: Image) -> Iterator[tuple[str, Image]]:
    """Centre 90% and 80% (per side length), then the four 90% corner crops (names in CROP_VIEWS)."""
    yield "crop90_c", _window(rgb, 0.9, 0.9, 0.5, 0.5)
    yield "crop80_c", _window(rgb, 0.8, 0.8, 0.5, 0.5)
    for name, ay, ax in (("crop90_tl", 0, 0), ("crop90_tr", 0, 1), ("crop90_bl", 1, 0), ("crop90_br", 1, 1)):
        yield name, _window(rgb, 0.9, 0.9, ay, ax)


# Bank-side crop variants. A picture shown cropped holds less than its bank entry, and nothing done to the sample
# brings the missing part back; hashing windows of the ORIGINAL (where a bank is built from pictures) does. PDQ
# survives a misalignment of about 1-2% of the picture, so the windows sit on a grid fine enough that every window
# position of the crop is within ~1.3% of one of them: 90% windows on a 5x5 grid, 95% windows on a 3x3 grid.
# Measured (docs/eval-images.md): 10% crop recall 0% -> 77%, 5% crop 2% -> 80%, at the cost of 34 extra codes per
# picture in the bank.
BANK_CROP_GRIDS = ((0.90, 5), (0.95, 3))


def bank_crop_variants(rgb: Image) -> Iterator[tuple[str, Image]]:
    """Windows of a bank picture to hash alongside it, named `crop<keep%>_<row><col>` (e.g. crop90_24)."""
    for keep, n in BANK_CROP_GRIDS:
        steps = [i / (n - 1) for i in range(n)]
        for iy, ay in enumerate(steps):
            for ix, ax in enumerate(steps):
                yield f"crop{round(keep * 100)}_{iy}{ix}", _window(rgb, keep, keep, ay, ax)


def pip_views(rgb: Image) -> Iterator[tuple[str, Image]]:
    """The four quadrants and the centre, each half the width and half the height (names in PIP_VIEWS)."""
    for name, ay, ax in (("pip_tl", 0, 0), ("pip_tr", 0, 1), ("pip_bl", 1, 0), ("pip_br", 1, 1), ("pip_c", 0.5, 0.5)):
        yield name, _window(rgb, 0.5, 0.5, ay, ax)


def reextend_views(small: Image) -> Iterator[tuple[str, Image]]:
    """The 64x64 reduction `small` shrunk to (1 - REEXTEND_FRACTION) of each side and padded back to its size by
    repeating edge pixels, the padding split at each REEXTEND_STEPS position (names in REEXTEND_VIEWS)."""
    h, w = small.shape[:2]
    if h < 8 or w < 8:  # no room for a border of a few percent
        return
    ih, iw = max(1, round(h * (1 - REEXTEND_FRACTION))), max(1, round(w * (1 - REEXTEND_FRACTION)))
    inner = area_resize(small, (iw, ih))
    names = iter(REEXTEND_VIEWS)
    for ay in REEXTEND_STEPS:
        for ax in REEXTEND_STEPS:
            top, left = round((h - ih) * ay), round((w - iw) * ax)
            yield next(names), np.asarray(cv2.copyMakeBorder(inner, top, h - ih - top, left, w - iw - left,
                                                             cv2.BORDER_REPLICATE), np.uint8)


def strip_views(small: Image) -> Iterator[tuple[str, Image]]:
    """`small` with each strip of STRIPS replaced by the row or column next to it, repeated (names in STRIP_VIEWS)."""
    h, w = small.shape[:2]
    if h < 8 or w < 8:  # too small to keep anything of the picture beside a strip
        return
    for name, edge, share in STRIPS:
        k = max(1, round(share * (h if edge in ("top", "bottom") else w)))
        rest = {"bottom": small[: h - k], "top": small[k:], "right": small[:, : w - k], "left": small[:, k:]}[edge]
        pad = {"bottom": (0, k, 0, 0), "top": (k, 0, 0, 0), "right": (0, 0, 0, k), "left": (0, 0, k, 0)}[edge]
        yield name, np.asarray(cv2.copyMakeBorder(rest, *pad, cv2.BORDER_REPLICATE), np.uint8)


def cover_view(small: Image, box: Box, h: int, w: int) -> Image:
    """`small` (the 64x64 reduction of an h x w frame) with `box`, its sides rounded outwards, inpainted from the
    picture around it."""
    sh, sw = small.shape[:2]
    mask = np.zeros((sh, sw), np.uint8)
    top, bottom = box.top * sh // h, min(sh, -(-box.bottom * sh // h))
    left, right = box.left * sw // w, min(sw, -(-box.right * sw // w))
    mask[top:bottom, left:right] = 255
    return np.asarray(cv2.inpaint(np.ascontiguousarray(small), mask, COVER_RADIUS, cv2.INPAINT_TELEA), np.uint8)


def tilt_views(small: Image) -> Iterator[tuple[str, Image]]:
    """`small` (the 64x64 reduction) turned about its centre by each of TILT_ANGLES, the uncovered corners filled by
    reflection (names in TILT_VIEWS)."""
    h, w = small.shape[:2]
    if h < 8 or w < 8:
        return
    for name, angle in zip(TILT_VIEWS, TILT_ANGLES, strict=True):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        yield name, np.asarray(cv2.warpAffine(np.ascontiguousarray(small), m, (w, h), flags=cv2.INTER_LINEAR,
                                              borderMode=cv2.BORDER_REFLECT), np.uint8)


# -- probes ----------------------------------------------------------------------------------------------------


def _view_probes(view: str, rgb: Image, dihedral: bool, signals: Collection[str]) -> list[Probe]:
    rgb = np.ascontiguousarray(rgb)
    if not dihedral:
        code, quality = pdq(rgb)
        codes = {"pdq": code}
        if "phash" in signals:
            codes["phash"] = phash(rgb)
        return [Probe(view, "identity", quality, codes)]
    pdqs, quality = pdq_dihedral(rgb)
    phs = phash_dihedral(rgb) if "phash" in signals else None
    out = []
    for i, variant in enumerate(DIHEDRAL):
        codes = {"pdq": pdqs[i]}
        if phs is not None:
            codes["phash"] = phs[i]
        out.append(Probe(view, variant, quality, codes))
    return out


def compute_probes(
    rgb: Image, options: RobustOptions | None = None, signals: Collection[str] = ("pdq",)
) -> list[Probe]:
    """Every probe of one sample, the plain full-frame hash first. PDQ is always computed (it carries the
    quality); pHash only when "phash" is in `signals`."""
    opts = RobustOptions() if options is None else options
    small = hash_input(rgb)  # the full frame as PDQ sees it, reduced once for the plain, dihedral and tone probes
    probes = _view_probes(FULL, small, opts.dihedral, signals)
    if opts.strip_bars:
        bars = detect_bars(rgb)
        if bars:
            probes += _view_probes(STRIPPED, bars.crop(rgb), opts.dihedral, signals)
    if opts.tones:
        for name, table in zip(TONE_VIEWS, _TONE_LUTS, strict=True):
            probes += _view_probes(name, np.asarray(cv2.LUT(small, table), np.uint8), False, signals)
    if opts.reextend:
        for name, view in reextend_views(small):
            probes += _view_probes(name, view, False, signals)
    if opts.strips:
        for name, view in strip_views(small):
            probes += _view_probes(name, view, False, signals)
    if opts.tilts:
        for name, view in tilt_views(small):
            probes += _view_probes(name, view, False, signals)
    if opts.crops:
        for name, view in crop_views(rgb):
            probes += _view_probes(name, view, False, signals)
    if opts.pip:
        for name, view in pip_views(rgb):
            probes += _view_probes(name, view, False, signals)
    if opts.boxes:
        h, w = rgb.shape[:2]
        boxes = detect_boxes(rgb)
        luma = frame_luma(rgb) if boxes else None
        views = zip(BOX_VIEWS, SNAP_VIEWS, OVERLAY_VIEWS, COVER_VIEWS, boxes, strict=False)
        for name, snap, overlay, cover, box in views:
            probes += _view_probes(name, box.crop(rgb), False, signals)
            snapped = refine_window(rgb, box, luma)
            if (snapped.top, snapped.bottom, snapped.left, snapped.right) != (box.top, box.bottom, box.left, box.right):
                probes += _view_probes(snap, snapped.crop(rgb), False, signals)
            evened = even_out(rgb, box) if is_overlay(box, h, w) else None
            if evened is not None:
                probes += _view_probes(overlay, evened, False, signals)
            if is_corner_inset(box, h, w):
                probes += _view_probes(cover, cover_view(small, box, h, w), False, signals)
    return probes


def layout_probes(rgb: Image, layout: Layout, signals: Collection[str] = ("pdq",)) -> list[Probe]:
    """The probes a stream's layout (pipelines/layout.py) adds to a sample's: the content window cut out, its
    sides snapped to the sample's edges, and the 64x64 reduction with the layout's pixels filled from the content
    around them. Identity orientation only."""
    probes = []
    if layout.window is not None:
        probes += _view_probes("layout_window", refine_window(rgb, layout.window).crop(rgb), False, signals)
    probes += _view_probes("layout_fill", fill_fixed(hash_input(rgb), layout.fixed), False, signals)
    return probes


def select_probes(probes: list[Probe], options: RobustOptions) -> list[Probe]:
    """The probes `compute_probes(rgb, options)` would give, picked out of those computed with every switch on
    (the benchmark hashes each sample once and scores every switch from that)."""
    keep = []
    for p in probes:
        if p.view == FULL or (p.view == STRIPPED and options.strip_bars):
            if options.dihedral or p.variant == "identity":
                keep.append(p)
        elif (
            (p.view in CROP_VIEWS and options.crops)
            or (p.view in PIP_VIEWS and options.pip)
            or (p.view in BOX_VIEWS + SNAP_VIEWS + OVERLAY_VIEWS + COVER_VIEWS and options.boxes)
            or (p.view in TONE_VIEWS and options.tones)
            or (p.view in REEXTEND_VIEWS and options.reextend)
            or (p.view in STRIP_VIEWS and options.strips)
            or (p.view in TILT_VIEWS and options.tilts)
        ):
            keep.append(p)
    return keep
