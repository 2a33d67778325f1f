"""The image benchmark's pictures and hashes: generated originals, ingest scaling, the hashers, the robustness switch
sets, crop-window banks, and the distances of one sample's probes to a bank per switch set (both corpora use it)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import av
import cv2
import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage

from monitor.config.models import IngestConfig
from monitor.ingest.reader import scaled_rgb
from monitor_tools.scans import distances
from pipelines.fingerprint import PDQ_DEFAULT_THRESHOLD, PHASH_DEFAULT_THRESHOLD, pdq, phash
from pipelines.robust import (
    SWITCH_NAMES,
    Probe,
    RobustOptions,
    bank_crop_variants,
    select_probes,
)
from test_streams.images import Background, known_image
from test_streams.transforms import LAYOUT_TRANSFORMS, TRANSFORMS, composition

Image = npt.NDArray[np.uint8]
Codes = npt.NDArray[np.uint8]

WIDTH, HEIGHT = 640, 360
INGEST_WIDTH = IngestConfig().scale_width  # the monitor's default; `--width` measures another
MIN_QUALITY = 50
PRECISION_TARGET = 0.9999
NO_MATCH = 257  # distance standing for "no usable probe" (every view under the quality gate)
SAMPLES_PER_HOUR = 1800  # one sample every 2 s
BANK_SIZE = 1_000_000


def _only(*names: str) -> RobustOptions:
    return RobustOptions(**{n: n in names for n in SWITCH_NAMES})


SWITCHES: dict[str, RobustOptions] = {
    "none": RobustOptions.none(),
    **{name: _only(name) for name in SWITCH_NAMES},
    "default": RobustOptions(),
    "default+crops": replace(RobustOptions(), crops=True),
    "default+pip": replace(RobustOptions(), pip=True),
    "all": RobustOptions.all(),
}
DEFAULT_KEY = "pipeline/default"
# A bank given this wider threshold alerts on matches beyond incidents.strong_distance (31) only when 2 of 3
# samples confirm them: the targets table also shows recall there (docs/eval-images.md).
WIDE_THRESHOLD = 44


def say(msg: str) -> None:
    print(f"[eval_images] {msg}", file=sys.stderr, flush=True)


# -- pictures --------------------------------------------------------------------------------------------------


_width = [INGEST_WIDTH]  # every picture of one run is scaled to the same width (`--width`)


def set_ingest_width(width: int) -> None:
    """The width every picture of this run is scaled to (monitor_tools/eval/images/cli.py sets it once)."""
    _width[0] = width


def ingest_width() -> int:
    return _width[0]


def ingest_scale(rgb: Image, width: int | None = None) -> Image:
    """Scale as the monitor does a keyframe (monitor.ingest.reader.scaled_rgb: libswscale, aspect kept, never up)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return scaled_rgb(frame, width or _width[0])


def original(index: int, attempt: int = 0) -> tuple[str, Image]:
    """Style by index (known_image, Background frame, composition); `attempt` moves to another seed."""
    seed = index + 100_000 * attempt
    style = ("known_image", "background", "composition")[index % 3]
    if style == "known_image":
        return style, known_image(seed, WIDTH, HEIGHT)
    if style == "background":  # drawn at half size (4x cheaper) and scaled up, like a low-resolution source
        small = Background(50_000 + seed, WIDTH // 2, HEIGHT // 2).frame(0.37 * seed)
        return style, np.asarray(cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC), dtype=np.uint8)
    return style, composition(seed, WIDTH, HEIGHT)


def make_originals(n: int) -> tuple[list[str], list[Image]]:
    styles, images = [], []
    for i in range(n):
        for attempt in range(10):
            style, img = original(i, attempt)
            if pdq(ingest_scale(img))[1] >= MIN_QUALITY:
                break
        styles.append(style)
        images.append(img)
    return styles, images

# -- hashing ---------------------------------------------------------------------------------------------------


def dhash(rgb: Image) -> Codes:
    h = imagehash.dhash(PILImage.fromarray(rgb), hash_size=16)
    return np.packbits(np.asarray(h.hash, dtype=np.uint8).ravel())


GLOBAL_HASHERS: dict[str, Callable[[Image], Codes]] = {"pdq": lambda im: pdq(im)[0], "phash": phash, "dhash": dhash}
DEFAULT_THRESHOLDS: dict[str, int | None] = {"pdq": PDQ_DEFAULT_THRESHOLD, "phash": PHASH_DEFAULT_THRESHOLD,
                                             "dhash": None}


BANK_CROPS_KEY = "pipeline/default+bank-crops"


def crop_bank(scaled: Sequence[Image]) -> tuple[Codes, npt.NDArray[np.intp]]:
    """Every original's code plus the codes of its crop windows (`monitor hash --crops`), and the start of each
    original's run of rows (for np.minimum.reduceat)."""
    codes: list[Codes] = []
    starts: list[int] = []
    for img in scaled:
        starts.append(len(codes))
        codes.append(pdq(img)[0])
        codes += [c for c, q in (pdq(v) for _, v in bank_crop_variants(img)) if q >= MIN_QUALITY]
    return np.stack(codes), np.array(starts, np.intp)


def bank_crops_row(probes: list[Probe], bank: tuple[Codes, npt.NDArray[np.intp]], n: int, own: int,
                    pair_hist: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.int32]:
    """The default switches against the bank with crop windows: per original, min over probes and windows."""
    usable = [p for p in select_probes(probes, SWITCHES["default"]) if p.quality >= MIN_QUALITY]
    if not usable:
        return np.full(n, NO_MATCH, np.int32)
    codes, starts = bank
    d = np.minimum.reduceat(distances(np.stack([p.codes["pdq"] for p in usable]), codes).min(axis=0), starts)
    hist = pair_hist.setdefault(BANK_CROPS_KEY, np.zeros(257, np.int64))
    hist += np.bincount(np.delete(d, own), minlength=257)[:257]
    return d.astype(np.int32)


def apply_transform(name: str, img: Image, seed: int, pool: Sequence[Image]) -> Image:
    """A transform of test_streams.transforms by name; the layout ones draw their decorations from `pool`."""
    if name in LAYOUT_TRANSFORMS:
        return LAYOUT_TRANSFORMS[name](img, seed, pool)
    return TRANSFORMS[name](img, seed)


def usable_probes(probes: Sequence[Probe]) -> list[Probe]:
    """The probes a matcher looks up: views under the quality gate left out."""
    return [p for p in probes if p.quality >= MIN_QUALITY]


def switch_distances(usable: Sequence[Probe], bank: Codes,
                     names: Iterable[str]) -> dict[str, npt.NDArray[np.int32] | None]:
    """Per switch set (a key of SWITCHES): the distances of the set's usable probes to every bank code, one row a
    probe; None when the set keeps no usable probe. A sample's distance to an original is the column's minimum."""
    d_all = distances(np.stack([p.codes["pdq"] for p in usable]), bank) if usable else None
    index = {id(p): i for i, p in enumerate(usable)}
    out: dict[str, npt.NDArray[np.int32] | None] = {}
    for name in names:
        sel = [index[id(p)] for p in select_probes(list(usable), SWITCHES[name])]
        out[name] = d_all[sel] if d_all is not None and sel else None
    return out
