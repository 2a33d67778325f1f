"""Adversarial encodings of a live stream: a known picture on screen for a few seconds, placed where a sampler that
decodes only keyframes never looks (issue 12), and the checkers that prove each encoding does what it claims.

Every encoding is one ffmpeg (libx264) command line. The whole picture - background, the known picture and when it
is on screen - is one lavfi graph read as the *input* (`-f lavfi -i GRAPH`), so `-re` paces the stream by the
graph's own timestamps (the variable-frame-rate encoding needs that) and the same graph goes either live to
nginx-rtmp (`publish_cmd`, FLV over RTMP) or to an FLV file (`record_cmd`). Tests publish the recorded file with
`-c copy` (`copy_publish_cmd`): the bytes on the wire are then exactly the ones `check_recording` examined, and a
publisher costs almost nothing.

| name | letter | what the keyframes show | where the picture is |
|---|---|---|---|
| control | - | the picture (2 s GOP) | 4 s, keyframes included |
| forced_keyframes | a | the background (keyframes forced every G frames) | frames 1..G-1 of every GOP |
| intra_refresh | b | no keyframe after the first IDR: periodic intra refresh, recovery-point SEI | 4 s |
| gop10 / gop30 | c / d | the background: one keyframe before the picture, the next 10 / 30 s later | 4 s in between |
| fade_after_key | e | the background; the picture blended in over F frames after each keyframe | rest of every GOP |
| bframes_only | f | the background; P-frames too | B-frames only (non-reference) |
| vfr_jumps | g | the background; 60-frame GOPs, 5 fps while the picture shows, then a timestamp jump | 4 s (media) |
| all_keyframes | h | every frame is a keyframe (`-g 1`) | 4 s |

`check_recording` decodes a recorded file three ways with PyAV: (1) as the keyframe-only reader did (key packets
only, `skip_frame=NONKEY`, drained and flushed after each), (2) every packet fed to a decoder with
`skip_frame=NONKEY` (it decides what is key, recovery points included), (3) in full; each frame is scaled and
PDQ-hashed as the monitor does (`monitor.ingest.reader.scaled_rgb`, `pipelines.fingerprint.pdq`) and compared with the
picture's bank code. `problems` says where a recording does not do what its encoding claims.
"""

from __future__ import annotations

import itertools
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from monitor.ingest.reader import scaled_rgb
from pipelines.fingerprint import PDQ_DEFAULT_THRESHOLD, pdq
from pipelines.hamming import Codes, hex_to_code

MATCH_BITS = PDQ_DEFAULT_THRESHOLD  # "found": within this many bits of the bank entry
FFMPEG = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
_UNSAFE = set("'\\:;,[]=\n")  # characters a path cannot carry into a lavfi graph unescaped


@dataclass(frozen=True)
class Layout:
    """Size, rate and timing shared by every encoding; times are media seconds from the stream's start."""

    width: int = 640
    height: int = 360
    fps: int = 30
    show_at_s: float = 4.0  # the picture appears here ...
    show_s: float = 4.0  # ... for this long
    tail_s: float = 3.0  # background after it
    lead_s: float = 2.0  # long-GOP encodings: keyframes every second until here, so a late reader can join
    preset: str = "ultrafast"
    bitrate_k: int | None = None  # None: x264's default CRF
    background: Path | None = None  # a video file (looped, scaled) instead of testsrc2

    @property
    def duration_s(self) -> float:
        return self.show_at_s + self.show_s + self.tail_s

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Encoding:
    """One way of encoding the stream. Expressions are ffmpeg expressions in `n` (frame number) and `t`."""

    name: str
    letter: str
    summary: str
    old_sampler_blind: bool  # a keyframe-only sampler never has the picture in front of it
    gop_frames: int  # keyframe period (x264 keyint) after `lead_frames`
    lead_frames: int = 0  # before this frame keyframes come once a second
    x264: tuple[str, ...] = ()  # -x264-params entries
    bframes: int = 0
    zerolatency: bool = True
    force_keys: bool = True  # force the keyframes with -force_key_frames (else x264 places them: intra refresh)
    enable: str = ""  # when the picture is on screen, an expression in `t` (see _frame); "" = the show window
    fade_frames: int = 0  # blend the picture in over this many frames after each keyframe
    slow_fps: float = 0.0  # vfr: frame rate while the picture is shown
    jump_s: float = 0.0  # vfr: forward timestamp jump right after the picture


def _frame(layout: Layout) -> str:
    """The frame number at the nominal rate, from the frame's own timestamp.

    Overlay's timeline `enable` and its `n` are evaluated when the filter takes a frame from its first input, and
    the frame synchroniser takes the next one ahead of time (by how much depends on the caller: PyAV's lavfi
    demuxer and the ffmpeg tool differ by a frame). Its `x` expression sees the timestamp of the very frame it
    draws on, so every "is the picture on" decision here is an x position computed from `t`.
    """
    return f"round(t*{layout.fps})"


def _window(layout: Layout) -> str:
    first = round(layout.show_at_s * layout.fps)
    last = first + round(layout.show_s * layout.fps) - 1
    return f"between({_frame(layout)},{first},{last})"


def keyframe_expr(enc: Encoding, layout: Layout) -> str:
    """1 on the frames that are forced keyframes: once a second before `lead_frames`, then every gop_frames."""
    g, lead, r = enc.gop_frames, enc.lead_frames, layout.fps
    if lead <= 0:
        return f"eq(mod(n,{g}),0)"
    return f"gte(lt(n,{lead})*eq(mod(n,{r}),0)+gte(n,{lead})*eq(mod(n-{lead},{g}),0),1)"


def vfr_key_frame(enc: Encoding, layout: Layout) -> int:
    """vfr_jumps: the keyframe right before the picture (frame number at the nominal rate)."""
    g = enc.gop_frames
    return -(-round(layout.show_at_s * layout.fps) // g) * g


def vfr_setpts(enc: Encoding, layout: Layout) -> str:
    """Timestamps of vfr_jumps: nominal rate, `slow_fps` for the picture's frames after keyframe K, and a jump
    after the first background frame that follows them."""
    k = vfr_key_frame(enc, layout)
    p = round(layout.show_s * enc.slow_fps)
    r = layout.fps
    return f"(N/{r}+clip(N-{k},0,{p})*({1 / enc.slow_fps:.6f}-1/{r})+gt(N,{k + p + 1})*{enc.jump_s:g})/TB"


def encodings(layout: Layout = Layout()) -> list[Encoding]:
    """The control stream and the adversarial encodings a..h for this layout."""
    r = layout.fps
    g2 = 2 * r
    lead = round(layout.lead_s * r)
    win = _window(layout)
    n = _frame(layout)
    not_key = f"not(eq(mod({n},{g2}),0))"
    # bframes_only: with b-adapt=0 and 3 B-frames, display order is I B B B P B B B P ... from each keyframe; the
    # frame right before a keyframe is coded as P (a B-frame there would need the next GOP). The picture is on the
    # B positions only.
    b_positions = f"not(eq(mod({n},4),0))*not(eq(mod({n}+1,{g2}),0))"
    out = [
        Encoding("control", "-", "ordinary stream: 2 s GOP, the picture on screen 4 s, keyframes included",
                 False, g2),
        Encoding("forced_keyframes", "a", f"keyframes forced every {g2} frames show the background; every other "
                 "frame of the window shows the picture", True, g2, enable=f"{win}*{not_key}"),
        Encoding("intra_refresh", "b", "periodic intra refresh (keyint 60, intra-refresh=1): one IDR at the start, "
                 "then recovery-point SEI on P-frames; the picture on screen 4 s", True, g2,
                 x264=("intra-refresh=1",), force_keys=False),
        Encoding("gop10", "c", "10 s GOP: a keyframe 2 s before the picture, the next 10 s after it",
                 True, 10 * r, lead_frames=lead),
        Encoding("gop30", "d", "30 s GOP: a keyframe 2 s before the picture, the next 30 s after it",
                 True, 30 * r, lead_frames=lead),
        Encoding("fade_after_key", "e", f"keyframes every {g2} frames show the background; the picture fades in "
                 "over 15 frames after each keyframe (no single large frame)", True, g2, fade_frames=15),
        Encoding("bframes_only", "f", "3 B-frames, no pyramid (non-reference B), fixed pattern: the picture on the "
                 "B-frames only; I- and P-frames show the background", True, g2, bframes=3,
                 x264=("b-pyramid=none", "b-adapt=0"), zerolatency=False, enable=f"{win}*{b_positions}"),
        Encoding("vfr_jumps", "g", f"variable frame rate: {g2}-frame GOPs; after a keyframe the picture's frames come "
                 "at 5 fps (4 s of media time in 20 frames), then the timestamps jump 2 s forward",
                 True, g2, slow_fps=5.0, jump_s=2.0),
        Encoding("all_keyframes", "h", "every frame a keyframe (-g 1): not blind, but costs a decode per frame",
                 False, 1, force_keys=False),
    ]
    return out


def by_name(layout: Layout = Layout()) -> dict[str, Encoding]:
    return {e.name: e for e in encodings(layout)}


def _graph_path(path: Path) -> str:
    text = str(path.resolve())
    if _UNSAFE & set(text):
        raise ValueError(f"{text}: a path with one of {''.join(sorted(_UNSAFE))!r} cannot go into a lavfi graph")
    return text


def filtergraph(enc: Encoding, layout: Layout, picture: Path) -> str:
    """The lavfi graph of one encoding: background, the picture over it when it shows, timestamps (vfr).

    Both inputs run at the nominal rate with time base 1/fps, so the overlay pairs each background frame with the
    picture frame of the same number. The fade loops a G-frame clip of the picture whose alpha ramps up over its
    first frames (frame 0 fully transparent), so frame m of every GOP has the alpha of step m.
    """
    w, h, r = layout.width, layout.height, layout.fps
    if layout.background is None:
        bg = f"testsrc2=size={layout.size}:rate={r},format=yuv420p"
    else:
        bg = (f"movie={_graph_path(layout.background)}:loop=0,scale={w}:{h},format=yuv420p,settb=1/{r},"
              "setpts=N")
    pic = f"movie={_graph_path(picture)},scale={w}:{h}"
    if enc.fade_frames:
        g, f = enc.gop_frames, enc.fade_frames
        pic += (f",format=yuva420p,loop=loop={g - 1}:size=1:start=0,settb=1/{r},setpts=N,"
                f"fade=t=in:s=0:n={f}:alpha=1,loop=loop=-1:size={g}:start=0")
    else:
        pic += ",format=yuv420p,loop=loop=-1:size=1:start=0"
    pic += f",settb=1/{r},setpts=N"
    if enc.slow_fps:
        k = vfr_key_frame(enc, layout)
        p = round(layout.show_s * enc.slow_fps)
        show = f"between({_frame(layout)},{k + 1},{k + p})"
    else:
        show = enc.enable or _window(layout)
    graph = f"{bg}[bg];{pic}[k];[bg][k]overlay=x='if({show},0,main_w)':y=0:eval=frame:shortest=1"
    if enc.slow_fps:
        graph += f",setpts='{vfr_setpts(enc, layout)}'"
    return graph


def encode_args(enc: Encoding, layout: Layout, picture: Path, *, realtime: bool) -> list[str]:
    """ffmpeg arguments up to (not including) the output: the lavfi input and the libx264 settings."""
    cmd = [*FFMPEG, *(["-re"] if realtime else []), "-f", "lavfi", "-i", filtergraph(enc, layout, picture),
           "-t", f"{layout.duration_s:g}", "-an", "-c:v", "libx264", "-preset", layout.preset]
    if enc.zerolatency:
        cmd += ["-tune", "zerolatency"]
    g = enc.gop_frames
    params = ["scenecut=0", *enc.x264]
    if enc.name == "intra_refresh":
        params.insert(0, f"keyint={g}")
    cmd += ["-pix_fmt", "yuv420p", "-g", str(g), "-keyint_min", str(g), "-bf", str(enc.bframes),
            "-x264-params", ":".join(params)]
    if enc.force_keys and g > 1:
        cmd += ["-force_key_frames", f"expr:{keyframe_expr(enc, layout)}"]
    if layout.bitrate_k:
        b = layout.bitrate_k
        cmd += ["-b:v", f"{b}k", "-maxrate", f"{b}k", "-bufsize", f"{2 * b}k"]
    cmd += ["-fps_mode", "passthrough"]
    return cmd


def publish_cmd(enc: Encoding, url: str, picture: Path, layout: Layout = Layout()) -> list[str]:
    """Encode live and publish as FLV over RTMP (`-re`: paced by the graph's timestamps)."""
    return [*encode_args(enc, layout, picture, realtime=True), "-f", "flv", url]


def record_cmd(enc: Encoding, path: Path, picture: Path, layout: Layout = Layout()) -> list[str]:
    """The same encoding into an FLV file, as fast as the machine goes."""
    return [*encode_args(enc, layout, picture, realtime=False), "-y", "-f", "flv", str(path)]


def copy_publish_cmd(path: Path, url: str) -> list[str]:
    """Publish a recorded file as it is (`-c copy`, `-re`): the stream carries the recording's exact bytes."""
    return [*FFMPEG, "-re", "-i", str(path), "-c", "copy", "-f", "flv", url]


def record(enc: Encoding, folder: Path, picture: Path, layout: Layout = Layout(),
           timeout_s: float = 300) -> Path:
    """Record one encoding into `folder/<name>.flv` (kept if it is there already with the same command)."""
    path = folder / f"{enc.name}.flv"
    cmd = record_cmd(enc, path, picture, layout)
    stamp = path.with_suffix(".cmd")
    if path.exists() and stamp.exists() and stamp.read_text() == repr(cmd):
        return path
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, timeout=timeout_s, capture_output=True)
    stamp.write_text(repr(cmd))
    return path


# -- checking a recording ---------------------------------------------------------------------------------------
@dataclass
class FrameInfo:
    t: float  # media time (s)
    key: bool  # the packet was flagged key (what the keyframe-only reader acted on)
    pict_type: str  # I, P or B as decoded
    size: int  # packet bytes
    distance: int  # PDQ bits to the bank entry
    duration: float = 0.0  # until the next frame in presentation order


@dataclass
class Check:
    """What decoding a recording found."""

    name: str
    frames: list[FrameInfo]
    keyframe_reader_distances: list[tuple[float, int]]  # (t, bits) of what the keyframe-only reader decoded
    nonkey_decoder_distances: list[tuple[float, int]]  # (t, bits) of skip_frame=NONKEY fed every packet
    reference_min_distance: int  # nearest the entry any reference frame came (skip_frame=NONREF decode)

    @property
    def key_times(self) -> list[float]:
        return [f.t for f in self.frames if f.key]

    @property
    def matched(self) -> list[FrameInfo]:
        return [f for f in self.frames if f.distance <= MATCH_BITS]

    @property
    def matched_s(self) -> float:
        """Media time during which a full decode shows something within MATCH_BITS of the entry."""
        return sum(f.duration for f in self.matched)

    @property
    def keyframe_min_distance(self) -> int:
        """Nearest the entry that any keyframe came, either way of decoding keyframes only (256 if none)."""
        ds = [d for _, d in self.keyframe_reader_distances + self.nonkey_decoder_distances]
        return min(ds, default=256)

    def summary(self) -> dict[str, Any]:
        m = self.matched
        times = [f.t for f in self.frames]
        gaps = np.diff(times) if len(times) > 1 else np.zeros(0)
        return {
            "frames": len(self.frames),
            "keyframes": len(self.key_times),
            "key_times_s": [round(t, 3) for t in self.key_times[:12]],
            "pict_types": dict(Counter(f.pict_type for f in self.frames)),
            "keyframe_reader_min_bits": min((d for _, d in self.keyframe_reader_distances), default=256),
            "keyframe_reader_pictures": len(self.keyframe_reader_distances),
            "nonkey_decoder_min_bits": min((d for _, d in self.nonkey_decoder_distances), default=256),
            "nonkey_decoder_pictures": len(self.nonkey_decoder_distances),
            "full_decode_min_bits": min((f.distance for f in self.frames), default=256),
            "reference_frames_min_bits": self.reference_min_distance,
            "matched_frames": len(m),
            "matched_s": round(self.matched_s, 3),
            "matched_from_s": round(m[0].t, 3) if m else None,
            "matched_to_s": round(m[-1].t + m[-1].duration, 3) if m else None,
            "matched_pict_types": dict(Counter(f.pict_type for f in m)),
            "max_frame_gap_s": round(float(gaps.max()), 3) if len(gaps) else None,
        }


def _pict_type(frame: Any) -> str:
    """I, P, B (PyAV gives an enum member, or an int in some versions)."""
    pt = frame.pict_type
    name = getattr(pt, "name", None)
    return str(name) if name else {1: "I", 2: "P", 3: "B"}.get(int(pt), str(pt))


def _distance(frame: Any, code: Codes, scale_width: int) -> int:
    got, _ = pdq(scaled_rgb(frame, scale_width))
    return int(np.unpackbits(np.bitwise_xor(got, code)).sum())


def _seconds(frame: Any, tb: Any) -> float:
    return float(frame.pts * tb) if frame.pts is not None and tb is not None else float("nan")


def _frames_in_order(path: Path) -> Iterator[tuple[Any, Any]]:
    """(packet, frame) for every decoded frame; the frame's packet found by pts (B-frames come out reordered)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        v.codec_context.thread_count = 1
        packets: dict[int, Any] = {}
        for packet in c.demux(v):
            if packet.pts is not None:
                packets[packet.pts] = (bool(packet.is_keyframe), packet.size)
            for frame in packet.decode():
                if frame.pts is not None:
                    yield packets.pop(frame.pts, (False, 0)), (frame, v.time_base)


def check_recording(path: Path, entry_hex: str, scale_width: int = 512) -> Check:
    """Decode `path` keyframes-only (two ways) and in full; PDQ distances to the entry `entry_hex`."""
    code = hex_to_code(entry_hex)
    frames: list[FrameInfo] = []
    for (key, size), (frame, tb) in _frames_in_order(path):
        frames.append(FrameInfo(_seconds(frame, tb), key, _pict_type(frame), size,
                                _distance(frame, code, scale_width)))
    frames.sort(key=lambda f: f.t)
    for a, b in itertools.pairwise(frames):
        a.duration = b.t - a.t
    if frames:
        frames[-1].duration = frames[-2].duration if len(frames) > 1 else 0.0

    reader: list[tuple[float, int]] = []  # the keyframe-only reader's way (monitor.ingest.reader before issue 12)
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        ctx = v.codec_context
        ctx.skip_frame = "NONKEY"
        ctx.thread_count = 1
        for packet in c.demux(v):
            if not packet.is_keyframe or packet.pts is None:
                continue
            try:
                out = [*ctx.decode(packet), *ctx.decode(None)]
            except av.error.InvalidDataError:
                out = []
            ctx.flush_buffers()
            reader += [(_seconds(f, v.time_base), _distance(f, code, scale_width)) for f in out]

    def skipping(mode: Literal["NONKEY", "NONREF"]) -> list[tuple[float, int]]:
        """Every packet in; the decoder itself skips the frames `mode` names (what it calls key, or non-reference)."""
        with av.open(str(path)) as c:
            v = c.streams.video[0]
            v.codec_context.skip_frame = mode
            v.codec_context.thread_count = 1
            return [(_seconds(f, v.time_base), _distance(f, code, scale_width)) for f in c.decode(v)]

    reference = min((d for _, d in skipping("NONREF")), default=256)
    return Check(path.stem, frames, reader, skipping("NONKEY"), reference)


def expected_visible_s(enc: Encoding, layout: Layout) -> float:
    """How long a full decode should find the picture (media time), from the encoding's construction."""
    show = layout.show_s
    if enc.name == "forced_keyframes":
        return show * (enc.gop_frames - 1) / enc.gop_frames
    if enc.name == "fade_after_key":
        return show * (enc.gop_frames - enc.fade_frames * 0.6) / enc.gop_frames  # the fade's later frames match
    if enc.name == "bframes_only":
        return show * (3 / 4 - 1 / enc.gop_frames)
    if enc.name == "vfr_jumps":
        return show  # its 20 frames at 5 fps
    return show


def problems(enc: Encoding, check: Check, layout: Layout = Layout()) -> list[str]:
    """Where the recording does not do what `enc` claims (empty: it does)."""
    out: list[str] = []
    s = check.summary()
    want = expected_visible_s(enc, layout)
    got = check.matched_s
    if not 0.8 * want - 0.1 <= got <= want + 0.35:
        out.append(f"full decode finds the picture for {got:.2f} s, expected about {want:.2f} s")
    m = check.matched
    if m and (m[0].t < layout.show_at_s - 0.05 or m[0].t > layout.show_at_s + 0.6):
        out.append(f"the picture first appears at {m[0].t:.2f} s, not at {layout.show_at_s:g} s")
    kmin = check.keyframe_min_distance
    if enc.old_sampler_blind and kmin <= MATCH_BITS:
        out.append(f"a keyframe comes within {kmin} bits of the entry: keyframe-only sampling is not blind")
    if not enc.old_sampler_blind and s["keyframe_reader_min_bits"] > MATCH_BITS:
        out.append(f"keyframes never come within {MATCH_BITS} bits ({s['keyframe_reader_min_bits']}): "
                   "the keyframe-only reader should see this one")
    keys = check.key_times
    types = Counter(f.pict_type for f in check.frames)
    if enc.name == "intra_refresh":
        if types.get("I", 0) != 1:
            out.append(f"intra refresh: {types.get('I', 0)} I-frames, expected only the first")
        if len(keys) < 2:
            out.append("intra refresh: no key-flagged recovery points after the first frame")
    if enc.name in ("gop10", "gop30"):
        after = [t for t in keys if t >= layout.lead_s - 1e-3]
        gap = enc.gop_frames / layout.fps
        if not after or abs(after[0] - layout.lead_s) > 0.05 or (len(after) > 1 and after[1] - after[0] < gap - 0.05):
            out.append(f"keyframes {keys}: expected one at {layout.lead_s:g} s and then none for {gap:g} s")
    if enc.name == "bframes_only":
        kinds = Counter(f.pict_type for f in m)
        if set(kinds) != {"B"}:
            out.append(f"the picture is on {dict(kinds)} frames, expected B only")
        if check.reference_min_distance <= MATCH_BITS:
            out.append(f"a reference frame comes within {check.reference_min_distance} bits: the B-frames carrying "
                       "the picture should be non-reference")
    if enc.name == "vfr_jumps" and (s["max_frame_gap_s"] or 0) < enc.jump_s:
        out.append(f"no timestamp jump of {enc.jump_s:g} s (largest gap {s['max_frame_gap_s']})")
    if enc.name == "vfr_jumps" and len(m) > round(layout.show_s * enc.slow_fps) + 1:
        out.append(f"{len(m)} frames carry the picture, expected {round(layout.show_s * enc.slow_fps)}")
    if enc.name == "all_keyframes" and len(keys) != len(check.frames):
        out.append(f"{len(keys)} of {len(check.frames)} frames are keyframes")
    if enc.name in ("forced_keyframes", "fade_after_key", "bframes_only", "control"):
        gaps = set(np.round(np.diff(keys), 2)) if len(keys) > 1 else set()
        if gaps and gaps != {round(enc.gop_frames / layout.fps, 2)}:
            out.append(f"keyframe intervals {sorted(gaps)} s, expected {enc.gop_frames / layout.fps:g} s")
    return out
