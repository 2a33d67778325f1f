"""A live test stream encoded by PyAV itself (no ffmpeg binary): moving background, known images shown.

    python -m test_streams.live OUTPUT --duration 40 --show 0:6:12 --show 1:18:24 --truth truth.json

OUTPUT is `tcp://127.0.0.1:PORT?listen=1` (MPEG-TS; the stream starts when a reader connects),
`rtmp://HOST:PORT/app/name` (FLV, pushed to a server), or a file path. Frames are paced to real time unless
--fast. The ground-truth JSON records, for each appearance, the stream times and the wall-clock time it began.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

from test_streams.images import Background, Image, known_image


@dataclass(frozen=True)
class Appearance:
    image: int  # seed of known_image
    start_s: float
    end_s: float


def parse_show(text: str) -> Appearance:
    try:
        image, start, end = text.split(":")
        a = Appearance(int(image), float(start), float(end))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IMAGE:START:END, e.g. 0:6:12") from None
    if a.end_s <= a.start_s:
        raise argparse.ArgumentTypeError(f"{text!r}: END must be after START")
    return a


def _container_format(output: str) -> str | None:
    if output.startswith("tcp://") or output.startswith("udp://"):
        return "mpegts"
    if output.startswith("rtmp://"):
        return "flv"
    return None


def generate(output: str, *, width: int = 640, height: int = 360, fps: int = 25, gop_s: float = 2.0,
             duration_s: float = 30.0, shows: Sequence[Appearance] = (), seed: int = 1,
             realtime: bool = True, truth_path: Path | None = None) -> dict[str, object]:
    """Encode and write the stream; returns the ground truth (also written to truth_path)."""
    images: dict[int, Image] = {a.image: known_image(a.image, width, height) for a in shows}
    background = Background(seed, width, height)
    gop = max(1, round(fps * gop_s))
    container = av.open(output, "w", format=_container_format(output))
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
        truth: dict[str, object] = {
            "output": output, "width": width, "height": height, "fps": fps, "gop_s": gop_s,
            "duration_s": duration_s, "wall_start": t0, "appearances": [],
        }
        first_wall: dict[int, float] = {}
        n_frames = round(duration_s * fps)
        for i in range(n_frames):
            t = i / fps
            pic = background.frame(t)
            for k, a in enumerate(shows):
                if a.start_s <= t < a.end_s:
                    pic = images[a.image]
                    first_wall.setdefault(k, t0 + t)
            frame = av.VideoFrame.from_ndarray(pic, format="rgb24")
            frame.pts, frame.time_base = i, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
            if realtime:
                ahead = t0 + (i + 1) / fps - time.time()
                if ahead > 0:
                    time.sleep(ahead)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    truth["appearances"] = [
        {**asdict(a), "wall_start": first_wall.get(k)} for k, a in enumerate(shows)
    ]
    if truth_path is not None:
        truth_path.write_text(json.dumps(truth, indent=2))
    return truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m test_streams.live", description=__doc__.split("\n\n")[0])
    p.add_argument("output")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--show", type=parse_show, action="append", default=[], metavar="IMAGE:START:END")
    p.add_argument("--seed", type=int, default=1, help="background seed")
    p.add_argument("--fast", action="store_true", help="do not pace to real time")
    p.add_argument("--truth", type=Path, help="write the ground truth JSON here")
    args = p.parse_args(argv)
    try:
        generate(args.output, width=args.width, height=args.height, fps=args.fps, gop_s=args.gop,
                 duration_s=args.duration, shows=args.show, seed=args.seed, realtime=not args.fast,
                 truth_path=args.truth)
    except (av.error.FFmpegError, OSError) as exc:  # reader went away, server refused, disk full
        print(f"test stream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Appearance", "generate", "main"]
