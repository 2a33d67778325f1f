"""Benign generated pictures: 'known images' for banks and moving backgrounds for streams.

Everything is drawn from a seed, so a test can regenerate exactly the picture a bank was made from.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> npt.NDArray[np.float32]:
    """Value noise: a coarse random grid upsampled bilinearly, so the picture has structure at that scale."""
    gh, gw = cells, max(2, round(cells * w / h))
    grid = rng.random((gh + 1, gw + 1), dtype=np.float32)
    ys = np.linspace(0, gh, h, dtype=np.float32)
    xs = np.linspace(0, gw, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), gh - 1)
    x0 = np.minimum(xs.astype(int), gw - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    out: npt.NDArray[np.float32] = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return out


def known_image(seed: int, width: int = 1280, height: int = 720) -> Image:
    """A colourful abstract picture (blobs, bands and discs) with strong structure: PDQ quality near 100."""
    rng = np.random.default_rng(10_000 + seed)
    layers = [_smooth_noise(rng, height, width, cells) for cells in (3, 6, 12)]
    base = 0.55 * layers[0] + 0.3 * layers[1] + 0.15 * layers[2]
    img = np.empty((height, width, 3), dtype=np.float32)
    phase = rng.random(3) * 2 * np.pi
    for ch in range(3):
        img[..., ch] = 0.5 + 0.5 * np.sin(base * 6.0 + phase[ch])
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(6):  # a few discs of flat colour give sharp edges
        cy, cx = rng.random() * height, rng.random() * width
        r = (0.05 + 0.15 * rng.random()) * height
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = rng.random(3)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


class Background:
    """Moving 'video-like' content: a slow pan and zoom over a large generated texture."""

    def __init__(self, seed: int, width: int, height: int) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        th, tw = height * 2, width * 2
        tex = np.empty((th, tw, 3), dtype=np.float32)
        for ch in range(3):
            tex[..., ch] = 0.6 * _smooth_noise(rng, th, tw, 5) + 0.4 * _smooth_noise(rng, th, tw, 20)
        self.texture = (tex * 255).astype(np.uint8)
        self.speed = 1.0 + rng.random() * 2.0

    def frame(self, t: float) -> Image:
        th, tw = self.texture.shape[:2]
        span_x, span_y = tw - self.width, th - self.height
        x = int((0.5 + 0.5 * np.sin(t * 0.21 * self.speed)) * span_x)
        y = int((0.5 + 0.5 * np.cos(t * 0.17 * self.speed)) * span_y)
        return np.ascontiguousarray(self.texture[y : y + self.height, x : x + self.width])
