"""Backgrounds that behave like real live video: scene cuts every few seconds between four kinds of shot.

- `pan`: a slow pan over a large generated texture (like `images.Background`);
- `zoom`: pan and zoom in/out over a texture (a "Ken Burns" move);
- `talking_head`: a mostly static room with a person; only the head moves a little (sway, blinking, mouth);
- `game`: a side-scrolling game world with parallax, fast sprites and HUD overlays (score bar, health, minimap,
  crosshair) that stay put while everything under them moves.

A schedule (`make_schedule`) is drawn from a seed: hard cuts every 3-9 s, never the same kind twice in a row.
Shots come from a small pool of renderers per kind (built once, before the stream starts: a frame costs 1-3 ms),
each scene entering its renderer at its own time offset, so a stream revisits the same room or game like a real
one does without repeating frames. `SceneBackground(seed, w, h, duration).frame(t)` is deterministic: the
evaluation re-renders the keyframes it needs from the seed and the schedule in the ground truth.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from test_streams.images import Image, _smooth_noise

SCENE_KINDS = ("pan", "zoom", "talking_head", "game")
POOL_PER_KIND = 2  # renderers per kind; scenes reuse them at different time offsets


@dataclass(frozen=True, slots=True)
class Scene:
    kind: str
    start_s: float
    end_s: float
    variant: int  # which renderer of the kind's pool
    offset_s: float  # the renderer's local time at start_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Scene:
        return cls(str(d["kind"]), float(d["start_s"]), float(d["end_s"]), int(d["variant"]), float(d["offset_s"]))


def make_schedule(seed: int, duration_s: float, *, min_len_s: float = 3.0, max_len_s: float = 9.0,
                  kinds: Sequence[str] = SCENE_KINDS) -> list[Scene]:
    """Hard cuts every min_len_s..max_len_s seconds; consecutive scenes differ in kind (when there are two)."""
    for k in kinds:
        if k not in SCENE_KINDS:
            raise ValueError(f"unknown scene kind {k!r} (known: {', '.join(SCENE_KINDS)})")
    if not kinds:
        raise ValueError("no scene kinds")
    rng = np.random.default_rng([seed, 77])
    out: list[Scene] = []
    t = 0.0
    prev = ""
    while t < duration_s:
        choices = [k for k in kinds if k != prev] or list(kinds)
        kind = choices[int(rng.integers(0, len(choices)))]
        length = float(rng.uniform(min_len_s, max_len_s))
        out.append(Scene(kind, round(t, 3), round(t + length, 3), int(rng.integers(0, POOL_PER_KIND)),
                         round(float(rng.uniform(0, 120)), 3)))
        prev = kind
        t += length
    return out


class Shot(Protocol):
    def frame(self, t: float) -> Image: ...


def _texture(rng: np.random.Generator, h: int, w: int) -> Image:
    tex = np.empty((h, w, 3), dtype=np.float32)
    for ch in range(3):
        tex[..., ch] = 0.6 * _smooth_noise(rng, h, w, 5) + 0.4 * _smooth_noise(rng, h, w, 20)
    return (tex * 255).astype(np.uint8)


class PanZoom:
    """A window moving over a texture 1.6x the frame; with zoom, the window also shrinks and grows (1x-1.5x)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, zoom: bool) -> None:
        self.width, self.height, self.zoom = width, height, zoom
        self.texture = _texture(rng, round(height * 1.6), round(width * 1.6))
        self.speed = float(rng.uniform(0.6, 1.6))
        self.phase = float(rng.uniform(0, 2 * np.pi))

    def frame(self, t: float) -> Image:
        th, tw = self.texture.shape[:2]
        z = 1.0 + 0.25 * (1 - math.cos(t * 0.35 * self.speed + self.phase)) if self.zoom else 1.0
        ww, wh = round(self.width / z), round(self.height / z)
        x = int((0.5 + 0.5 * math.sin(t * 0.21 * self.speed + self.phase)) * (tw - ww))
        y = int((0.5 + 0.5 * math.cos(t * 0.17 * self.speed + self.phase)) * (th - wh))
        win = self.texture[y : y + wh, x : x + ww]
        if (ww, wh) == (self.width, self.height):
            return np.ascontiguousarray(win)
        return np.asarray(cv2.resize(win, (self.width, self.height), interpolation=cv2.INTER_LINEAR), np.uint8)


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
    return r, g, b


class TalkingHead:
    """A static room (wall, shelf with books, a framed picture, a window) and a person; per frame only the head is
    redrawn: a sway of a few pixels, blinks every few seconds, a mouth opening and closing as in speech."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.width, self.height = width, height
        s = height / 360
        yy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        top, bottom = np.array(_colour(rng, 90, 220), np.float32), np.array(_colour(rng, 40, 160), np.float32)
        room = (top * (1 - yy) + bottom * yy) * np.ones((1, width, 1), np.float32)
        room += (_smooth_noise(rng, height, width, 24)[..., None] - 0.5) * 30  # wall texture
        img = np.clip(room, 0, 255).astype(np.uint8)
        # a shelf with books on one side, a window or a picture on the other
        left = bool(rng.random() < 0.5)
        x0 = int(width * (0.04 if left else 0.68))
        shelf_w = int(width * 0.28)
        for row in range(3):
            y_base = int(height * (0.25 + 0.22 * row))
            cv2.rectangle(img, (x0, y_base), (x0 + shelf_w, y_base + int(6 * s)), _colour(rng, 60, 140), -1)
            x = x0 + 3
            while x < x0 + shelf_w - 10:
                bw, bh = int(rng.integers(6, 16) * s), int(rng.integers(30, 60) * s)
                cv2.rectangle(img, (x, y_base - bh), (x + bw, y_base), _colour(rng), -1)
                x += bw + 2
        px = int(width * (0.72 if left else 0.06))
        pw, ph = int(width * 0.2), int(height * 0.26)
        cv2.rectangle(img, (px - 6, int(height * 0.12) - 6), (px + pw + 6, int(height * 0.12) + ph + 6),
                      _colour(rng, 0, 80), -1)
        art = _texture(rng, ph, pw)
        img[int(height * 0.12) : int(height * 0.12) + ph, px : px + pw] = art
        # the person's body (static): shoulders and neck
        self.skin = _colour(rng, 120, 230)
        self.hair = _colour(rng, 0, 90)
        cx = width // 2 + int(rng.integers(-width // 10, width // 10))
        self.cx, self.cy = cx, int(height * 0.42)
        shirt = _colour(rng, 20, 220)
        cv2.ellipse(img, (cx, height + int(40 * s)), (int(150 * s), int(130 * s)), 0, 180, 360, shirt, -1,
                    cv2.LINE_AA)
        cv2.rectangle(img, (cx - int(22 * s), int(height * 0.55)), (cx + int(22 * s), int(height * 0.68)),
                      self.skin, -1)
        self.static = img
        self.s = s
        self.blink_period = float(rng.uniform(2.5, 5.0))
        self.talk = float(rng.uniform(5.0, 9.0))

    def frame(self, t: float) -> Image:
        img: Image = self.static.copy()
        s = self.s
        dx = round(4 * s * math.sin(0.7 * t)) + round(2 * s * math.sin(2.3 * t))
        dy = round(2 * s * math.sin(1.1 * t))
        cx, cy = self.cx + dx, self.cy + dy
        hw, hh = int(52 * s), int(66 * s)
        cv2.ellipse(img, (cx, cy), (hw, hh), 0, 0, 360, self.skin, -1, cv2.LINE_AA)
        cv2.ellipse(img, (cx, cy - int(30 * s)), (hw + 4, int(44 * s)), 0, 180, 360, self.hair, -1, cv2.LINE_AA)
        ey = cy - int(8 * s)
        blink = (t % self.blink_period) < 0.15
        for ex in (cx - int(20 * s), cx + int(20 * s)):
            if blink:
                cv2.line(img, (ex - int(7 * s), ey), (ex + int(7 * s), ey), (30, 30, 30), max(1, int(2 * s)))
            else:
                cv2.circle(img, (ex, ey), int(6 * s), (245, 245, 245), -1, cv2.LINE_AA)
                cv2.circle(img, (ex, ey), int(3 * s), (25, 25, 25), -1, cv2.LINE_AA)
        opening = abs(math.sin(self.talk * t)) * abs(math.sin(1.7 * t + 0.5))
        cv2.ellipse(img, (cx, cy + int(30 * s)), (int(16 * s), max(1, int(10 * s * opening))), 0, 0, 360,
                    (90, 20, 30), -1, cv2.LINE_AA)
        return img


class Game:
    """A side-scroller: a slow sky/mountain layer, a fast ground layer (a few hundred px/s), sprites crossing
    quickly, and HUD overlays (translucent score bar with health, a minimap, a crosshair) fixed on screen."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.horizon = int(height * 0.62)
        world_w = width * 4
        sky_top, sky_bottom = np.array(_colour(rng, 40, 200), np.float32), np.array(_colour(rng, 120, 255),
                                                                                   np.float32)
        yy = np.linspace(0, 1, self.horizon, dtype=np.float32)[:, None, None]
        far = (sky_top * (1 - yy) + sky_bottom * yy) * np.ones((1, world_w, 1), np.float32)
        far = np.clip(far, 0, 255).astype(np.uint8)
        knots = rng.random(17)
        knots[-1] = knots[0]  # the strip wraps around
        ridge = self.horizon - (0.2 + 0.45 * np.interp(np.linspace(0, 16, world_w), np.arange(17), knots)) * (
            self.horizon)
        mountain = _colour(rng, 30, 140)
        rows = np.arange(self.horizon)[:, None]
        far[rows >= ridge[None, :].astype(int)] = mountain
        for _ in range(12):  # clouds
            cv2.ellipse(far, (int(rng.integers(0, world_w)), int(rng.integers(10, self.horizon // 3))),
                        (int(rng.integers(30, 90)), int(rng.integers(10, 25))), 0, 0, 360, (240, 240, 245), -1)
        ground_h = height - self.horizon
        near = np.empty((ground_h, world_w, 3), np.uint8)
        near[:] = _colour(rng, 60, 160)
        tile = int(rng.integers(24, 40))
        c1, c2 = _colour(rng), _colour(rng)
        for x in range(0, world_w, tile):  # a checkered brick ground: strong edges that move fast
            for row, y in enumerate(range(0, ground_h, tile)):
                colour = c1 if ((x // tile) + row) % 2 == 0 else c2
                cv2.rectangle(near, (x, y), (x + tile - 2, y + tile - 2), colour, -1)
        for _ in range(20):  # pipes and crates
            x = int(rng.integers(0, world_w - 60))
            cv2.rectangle(near, (x, 0), (x + int(rng.integers(20, 60)), int(rng.integers(10, ground_h // 2))),
                          _colour(rng), -1)
        # Wrap-around strips: a slice [x, x + width) is always in range.
        self.far = np.ascontiguousarray(np.concatenate([far, far[:, :width]], axis=1))
        self.near = np.ascontiguousarray(np.concatenate([near, near[:, :width]], axis=1))
        self.world_w = world_w
        self.far_speed = float(rng.uniform(20, 60))
        self.near_speed = float(rng.uniform(250, 450))
        self.sprites = [(_colour(rng), float(rng.uniform(-500, 500)), float(rng.uniform(0.1, 0.9)),
                         int(rng.integers(8, 22)), float(rng.uniform(0, width))) for _ in range(6)]
        self.hud_colour = _colour(rng, 150, 256)
        self.score0 = int(rng.integers(0, 5000))

    def frame(self, t: float) -> Image:
        w, h = self.width, self.height
        img = np.empty((h, w, 3), np.uint8)
        fx = int(t * self.far_speed) % self.world_w
        nx = int(t * self.near_speed) % self.world_w
        img[: self.horizon] = self.far[:, fx : fx + w]
        img[self.horizon :] = self.near[:, nx : nx + w]
        # the player: bounces in place while the world scrolls
        py = self.horizon - 30 - int(abs(math.sin(3.1 * t)) * 60)
        cv2.rectangle(img, (w // 4 - 14, py - 28), (w // 4 + 14, py), (220, 40, 40), -1)
        cv2.circle(img, (w // 4, py - 38), 10, (250, 210, 160), -1)
        for colour, vx, yfrac, r, x0 in self.sprites:  # enemies and shots crossing quickly
            x = int((x0 + vx * t) % (w + 80)) - 40
            y = int(self.horizon * yfrac + 12 * math.sin(5 * t + x0))
            cv2.circle(img, (x, y), r, colour, -1)
        # HUD: translucent top bar with score and health, minimap, crosshair
        bar = img[: 28].astype(np.uint16)
        img[: 28] = (bar * 2 // 5).astype(np.uint8)
        score = self.score0 + int(t * 37)
        cv2.putText(img, f"SCORE {score:07d}", (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, self.hud_colour, 1)
        health = 0.3 + 0.7 * (0.5 + 0.5 * math.cos(0.3 * t))
        cv2.rectangle(img, (w - 170, 8), (w - 20, 20), (60, 60, 60), -1)
        cv2.rectangle(img, (w - 170, 8), (w - 170 + int(150 * health), 20), (40, 200, 60), -1)
        mm = (w - 110, h - 80, w - 10, h - 10)
        cv2.rectangle(img, (mm[0], mm[1]), (mm[2], mm[3]), (15, 15, 15), -1)
        cv2.rectangle(img, (mm[0], mm[1]), (mm[2], mm[3]), self.hud_colour, 1)
        dot = mm[0] + int((nx / self.world_w) * (mm[2] - mm[0]))
        cv2.circle(img, (dot, (mm[1] + mm[3]) // 2), 3, (250, 60, 60), -1)
        cx, cy = w // 2, h // 2
        cv2.line(img, (cx - 10, cy), (cx + 10, cy), self.hud_colour, 1)
        cv2.line(img, (cx, cy - 10), (cx, cy + 10), self.hud_colour, 1)
        return img


def _build(kind: str, rng: np.random.Generator, width: int, height: int) -> Shot:
    if kind == "pan":
        return PanZoom(rng, width, height, zoom=False)
    if kind == "zoom":
        return PanZoom(rng, width, height, zoom=True)
    if kind == "talking_head":
        return TalkingHead(rng, width, height)
    if kind == "game":
        return Game(rng, width, height)
    raise ValueError(f"unknown scene kind {kind!r}")


class SceneBackground:
    """The background of one stream: `frame(t)` of whichever scene the schedule has at stream time t."""

    def __init__(self, seed: int, width: int, height: int, duration_s: float,
                 scenes: Sequence[Scene] | None = None, kinds: Sequence[str] = SCENE_KINDS) -> None:
        self.seed, self.width, self.height = seed, width, height
        self.scenes = list(scenes) if scenes is not None else make_schedule(seed, duration_s, kinds=kinds)
        self._starts = [s.start_s for s in self.scenes]
        self._shots: dict[tuple[str, int], Shot] = {}
        for sc in self.scenes:  # built up front: a scene cut must not stall a real-time encoder
            self._shot(sc)

    def _shot(self, sc: Scene) -> Shot:
        key = (sc.kind, sc.variant)
        shot = self._shots.get(key)
        if shot is None:
            rng = np.random.default_rng([self.seed, SCENE_KINDS.index(sc.kind), sc.variant])
            shot = self._shots[key] = _build(sc.kind, rng, self.width, self.height)
        return shot

    def scene_at(self, t: float) -> Scene:
        i = max(0, bisect.bisect_right(self._starts, t) - 1)
        return self.scenes[i]

    def frame(self, t: float) -> Image:
        sc = self.scene_at(t)
        return self._shot(sc).frame(t - sc.start_s + sc.offset_s)


def scene_frames(seed: int, width: int, height: int, times: Sequence[float],
                 scenes: Sequence[Scene] | None = None, duration_s: float | None = None) -> list[Image]:
    """Frames of one stream's background at the given stream times (for re-hashing keyframes offline)."""
    dur = duration_s if duration_s is not None else (max(times) + 1 if times else 1.0)
    bg = SceneBackground(seed, width, height, dur, scenes)
    return [bg.frame(t) for t in times]

__all__ = ["POOL_PER_KIND", "SCENE_KINDS", "Game", "PanZoom", "Scene", "SceneBackground", "TalkingHead",
           "make_schedule", "scene_frames"]
