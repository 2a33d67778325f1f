"""Perceptual fingerprints of a scaled RGB frame: PDQ (with quality) and a 256-bit pHash."""

from __future__ import annotations

import cv2
import imagehash
import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image

from pipelines.hamming import Codes

# One thread: every image OpenCV sees here is small (a 512-px sample, its views), and a stream already has a
# thread of its own. OpenCV's pool threads spin in sched_yield between calls (about 5 % of a live stream's CPU).
cv2.setNumThreads(1)

PDQ_DEFAULT_THRESHOLD = 31  # the reference "confident match" distance
PHASH_DEFAULT_THRESHOLD = 40  # pHash 256-bit; unrelated images sit near 128 as with PDQ

DEFAULT_THRESHOLDS = {"pdq": PDQ_DEFAULT_THRESHOLD, "phash": PHASH_DEFAULT_THRESHOLD}
SIGNAL_TYPES = tuple(DEFAULT_THRESHOLDS)


# PDQ reduces every picture to 64x64 (Jarosz tent filters) before its DCT. Reducing it there ourselves with an
# area average (cv2 INTER_AREA) first gives codes as close to the reference hasher's on the original picture as
# hashing the 512-px sample does (measured p50 4 bits against 6), makes the mirrored variants of `pdq_dihedral`
# exact (the reference's filter windows are even-sized at most sample sizes, so its mirrored code drifted ~14 bits),
# and costs about a fifth of the CPU. Bank pictures and samples both go through here.
PDQ_SIDE = 64


def area_resize(rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """The picture area-averaged (cv2 INTER_AREA) to size (width, height): hashing, detection and classifier
    inputs all reduce pictures this way."""
    return np.asarray(cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA), np.uint8)


def hash_input(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The view as PDQ sees it: area-reduced to at most PDQ_SIDE x PDQ_SIDE (aspect not kept: PDQ drops it).
    A view already that small comes back as it is (compute_probes reduces the full frame once for several
    probes)."""
    h, w = rgb.shape[:2]
    size = (min(w, PDQ_SIDE), min(h, PDQ_SIDE))
    if size == (w, h):
        return np.ascontiguousarray(rgb)
    return area_resize(rgb, size)


def pdq(rgb: npt.NDArray[np.uint8]) -> tuple[Codes, int]:
    """PDQ code and quality (0-100). Bit order as ThreatExchange writes hex: first bit is the MSB."""
    bits, quality = pdqhash.compute(hash_input(rgb))
    return np.packbits(np.asarray(bits, dtype=np.uint8)), int(quality)


def phash(rgb: npt.NDArray[np.uint8]) -> Codes:
    """256-bit DCT hash (imagehash.phash with hash_size 16), bits row-major, MSB first."""
    h = imagehash.phash(Image.fromarray(rgb), hash_size=16)
    return np.packbits(np.asarray(h.hash, dtype=np.uint8).ravel())


# The eight dihedral transforms, in the order `pdqhash.compute_dihedral` returns them. Each name is the numpy
# operation on the (H, W, 3) array whose hash that variant approximates: rot90 is np.rot90 (counter-clockwise),
# flip_v is np.flipud, flip_h is np.fliplr (a mirror), transpose swaps the axes, antitranspose is the other diagonal.
DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "flip_v", "flip_h", "transpose", "antitranspose")
# The transform undoing each one (rotations by 90 degrees swap; the rest are their own inverse).
DIHEDRAL_INVERSE = {"rot90": "rot270", "rot270": "rot90"}


def pdq_dihedral(rgb: npt.NDArray[np.uint8]) -> tuple[list[Codes], int]:
    """PDQ codes of the 8 dihedral variants (order of DIHEDRAL) from one DCT, and the quality.

    Variant 0 equals `pdq(rgb)`. Since PDQ is taken from the 64x64 area reduction (`hash_input`), which commutes
    with flips and quarter turns, the others equal the PDQ of the transformed frame up to rounding (measured 0-6
    bits on mirrored pictures; 0-18 bits when the reference hashed the 512x288 frame). Costs about one `pdq` call.
    """
    hashes, quality = pdqhash.compute_dihedral(hash_input(rgb))
    return [np.packbits(np.asarray(h, dtype=np.uint8)) for h in hashes], int(quality)


_PHASH_SIZE = 16
_PHASH_IMG = _PHASH_SIZE * 4
# Rows 0..15 of the unnormalised DCT-II matrix (scipy.fftpack.dct's default), so the low-frequency block of the
# 2-D DCT is C @ P @ C.T: the same coefficients imagehash.phash computes, without importing scipy here.
_k = np.arange(_PHASH_SIZE, dtype=np.float64)[:, None]
_n = np.arange(_PHASH_IMG, dtype=np.float64)[None, :]
_DCT16: npt.NDArray[np.float64] = 2.0 * np.cos(np.pi * _k * (2.0 * _n + 1.0) / (2.0 * _PHASH_IMG))
_SIGN: npt.NDArray[np.float64] = (-1.0) ** np.arange(_PHASH_SIZE, dtype=np.float64)


def _phash_bits(coef: npt.NDArray[np.float64]) -> Codes:
    return np.packbits((coef > np.median(coef)).astype(np.uint8).ravel())


def phash_dihedral(rgb: npt.NDArray[np.uint8]) -> list[Codes]:
    """256-bit pHash of the 8 dihedral variants (order of DIHEDRAL) from one DCT.

    Mirroring the 64x64 picture negates the odd-frequency coefficients along that axis and transposing it
    transposes the coefficients, so every variant is exact up to the rounding of the resize: variant 0 is
    bit-identical to `phash(rgb)`, the flips are too, and the transposing ones differ by 0-4 bits.
    """
    grey = Image.fromarray(np.ascontiguousarray(rgb)).convert("L")
    pixels = np.asarray(grey.resize((_PHASH_IMG, _PHASH_IMG), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _DCT16 @ pixels @ _DCT16.T
    t = d.T
    rows, cols = _SIGN[:, None], _SIGN[None, :]
    variants = (d, t * rows, d * rows * cols, t * cols, d * rows, d * cols, t, t * rows * cols)
    return [_phash_bits(v) for v in variants]
