"""Perceptual fingerprints of a scaled RGB frame: PDQ (with quality) and a 256-bit pHash."""

from __future__ import annotations

import imagehash
import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image

from pipelines.hamming import Codes

PDQ_DEFAULT_THRESHOLD = 31  # the reference "confident match" distance
PHASH_DEFAULT_THRESHOLD = 40  # pHash 256-bit; unrelated images sit near 128 as with PDQ

DEFAULT_THRESHOLDS = {"pdq": PDQ_DEFAULT_THRESHOLD, "phash": PHASH_DEFAULT_THRESHOLD}
SIGNAL_TYPES = tuple(DEFAULT_THRESHOLDS)


def pdq(rgb: npt.NDArray[np.uint8]) -> tuple[Codes, int]:
    """PDQ code and quality (0-100). Bit order as ThreatExchange writes hex: first bit is the MSB."""
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(np.asarray(bits, dtype=np.uint8)), int(quality)


def phash(rgb: npt.NDArray[np.uint8]) -> Codes:
    """256-bit DCT hash (imagehash.phash with hash_size 16), bits row-major, MSB first."""
    h = imagehash.phash(Image.fromarray(rgb), hash_size=16)
    return np.packbits(np.asarray(h.hash, dtype=np.uint8).ravel())
