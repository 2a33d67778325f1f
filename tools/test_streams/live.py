"""A live test stream encoded by PyAV itself (no ffmpeg binary): moving background, known images shown.

    python -m test_streams.live OUTPUT --duration 40 --show 0:6:12 --show 1:18:24 --truth truth.json
    python -m test_streams.live OUTPUT --scenes --show 3:6:12:mirror --show-file clip.mp4:20:28:watermark \\
        --bank bank.csv --truth truth.json
    python -m test_streams.live OUTPUT --plan plan.json --truth truth.json

OUTPUT is `tcp://127.0.0.1:PORT?listen=1` (MPEG-TS; the stream starts when a reader connects),
`rtmp://HOST:PORT/app/name` (FLV, pushed to a server), `DIR/NAME.m3u8` (HLS: segments of one GOP and a live
playlist in DIR, for any HTTP server to serve), or a file path. Frames are paced to real time unless --fast.

A shown picture is a generated known image (`--show SEED:START:END[:TRANSFORM]`) or a file of your own, still or
video (`--show-file PATH:START:END[:TRANSFORM]`); TRANSFORM is a name from test_streams.transforms (or `none`),
applied at the stream's size with a per-appearance seed. `--scenes` replaces the single panning texture with
scene cuts between pans, zooms, a talking head and a game screen (test_streams.scenes). `--bank FILE` writes the
CSV bank of the ORIGINAL pictures shown (generated ones saved as 1280x720 PNGs next to it), hashed with
`monitor.ingest.hashfiles.hash_file` as a platform would hash its copy. The ground-truth JSON records, for each
appearance, the stream times, the wall-clock time its first frame was sent, the keyframes that carried it (the
GOP is fixed) with the wall-clock time each was sent, and the bank entry ids that stand for it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from test_streams.images import Background, Image, known_image
from test_streams.scenes import SCENE_KINDS, Scene, SceneBackground

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm", ".ts", ".flv", ".avi", ".m4v", ".mpg", ".mpeg"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
ORIGINAL_SIZE = (1280, 720)  # generated originals, as a platform would have them


@dataclass(frozen=True)
class Appearance:
    image: int  # seed of known_image (ignored when `source` is set)
    start_s: float
    end_s: float
    transform: str = "none"  # a name in test_streams.transforms.TRANSFORMS, or "none"
    transform_seed: int = 0
    source: str | None = None  # an image or video file of one's own instead of known_image(image)
    entry_ids: tuple[str, ...] = field(default=())  # bank entries standing for it (filled in with --bank)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["entry_ids"] = list(self.entry_ids)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Appearance:
        return cls(int(d.get("image", -1)), float(d["start_s"]), float(d["end_s"]), str(d.get("transform", "none")),
                   int(d.get("transform_seed", 0)), d.get("source"), tuple(str(x) for x in d.get("entry_ids", ())))


def _transform_names() -> list[str]:
    from test_streams.transforms import TRANSFORMS

    return ["none", *TRANSFORMS]


def _check_transform(name: str, text: str) -> str:
    if name not in _transform_names():
        raise argparse.ArgumentTypeError(f"{text!r}: unknown transform {name!r} "
                                         f"(known: {', '.join(_transform_names())})")
    return name


def parse_show(text: str) -> Appearance:
    parts = text.split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        a = Appearance(int(parts[0]), float(parts[1]), float(parts[2]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IMAGE:START:END[:TRANSFORM], e.g. 0:6:12") from None
    if a.end_s <= a.start_s:
        raise argparse.ArgumentTypeError(f"{text!r}: END must be after START")
    if len(parts) == 4:
        a = replace(a, transform=_check_transform(parts[3], text), transform_seed=a.image)
    return a


def parse_show_file(text: str) -> Appearance:
    m = re.fullmatch(r"(.+?):([0-9.]+):([0-9.]+)(?::([A-Za-z0-9_]+))?", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH:START:END[:TRANSFORM], e.g. clip.mp4:6:12")
    a = Appearance(-1, float(m.group(2)), float(m.group(3)), source=m.group(1))
    if a.end_s <= a.start_s:
        raise argparse.ArgumentTypeError(f"{text!r}: END must be after START")
    if not Path(m.group(1)).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file {m.group(1)}")
    if m.group(4):
        a = replace(a, transform=_check_transform(m.group(4), text))
    return a


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _container_format(output: str) -> str | None:
    if output.startswith("tcp://") or output.startswith("udp://"):
        return "mpegts"
    if output.startswith("rtmp://"):
        return "flv"
    if output.endswith(".m3u8"):
        return "hls"
    return None


def fit(img: Image, width: int, height: int) -> Image:
    """Scale a picture to the stream's size (aspect not kept: global hashes ignore it; bars are a transform)."""
    if img.shape[:2] == (height, width):
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=interp), dtype=np.uint8)


def apply_transform(img: Image, name: str, seed: int, width: int, height: int) -> Image:
    """The picture at the stream's size under a named transform, back at the stream's size."""
    pic = fit(img, width, height)
    if name != "none":
        from test_streams.transforms import TRANSFORMS

        pic = fit(TRANSFORMS[name](pic, seed), width, height)
    return pic


def load_picture(path: str | Path) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


class _Still:
    def __init__(self, pic: Image) -> None:
        self.pic = pic

    def frame(self, t_local: float) -> Image:
        return self.pic


class _Clip:
    """A video of one's own, decoded as the stream goes (looped), each new frame transformed."""

    def __init__(self, path: str, transform: str, seed: int, width: int, height: int) -> None:
        self.path, self.transform, self.seed, self.width, self.height = path, transform, seed, width, height
        self._container: Any = None
        self._frames: Any = None
        self._loop_offset = 0.0
        self._last_t = 0.0
        self._current: Image | None = None
        self._pending: tuple[float, Image] | None = None

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = av.open(self.path)
        self._frames = self._container.decode(self._container.streams.video[0])

    def _next(self) -> tuple[float, Image] | None:
        if self._frames is None:
            self._open()
        for _ in range(2):
            for frame in self._frames:
                t = float(frame.time or 0.0) + self._loop_offset
                self._last_t = t
                rgb = frame.to_ndarray(format="rgb24", width=self.width, height=self.height)
                return t, apply_transform(rgb, self.transform, self.seed, self.width, self.height)
            self._loop_offset = self._last_t + 1 / 25  # end of the clip: loop
            self._open()
        return None

    def frame(self, t_local: float) -> Image:
        while True:
            if self._pending is None:
                self._pending = self._next()
                if self._pending is None:
                    break
            t, pic = self._pending
            if t > t_local and self._current is not None:
                break
            self._current, self._pending = pic, None
        assert self._current is not None, f"{self.path}: no frames"
        return self._current

    def close(self) -> None:
        if self._container is not None:
            self._container.close()


# -- the bank of originals -------------------------------------------------------------------------------------


def original_key(a: Appearance) -> str:
    """The name a shown picture goes by in the bank (entry ids derive from it)."""
    if a.source is None:
        return f"known-{a.image}"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(a.source).stem)[:60] or "file"
    return f"user-{stem}"


def original_file(a: Appearance, folder: Path) -> Path:
    """The original picture (or video) of an appearance as a file: generated ones are rendered to a PNG."""
    if a.source is not None:
        return Path(a.source)
    path = folder / f"known-{a.image}.png"
    if not path.exists():
        from PIL import Image as PILImage

        folder.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(known_image(a.image, *ORIGINAL_SIZE)).save(path)
    return path


def hash_originals(originals: Sequence[tuple[str, Path]], crops: bool = False) -> list[tuple[str, str, str, int]]:
    """(entry id, label, PDQ hex, quality) for each original: one entry for a picture, one per second of a video
    (`monitor hash` semantics, `<key>@<t>s` ids). `crops`: a picture's crop windows too (`monitor hash --crops`:
    the picture's entry id, the window named in the label)."""
    from monitor.ingest.hashfiles import hash_file

    rows: list[tuple[str, str, str, int]] = []
    for key, path in originals:
        for fh in hash_file(path, crops=crops):
            if fh.variant is not None:
                rows.append((key, f"{path.name}#{fh.variant}", fh.hex, fh.quality))
            elif fh.time_s is None:
                rows.append((key, path.name, fh.hex, fh.quality))
            else:
                rows.append((f"{key}@{fh.time_s:g}s", f"{path.name}@{fh.time_s:g}s", fh.hex, fh.quality))
    return rows


def write_bank(rows: Sequence[tuple[str, str, str, int]], path: Path) -> None:
    from pipelines.banks import Entry, format_bank

    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [Entry(eid, label, ("generated-test-content",)) for eid, label, _, _ in rows]
    path.write_text(format_bank([h for _, _, h, _ in rows], "csv", "pdq", entries=entries))


def entry_ids_by_key(rows: Sequence[tuple[str, str, str, int]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, dict[str, None]] = {}  # ordered sets: crop windows repeat their picture's id
    for eid, _, _, _ in rows:
        out.setdefault(eid.split("@", 1)[0], {})[eid] = None
    return {k: tuple(v) for k, v in out.items()}


def bank_for(shows: Sequence[Appearance], bank_path: Path, originals_dir: Path | None = None,
             crops: bool = False) -> list[Appearance]:
    """Write the bank of the shows' originals; return the shows with their entry ids filled in."""
    folder = originals_dir or bank_path.parent / "originals"
    originals: dict[str, Path] = {}
    for a in shows:
        originals.setdefault(original_key(a), original_file(a, folder))
    rows = hash_originals(list(originals.items()), crops=crops)
    write_bank(rows, bank_path)
    ids = entry_ids_by_key(rows)
    return [replace(a, entry_ids=ids.get(original_key(a), ())) for a in shows]


# -- the stream ------------------------------------------------------------------------------------------------


def picture_for(a: Appearance, width: int, height: int) -> _Still | _Clip:
    if a.source is not None and is_video(a.source):
        return _Clip(a.source, a.transform, a.transform_seed, width, height)
    base = load_picture(a.source) if a.source is not None else known_image(a.image, width, height)
    return _Still(apply_transform(base, a.transform, a.transform_seed, width, height))


def generate(output: str, *, width: int = 640, height: int = 360, fps: int = 25, gop_s: float = 2.0,
             duration_s: float = 30.0, shows: Sequence[Appearance] = (), seed: int = 1,
             realtime: bool = True, truth_path: Path | None = None, scenes: bool | Sequence[Scene] = False,
             scene_kinds: Sequence[str] = SCENE_KINDS, bank_path: Path | None = None,
             hls_list_size: int = 6, bank_crops: bool = False, linger_s: float = 0.0) -> dict[str, object]:
    """Encode and write the stream; returns the ground truth (also written to truth_path).

    `linger_s`: after the last frame, write the truth file, then keep the output open this long before closing it
    (a reader that sees the truth file knows every frame was sent, and can stop before the connection ends).

    `scenes`: True for a seeded scene schedule (test_streams.scenes), or the schedule itself; False keeps the
    single panning texture. `bank_path`: also write the CSV bank of the shown originals (entry ids go into the
    truth)."""
    if bank_path is not None:
        shows = bank_for(shows, bank_path, crops=bank_crops)
    pictures = {k: picture_for(a, width, height) for k, a in enumerate(shows)}
    background: Background | SceneBackground
    if scenes is False:
        background = Background(seed, width, height)
    else:
        background = SceneBackground(seed, width, height, duration_s,
                                     None if scenes is True else list(scenes), kinds=scene_kinds)
    gop = max(1, round(fps * gop_s))
    fmt = _container_format(output)
    options: dict[str, str] = {}
    if fmt == "hls":
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        options = {"hls_time": f"{gop_s:g}", "hls_list_size": str(hls_list_size),
                   "hls_flags": "delete_segments+independent_segments"}
    container = av.open(output, "w", format=fmt, options=options)
    keyframe_wall: dict[int, float] = {}
    first_wall: dict[int, float] = {}
    max_lag = 0.0
    truth: dict[str, object] = {}
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = gop
        # Fixed GOP: keyframes exactly every gop_s, so tests know which keyframe carries an image.
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "sc_threshold": "0",
                       "keyint_min": str(gop), "bf": "0"}
        time_base = Fraction(1, fps)
        t0 = time.time()
        truth = {
            "output": output, "width": width, "height": height, "fps": fps, "gop_s": gop_s,
            "duration_s": duration_s, "wall_start": t0, "seed": seed, "appearances": [],
        }
        if isinstance(background, SceneBackground):
            truth["scenes"] = [s.to_json() for s in background.scenes]
        n_frames = round(duration_s * fps)
        for i in range(n_frames):
            t = i / fps
            pic = background.frame(t)
            showing: list[int] = []
            for k, a in enumerate(shows):
                if a.start_s <= t < a.end_s:
                    pic = pictures[k].frame(t - a.start_s)
                    showing.append(k)
            frame = av.VideoFrame.from_ndarray(pic, format="rgb24")
            frame.pts, frame.time_base = i, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
            sent = time.time()  # zerolatency, no B-frames: the frame's packet left with this call
            if i % gop == 0:
                keyframe_wall[i] = sent
            for k in showing:
                first_wall.setdefault(k, sent)
            if realtime:
                ahead = t0 + (i + 1) / fps - time.time()
                if ahead > 0:
                    time.sleep(ahead)
                else:
                    max_lag = max(max_lag, -ahead)
        for packet in stream.encode():
            container.mux(packet)
        if linger_s > 0:
            _finish_truth(truth, shows, fps, duration_s, gop, keyframe_wall, first_wall, max_lag, truth_path)
            time.sleep(linger_s)
    finally:
        container.close()
        for p in pictures.values():
            if isinstance(p, _Clip):
                p.close()
    if linger_s <= 0:
        _finish_truth(truth, shows, fps, duration_s, gop, keyframe_wall, first_wall, max_lag, truth_path)
    return truth


def _finish_truth(truth: dict[str, object], shows: Sequence[Appearance], fps: int, duration_s: float, gop: int,
                  keyframe_wall: dict[int, float], first_wall: dict[int, float], max_lag: float,
                  truth_path: Path | None) -> None:
    appearances = []
    for k, a in enumerate(shows):
        keys = [{"t": round(i / fps, 6), "wall": keyframe_wall.get(i)}
                for i in range(0, round(duration_s * fps), gop) if a.start_s <= i / fps < a.end_s]
        appearances.append({**a.to_json(), "wall_start": first_wall.get(k), "keyframes": keys})
    truth["appearances"] = appearances
    truth["max_lag_s"] = round(max_lag, 3)  # how far the encoder fell behind real time at worst
    if truth_path is not None:
        truth_path.write_text(json.dumps(truth, indent=2))


def keyframe_times(duration_s: float, fps: int, gop_s: float) -> list[float]:
    """Stream times of every keyframe `generate` writes."""
    gop = max(1, round(fps * gop_s))
    return [i / fps for i in range(0, round(duration_s * fps), gop)]


def load_plan(path: Path) -> tuple[list[Appearance], list[Scene] | None]:
    data = json.loads(path.read_text())
    shows = [Appearance.from_json(d) for d in data.get("shows", [])]
    scenes = [Scene.from_json(d) for d in data["scenes"]] if data.get("scenes") else None
    return shows, scenes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m test_streams.live", description=__doc__.split("\n\n")[0])
    p.add_argument("output")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--show", type=parse_show, action="append", default=[], metavar="IMAGE:START:END[:TRANSFORM]")
    p.add_argument("--show-file", type=parse_show_file, action="append", default=[],
                   metavar="PATH:START:END[:TRANSFORM]", help="an image or video of your own")
    p.add_argument("--plan", type=Path, help="JSON {'shows': [appearance, ...], 'scenes': [...]} (as in a truth file)")
    p.add_argument("--seed", type=int, default=1, help="background seed")
    p.add_argument("--scenes", action="store_true", help="scene cuts (pan, zoom, talking head, game)")
    p.add_argument("--scene-kinds", default=",".join(SCENE_KINDS), help="comma-separated subset of the kinds")
    p.add_argument("--fast", action="store_true", help="do not pace to real time")
    p.add_argument("--truth", type=Path, help="write the ground truth JSON here")
    p.add_argument("--linger", type=float, default=0.0, metavar="S",
                   help="after the last frame, write the truth file, then keep the output open S seconds")
    p.add_argument("--bank", type=Path, help="write the CSV bank of the shown originals here")
    p.add_argument("--bank-crops", action="store_true", help="the bank also holds crop windows of each picture")
    args = p.parse_args(argv)
    shows: list[Appearance] = [*args.show, *args.show_file]
    scenes: bool | list[Scene] = bool(args.scenes)
    if args.plan is not None:
        plan_shows, plan_scenes = load_plan(args.plan)
        shows += plan_shows
        if plan_scenes is not None:
            scenes = plan_scenes
    kinds = [k for k in args.scene_kinds.split(",") if k]
    try:
        generate(args.output, width=args.width, height=args.height, fps=args.fps, gop_s=args.gop,
                 duration_s=args.duration, shows=shows, seed=args.seed, realtime=not args.fast,
                 truth_path=args.truth, scenes=scenes, scene_kinds=kinds, bank_path=args.bank,
                 bank_crops=args.bank_crops, linger_s=args.linger)
    except (av.error.FFmpegError, OSError) as exc:  # reader went away, server refused, disk full
        print(f"test stream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Appearance", "apply_transform", "bank_for", "generate", "hash_originals", "keyframe_times", "main",
           "original_file", "original_key", "picture_for", "write_bank"]
