"""Synthetic transforms of a picture, as a stream or a re-upload might apply them, plus two more generators of
benign pictures (geometric compositions and soft backgrounds) for the image benchmark (monitor/eval_images.py).

Every transform takes an RGB uint8 (H, W, 3) array and a seed and returns a new RGB uint8 array; the same
(picture, seed) always gives the same result. `TRANSFORMS` names them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage

Image = npt.NDArray[np.uint8]
Transform = Callable[[Image, int], Image]


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, salt])


def _resize(img: Image, width: int, height: int) -> Image:
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(img, (width, height), interpolation=interp), dtype=np.uint8)


# -- building blocks -------------------------------------------------------------------------------------------


def jpeg(img: Image, quality: int) -> Image:
    """Encode as JPEG (4:2:0, like video) and decode again."""
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with PILImage.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def downscale(img: Image, height: int) -> Image:
    """Scale down to `height` lines (aspect kept) and back up to the original size."""
    h, w = img.shape[:2]
    small = _resize(img, max(2, round(w * height / h)), height)
    return _resize(small, w, h)


def place(canvas: Image, content: Image, y: int, x: int) -> Image:
    out = canvas.copy()
    ch, cw = content.shape[:2]
    out[y : y + ch, x : x + cw] = content
    return out


def black(height: int, width: int, level: int = 0) -> Image:
    return np.full((height, width, 3), level, dtype=np.uint8)


def boxed(img: Image, frame_aspect: float, content_aspect: float, level: int = 0) -> Image:
    """The picture scaled to `content_aspect` (w/h) and centred in a black frame of `frame_aspect`, the frame as
    wide (letterbox) or as high (pillarbox) as the picture. Global hashes resize to a square, so the aspect
    change alone is nearly free for them: what is tested is the bars."""
    h, w = img.shape[:2]
    if frame_aspect < content_aspect:  # letterbox: bars top and bottom
        fw, fh = w, round(w / frame_aspect)
        cw, ch = w, round(w / content_aspect)
    else:  # pillarbox: bars left and right
        fh, fw = h, round(h * frame_aspect)
        ch, cw = h, round(h * content_aspect)
    return place(black(fh, fw, level), _resize(img, cw, ch), (fh - ch) // 2, (fw - cw) // 2)


# -- the transforms --------------------------------------------------------------------------------------------


def reencode(img: Image, seed: int) -> Image:
    """Low-quality JPEG re-encode (quality 20-30)."""
    return jpeg(img, int(_rng(seed, 1).integers(20, 31)))


def blocky(img: Image, seed: int) -> Image:
    """H.264-like blockiness at a starved bitrate: half resolution, JPEG quality 8-12, back to full size."""
    h, w = img.shape[:2]
    small = _resize(img, w // 2, h // 2)
    return _resize(jpeg(small, int(_rng(seed, 2).integers(8, 13))), w, h)


def downscale_half(img: Image, seed: int) -> Image:
    """Down to half height (360p for 720p content) and back."""
    return downscale(img, img.shape[0] // 2)


def letterbox(img: Image, seed: int) -> Image:
    """16:9 content in a 4:3 frame: bars top and bottom (12.5% of the height each); bars near-black, level 0-12."""
    return boxed(img, 4 / 3, 16 / 9, int(_rng(seed, 3).integers(0, 13)))


def pillarbox(img: Image, seed: int) -> Image:
    """4:3 content in a 16:9 frame: bars left and right (12.5% of the width each)."""
    return boxed(img, 16 / 9, 4 / 3, int(_rng(seed, 4).integers(0, 13)))


def pad20(img: Image, seed: int) -> Image:
    """A near-black border adding 20% to each dimension (10% of it on each side)."""
    h, w = img.shape[:2]
    py, px = round(0.1 * h), round(0.1 * w)
    return place(black(h + 2 * py, w + 2 * px, int(_rng(seed, 5).integers(0, 13))), img, py, px)


def watermark(img: Image, seed: int) -> Image:
    """A semi-transparent logo plate with text-like strokes in a corner, about 10% of the area."""
    rng = _rng(seed, 6)
    h, w = img.shape[:2]
    bh, bw = round(h * 0.316), round(w * 0.316)
    y = int(rng.integers(0, 2)) * (h - bh)
    x = int(rng.integers(0, 2)) * (w - bw)
    plate = np.zeros((bh, bw), np.float32)
    plate[:] = 0.45
    glyphs = np.zeros((bh, bw), np.uint8)
    lines = int(rng.integers(2, 4))
    lh = bh // (lines + 1)
    for li in range(lines):
        cx = int(bw * 0.08)
        gy = (li + 1) * lh - lh // 3
        while cx < bw * 0.9:  # blocky "letters": a few strokes each
            gw = int(rng.integers(lh // 3, lh // 2 + 2))
            for _ in range(3):
                x0, y0 = cx + int(rng.integers(0, gw)), gy + int(rng.integers(-lh // 3, 1))
                x1, y1 = cx + int(rng.integers(0, gw)), gy - int(rng.integers(0, lh // 2))
                cv2.line(glyphs, (x0, y0), (x1, y1), 255, max(1, lh // 8))
            cx += gw + int(rng.integers(2, lh // 3 + 3))
    alpha = np.maximum(plate, glyphs.astype(np.float32) / 255.0 * 0.75)[..., None]
    colour = np.where(glyphs[..., None] > 0, 255.0, 20.0).astype(np.float32)
    out = img.astype(np.float32)
    region = out[y : y + bh, x : x + bw]
    out[y : y + bh, x : x + bw] = region * (1 - alpha) + colour * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def mirror(img: Image, seed: int) -> Image:
    """Horizontal flip."""
    return np.ascontiguousarray(img[:, ::-1])


def rotate90(img: Image, seed: int) -> Image:
    """A quarter turn, clockwise for even seeds and counter-clockwise for odd ones."""
    return np.ascontiguousarray(np.rot90(img, -1 if seed % 2 == 0 else 1))


def crop(img: Image, fraction: float, seed: int) -> Image:
    """Keep (1 - fraction) of the width and of the height, the window at a random position."""
    rng = _rng(seed, 7)
    h, w = img.shape[:2]
    ch, cw = round(h * (1 - fraction)), round(w * (1 - fraction))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return img[y : y + ch, x : x + cw].copy()


def crop5(img: Image, seed: int) -> Image:
    """5% of each dimension cut away (random window position)."""
    return crop(img, 0.05, seed)


def crop10(img: Image, seed: int) -> Image:
    """10% of each dimension cut away (random window position)."""
    return crop(img, 0.10, seed)


def gamma(img: Image, seed: int) -> Image:
    """Gamma 0.6-0.8 or 1.3-1.6, per-channel gain 0.85-1.15 and an offset of -12..12 levels."""
    rng = _rng(seed, 8)
    g = float(rng.uniform(0.6, 0.8) if rng.random() < 0.5 else rng.uniform(1.3, 1.6))
    gains = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    offset = float(rng.uniform(-12, 12))
    f = (img.astype(np.float32) / 255.0) ** g * 255.0 * gains + offset
    out: Image = np.clip(f, 0, 255).astype(np.uint8)
    return out


def pip(img: Image, seed: int) -> Image:
    """Picture-in-picture: the picture at 1/4 of the area (half width, half height) in a corner, 2-4% from the
    edges, over a different background of the same size."""
    rng = _rng(seed, 9)
    h, w = img.shape[:2]
    canvas = soft_background(1_000_000 + seed, w, h)
    ch, cw = h // 2, w // 2
    my, mx = round(h * rng.uniform(0.02, 0.04)), round(w * rng.uniform(0.02, 0.04))
    y = my if rng.random() < 0.5 else h - ch - my
    x = mx if rng.random() < 0.5 else w - cw - mx
    return place(canvas, _resize(img, cw, ch), y, x)


def inset(img: Image, seed: int) -> Image:
    """The picture at 75-90% of the size, at a random place over a different background: a stream layout or a
    non-black frame around the content (the picture is a crop of the sample, not the other way round)."""
    rng = _rng(seed, 13)
    h, w = img.shape[:2]
    f = float(rng.uniform(0.75, 0.9))
    ch, cw = round(h * f), round(w * f)
    canvas = soft_background(2_000_000 + seed, w, h)
    return place(canvas, _resize(img, cw, ch), int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)))


def blur(img: Image, seed: int) -> Image:
    """Gaussian blur, sigma 1.5-3 px at 640 px width (scaled with the width)."""
    sigma = float(_rng(seed, 10).uniform(1.5, 3.0)) * img.shape[1] / 640
    return np.asarray(cv2.GaussianBlur(img, (0, 0), sigma), dtype=np.uint8)


TRANSFORMS: dict[str, Transform] = {
    "reencode": reencode,
    "blocky": blocky,
    "downscale": downscale_half,
    "gamma": gamma,
    "blur": blur,
    "watermark": watermark,
    "letterbox": letterbox,
    "pillarbox": pillarbox,
    "pad20": pad20,
    "mirror": mirror,
    "rotate90": rotate90,
    "crop5": crop5,
    "crop10": crop10,
    "inset": inset,
    "pip": pip,
}


# -- more generated pictures -----------------------------------------------------------------------------------


def soft_background(seed: int, width: int, height: int) -> Image:
    """A soft colourful texture (a coarse random grid upsampled): a background for picture-in-picture."""
    rng = np.random.default_rng([seed, 11])
    grid = (rng.random((4, 7, 3)) * 255).astype(np.uint8)
    return np.asarray(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), dtype=np.uint8)


def composition(seed: int, width: int = 640, height: int = 360) -> Image:
    """A random geometric composition: a two-colour gradient under rectangles, discs, polygons and thick lines."""
    rng = np.random.default_rng([seed, 12])
    c0, c1 = rng.random(3), rng.random(3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2
    img: Image = ((c0 * (1 - t[..., None]) + c1 * t[..., None]) * 255).astype(np.uint8)
    s = min(width, height)
    for _ in range(int(rng.integers(8, 16))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 4))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == 0:
            dx, dy = int(rng.integers(s // 12, s // 3)), int(rng.integers(s // 12, s // 3))
            cv2.rectangle(img, (cx - dx, cy - dy), (cx + dx, cy + dy), colour, -1)
        elif kind == 1:
            cv2.circle(img, (cx, cy), int(rng.integers(s // 16, s // 4)), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            pts = (np.array([cx, cy]) + rng.integers(-s // 4, s // 4, (int(rng.integers(3, 6)), 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            x1, y1 = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(img, (cx, cy), (x1, y1), colour, int(rng.integers(3, s // 20 + 4)), cv2.LINE_AA)
    return img
