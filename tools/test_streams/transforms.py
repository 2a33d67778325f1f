"""Synthetic transforms of a picture, as a stream or a re-upload might apply them, plus two more generators of
benign pictures (geometric compositions and soft backgrounds) for the image benchmark
(tools/monitor_tools/eval/images/).

Every transform takes an RGB uint8 (H, W, 3) array and a seed and returns a new RGB uint8 array; the same
(picture, seed) always gives the same result. `TRANSFORMS` names them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

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


# -- streaming layouts (issue 13) -------------------------------------------------------------------------------
#
# What a re-streamer does to content: the picture in a window of a layout, a webcam inset, a chat column, a ticker
# band, logos and stickers, picture-in-picture over other content, small crops and rotations, tone changes and a
# starved x264 encode. Every parameter is drawn from the seed. Decorations and insets use OTHER pictures (`pool`,
# e.g. the natural corpus without the content picture); with an empty pool they fall back to soft_background.

Pool = Sequence[Image]
LayoutTransform = Callable[[Image, int, Pool], Image]
X264_BITRATE = 500_000
X264_SIZE = (1280, 720)  # encoded at 720p, the size the monitor is meant for, then back to the picture's size
_WORDS = ("live", "now", "chat", "follow", "sub", "gg", "lol", "stream", "hype", "wow", "nice", "clip", "raid",
          "today", "play", "ok", "news", "breaking", "score", "2-1", "12:45", "BRB", "poll", "vote", "win")


def _other(pool: Pool, rng: np.random.Generator, width: int, height: int) -> Image:
    """Another picture from the pool at width x height (cut to that aspect around its centre)."""
    if not pool:
        return soft_background(int(rng.integers(0, 2**31)), width, height)
    src = pool[int(rng.integers(0, len(pool)))]
    sh, sw = src.shape[:2]
    target = width / height
    if sw / sh > target:
        cw = max(1, round(sh * target))
        x = int(rng.integers(0, sw - cw + 1))
        src = src[:, x : x + cw]
    else:
        ch = max(1, round(sw / target))
        y = int(rng.integers(0, sh - ch + 1))
        src = src[y : y + ch]
    return _resize(np.ascontiguousarray(src), max(1, width), max(1, height))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return (int(rng.integers(lo, hi)), int(rng.integers(lo, hi)), int(rng.integers(lo, hi)))


def _text(img: Image, rng: np.random.Generator, x: int, y: int, line_h: int, max_w: int,
          colour: tuple[int, int, int]) -> None:
    """One line of random words, baseline at y, glyphs about line_h high, at most max_w wide (in place)."""
    scale = max(0.25, line_h / 30.0)
    thick = max(1, round(line_h / 14))
    words = " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), int(rng.integers(2, 7))))
    while words:
        (tw, _), _ = cv2.getTextSize(words, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        if tw <= max_w:
            break
        words = words.rsplit(" ", 1)[0] if " " in words else ""
    if words:
        cv2.putText(img, words, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def _blend(img: Image, y0: int, y1: int, x0: int, x1: int, layer: Image, alpha: float) -> None:
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + layer.astype(np.float32) * alpha, 0, 255).astype(np.uint8)


def _frame(img: Image, y0: int, y1: int, x0: int, x1: int, thick: int, colour: tuple[int, int, int]) -> None:
    """A border of `thick` px just outside the rectangle (clipped to the picture)."""
    h, w = img.shape[:2]
    if thick > 0:
        cv2.rectangle(img, (max(0, x0 - thick), max(0, y0 - thick)), (min(w, x1 + thick) - 1, min(h, y1 + thick) - 1),
                      colour, -1)


def _shadow(img: Image, y0: int, y1: int, x0: int, x1: int, rng: np.random.Generator) -> None:
    """A soft drop shadow under the rectangle (drawn before the content goes on top)."""
    h, w = img.shape[:2]
    off = int(rng.integers(3, max(4, h // 40) + 1))
    mask = np.zeros((h, w), np.float32)
    mask[min(h, y0 + off) : min(h, y1 + off), min(w, x0 + off) : min(w, x1 + off)] = float(rng.uniform(0.4, 0.8))
    mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), max(1.0, off / 1.5)), np.float32)
    img[:] = (img.astype(np.float32) * (1 - mask[..., None])).astype(np.uint8)


def _put(canvas: Image, content: Image, y: int, x: int) -> None:
    ch, cw = content.shape[:2]
    canvas[y : y + ch, x : x + cw] = content


def layout_window(img: Image, seed: int, pool: Pool = ()) -> Image:
    """The picture in a content window at 50-85% of the frame's width (aspect kept) inside a streaming layout:
    a blurred and darkened other picture or a flat panel colour behind, a border, a title line and 1-3 side panels
    (thumbnails of other pictures or text boxes) in the free space."""
    rng = _rng(seed, 20)
    h, w = img.shape[:2]
    if rng.random() < 0.6:
        bg = _other(pool, rng, w, h)
        bg = np.asarray(cv2.GaussianBlur(bg, (0, 0), float(rng.uniform(4, 12))), np.uint8)
        canvas = (bg.astype(np.float32) * rng.uniform(0.35, 0.8)).astype(np.uint8)
    else:
        canvas = np.empty((h, w, 3), np.uint8)
        canvas[:] = _colour(rng, 10, 90)
    s = float(rng.uniform(0.5, 0.85))
    cw, ch = round(w * s), round(h * s)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    # side panels first, where there is room
    for _ in range(int(rng.integers(1, 4))):
        free = [("r", w - x - cw), ("l", x), ("b", h - y - ch), ("t", y)]
        side, room = max(free, key=lambda kv: kv[1] + rng.random())
        if room < 24:
            break
        if side in "lr":
            pw = int(rng.integers(room // 2, room - 4 + 1))
            ph = int(rng.integers(h // 6, h // 2 + 1))
            px = x + cw + 4 if side == "r" else 2
            py = int(rng.integers(0, h - ph + 1))
        else:
            ph = int(rng.integers(room // 2, room - 4 + 1))
            pw = int(rng.integers(w // 6, w // 2 + 1))
            py = y + ch + 4 if side == "b" else 2
            px = int(rng.integers(0, w - pw + 1))
        pw, ph = min(pw, w - px), min(ph, h - py)
        if pw < 8 or ph < 8:
            continue
        if rng.random() < 0.5:
            _put(canvas, _other(pool, rng, pw, ph), py, px)
        else:
            canvas[py : py + ph, px : px + pw] = _colour(rng, 0, 120)
            lh = max(8, min(ph // 3, h // 20))
            for k in range(max(1, ph // (lh + 6))):
                _text(canvas, rng, px + 3, py + (k + 1) * (lh + 6), lh, pw - 6, _colour(rng, 150, 256))
    thick = int(rng.integers(0, 7))
    _frame(canvas, y, y + ch, x, x + cw, thick, _colour(rng))
    _put(canvas, _resize(img, cw, ch), y, x)
    if y > h // 14:  # a title over the window
        _text(canvas, rng, x + 4, y - max(thick, 2) - 3, min(y - 4, h // 22), cw - 8, _colour(rng, 160, 256))
    return canvas


def band(img: Image, seed: int, pool: Pool = ()) -> Image:
    """A bottom or top band 8-20% of the height at 40-90% opacity with one or two lines of text (a ticker or a
    lower third), sometimes a small opaque tag at its start."""
    rng = _rng(seed, 21)
    out = img.copy()
    h, w = out.shape[:2]
    bh = max(4, round(h * rng.uniform(0.08, 0.20)))
    y0 = 0 if rng.random() < 0.35 else h - bh
    layer = np.empty((bh, w, 3), np.uint8)
    layer[:] = _colour(rng, 0, 256) if rng.random() < 0.3 else _colour(rng, 0, 80)
    _blend(out, y0, y0 + bh, 0, w, layer, float(rng.uniform(0.4, 0.9)))
    x0 = 6
    if rng.random() < 0.5:  # a tag ("LIVE", a channel name) at the start
        tw = round(w * rng.uniform(0.08, 0.18))
        out[y0 + 2 : y0 + bh - 2, 4 : 4 + tw] = _colour(rng, 120, 256)
        _text(out, rng, 8, y0 + bh // 2 + bh // 6, max(6, bh // 3), tw - 8, (255, 255, 255))
        x0 = tw + 12
    lines = 2 if bh > h * 0.12 and rng.random() < 0.6 else 1
    lh = max(6, bh // (lines + 1))
    for k in range(lines):
        _text(out, rng, x0, y0 + (k + 1) * bh // (lines + 1) + lh // 3, lh, w - x0 - 6, _colour(rng, 170, 256))
    return out


def webcam(img: Image, seed: int, pool: Pool = ()) -> Image:
    """A webcam inset (another picture) of 10-25% of the area in any corner, 0-3% from the edges, with a border
    of 2-8 px."""
    rng = _rng(seed, 22)
    out = img.copy()
    h, w = out.shape[:2]
    area = float(rng.uniform(0.10, 0.25)) * h * w
    aspect = (16 / 9, 4 / 3, 1.0)[int(rng.integers(0, 3))]
    ih = min(h - 4, round(math.sqrt(area / aspect)))
    iw = min(w - 4, round(ih * aspect))
    my, mx = round(h * rng.uniform(0, 0.03)), round(w * rng.uniform(0, 0.03))
    thick = int(rng.integers(2, 9))
    y = my + thick if rng.random() < 0.5 else h - ih - my - thick
    x = mx + thick if rng.random() < 0.5 else w - iw - mx - thick
    y, x = min(max(0, y), h - ih), min(max(0, x), w - iw)
    _frame(out, y, y + ih, x, x + iw, thick, _colour(rng))
    _put(out, _other(pool, rng, iw, ih), y, x)
    return out


def chat(img: Image, seed: int, pool: Pool = ()) -> Image:
    """A chat column 20-30% of the width on the left or right, 60-100% opaque, with coloured user names and white
    messages, sometimes a header bar."""
    rng = _rng(seed, 23)
    out = img.copy()
    h, w = out.shape[:2]
    cw = round(w * rng.uniform(0.20, 0.30))
    x0 = w - cw if rng.random() < 0.7 else 0
    layer = np.empty((h, cw, 3), np.uint8)
    layer[:] = _colour(rng, 0, 60)
    _blend(out, 0, h, x0, x0 + cw, layer, float(rng.uniform(0.6, 1.0)))
    lh = max(7, round(h * rng.uniform(0.025, 0.045)))
    y = 4
    if rng.random() < 0.5:
        hh = 2 * lh
        out[0:hh, x0 : x0 + cw] = _colour(rng, 40, 140)
        _text(out, rng, x0 + 4, hh - lh // 2, lh, cw - 8, (255, 255, 255))
        y = hh + 4
    while y + lh < h - 2:
        y += lh + int(rng.integers(2, lh // 2 + 3))
        name_w = round(cw * rng.uniform(0.25, 0.45))
        _text(out, rng, x0 + 4, y, lh, name_w, _colour(rng, 90, 256))
        _text(out, rng, x0 + 8 + name_w, y, lh, cw - name_w - 12, (235, 235, 235))
    return out


def logos(img: Image, seed: int, pool: Pool = ()) -> Image:
    """1-4 logo bugs and stickers: text plates (50-100% opaque, 3-10% of the width high) near the corners and
    round or rounded stickers cut from other pictures (8-18% of the height) with an outline, anywhere."""
    rng = _rng(seed, 24)
    out = img.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        if rng.random() < 0.5:  # a logo bug
            bh = max(8, round(w * rng.uniform(0.03, 0.10)))
            bw = min(w - 4, round(bh * rng.uniform(1.5, 4.0)))
            y = int(rng.integers(2, max(3, h // 8))) if rng.random() < 0.5 else h - bh - int(rng.integers(2, h // 8))
            x = int(rng.integers(2, max(3, w // 8))) if rng.random() < 0.5 else w - bw - int(rng.integers(2, w // 8))
            y, x = min(max(0, y), h - bh), min(max(0, x), w - bw)
            plate = np.empty((bh, bw, 3), np.uint8)
            plate[:] = _colour(rng)
            _text(plate, rng, 3, bh * 2 // 3, max(6, bh // 2), bw - 6, _colour(rng))
            _blend(out, y, y + bh, x, x + bw, plate, float(rng.uniform(0.5, 1.0)))
        else:  # a sticker
            d = max(8, round(h * rng.uniform(0.08, 0.18)))
            y, x = int(rng.integers(0, h - d + 1)), int(rng.integers(0, w - d + 1))
            sticker = _other(pool, rng, d, d)
            mask = np.zeros((d, d), np.uint8)
            if rng.random() < 0.5:
                cv2.circle(mask, (d // 2, d // 2), d // 2 - 1, 255, -1, cv2.LINE_AA)
            else:
                r = d // 5
                cv2.rectangle(mask, (r, 0), (d - 1 - r, d - 1), 255, -1)
                cv2.rectangle(mask, (0, r), (d - 1, d - 1 - r), 255, -1)
                for cy, cx in ((r, r), (r, d - 1 - r), (d - 1 - r, r), (d - 1 - r, d - 1 - r)):
                    cv2.circle(mask, (cx, cy), r, 255, -1, cv2.LINE_AA)
            outline = cv2.dilate(mask, np.ones((5, 5), np.uint8))
            a = outline.astype(np.float32)[..., None] / 255.0
            region = out[y : y + d, x : x + d].astype(np.float32)
            region = region * (1 - a) + 255.0 * a
            m = mask.astype(np.float32)[..., None] / 255.0
            out[y : y + d, x : x + d] = np.clip(region * (1 - m) + sticker.astype(np.float32) * m, 0, 255).astype(
                np.uint8)
    return out


def pip_layout(img: Image, seed: int, pool: Pool = (), lo: float = 0.30, hi: float = 0.60) -> Image:
    """Picture-in-picture: the picture at lo-hi of the frame's width (aspect kept) at any position over another
    picture, with no border, a border of 1-6 px, or a drop shadow (and maybe a border)."""
    rng = _rng(seed, 25)
    h, w = img.shape[:2]
    canvas = _other(pool, rng, w, h)
    s = float(rng.uniform(lo, hi))
    cw, ch = round(w * s), round(h * s)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    style = int(rng.integers(0, 3))  # 0: plain, 1: border, 2: shadow (+ border half the time)
    if style == 2:
        _shadow(canvas, y, y + ch, x, x + cw, rng)
    if style == 1 or (style == 2 and rng.random() < 0.5):
        _frame(canvas, y, y + ch, x, x + cw, int(rng.integers(1, 7)), _colour(rng))
    _put(canvas, _resize(img, cw, ch), y, x)
    return canvas


def pip_small(img: Image, seed: int, pool: Pool = ()) -> Image:
    """Picture-in-picture at 25-30% of the width (the small end of the issue's range)."""
    return pip_layout(img, seed, pool, 0.25, 0.30)


def crop_random(img: Image, seed: int, pool: Pool = ()) -> Image:
    """3-12% of each dimension cut away, the window at a random position."""
    return crop(img, float(_rng(seed, 26).uniform(0.03, 0.12)), seed)


def rotate_small(img: Image, seed: int, pool: Pool = ()) -> Image:
    """A rotation of 1-3 degrees either way about the centre, same size, the uncovered corners black."""
    rng = _rng(seed, 27)
    angle = float(rng.uniform(1, 3)) * (1 if rng.random() < 0.5 else -1)
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return np.asarray(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=(0, 0, 0)), np.uint8)


def tone(img: Image, seed: int, pool: Pool = ()) -> Image:
    """Contrast 0.7-1.4 about mid-grey, saturation 0.5-1.6 and gamma 0.7-1.5, all three."""
    rng = _rng(seed, 28)
    c, s, g = float(rng.uniform(0.7, 1.4)), float(rng.uniform(0.5, 1.6)), float(rng.uniform(0.7, 1.5))
    f = img.astype(np.float32)
    grey = f @ np.array([0.299, 0.587, 0.114], np.float32)
    f = grey[..., None] + (f - grey[..., None]) * s
    f = (f - 128.0) * c + 128.0
    f = (np.clip(f, 0, 255) / 255.0) ** g * 255.0
    out: Image = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    return out


def x264(img: Image, seed: int, pool: Pool = (), bitrate: int = X264_BITRATE) -> Image:
    """Re-encoded by x264 (PyAV) at `bitrate` as the first frame (an IDR) of a 720p30 stream: rate control and a
    one-second VBV, as a starved live encode gives its keyframes; decoded and scaled back to the picture's size."""
    import av  # PyAV: the monitor's own decoder library

    rng = _rng(seed, 29)
    h, w = img.shape[:2]
    big = _resize(img, *X264_SIZE)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height = X264_SIZE
    enc.pix_fmt = "yuv420p"
    enc.bit_rate = bitrate
    enc.time_base = Fraction(1, 30)
    enc.framerate = Fraction(30, 1)
    enc.options = {"preset": ("veryfast", "faster", "medium")[int(rng.integers(0, 3))], "tune": "zerolatency",
                   "maxrate": str(bitrate), "bufsize": str(bitrate), "g": "60"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big), format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    packets = list(enc.encode(frame)) + list(enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    pictures = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    if not pictures:
        raise RuntimeError("x264 round trip gave no picture")
    return _resize(np.asarray(pictures[0].to_ndarray(format="rgb24"), np.uint8), w, h)


# Stages of a combination: what happens to the content, where it is put, what goes over it, the encoder.
_COMBO_PARTS: dict[str, tuple[int, LayoutTransform]] = {
    "crop": (0, crop_random), "rotate": (0, rotate_small), "tone": (0, tone),
    "window": (1, layout_window), "pip": (1, pip_layout),
    "band": (2, band), "webcam": (2, webcam), "chat": (2, chat), "logo": (2, logos),
    "x264": (3, x264),
}


def combo_parts(seed: int, n: int) -> list[str]:
    """The n parts a combination of this seed applies, in the order applied (at most one of window and pip)."""
    rng = _rng(seed, 30 + n)
    names = list(_COMBO_PARTS)
    while True:
        pick = [names[int(i)] for i in rng.choice(len(names), n, replace=False)]
        if not {"window", "pip"} <= set(pick):
            return sorted(pick, key=lambda p: (_COMBO_PARTS[p][0], names.index(p)))


def combination(img: Image, seed: int, pool: Pool, n: int) -> Image:
    out = img
    for k, part in enumerate(combo_parts(seed, n)):
        out = _COMBO_PARTS[part][1](out, seed * 31 + k, pool)
    return out


def combo2(img: Image, seed: int, pool: Pool = ()) -> Image:
    """Two of: crop, rotate, tone, window, pip, band, webcam, chat, logo, x264 (combo_parts)."""
    return combination(img, seed, pool, 2)


def combo3(img: Image, seed: int, pool: Pool = ()) -> Image:
    """Three of them."""
    return combination(img, seed, pool, 3)


LAYOUT_TRANSFORMS: dict[str, LayoutTransform] = {
    "window": layout_window,
    "band": band,
    "webcam": webcam,
    "chat": chat,
    "logo": logos,
    "pip30_60": pip_layout,
    "pip25_30": pip_small,
    "crop3_12": crop_random,
    "rotate1_3": rotate_small,
    "tone": tone,
    "x264_500k": x264,
    "combo2": combo2,
    "combo3": combo3,
}
