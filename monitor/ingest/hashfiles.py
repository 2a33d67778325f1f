"""`monitor hash`: fingerprints of image and video files, through the same scaling path as live frames.

Frames go through libswscale at the ingest width exactly as stream keyframes do, so a bank made here and a
sample taken from a stream differ only by what the stream did to the picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.error

from monitor.common.errors import UserError
from monitor.ingest.reader import scaled_rgb
from pipelines.fingerprint import pdq, phash
from pipelines.hamming import code_to_hex
from pipelines.robust import bank_crop_variants

MIN_QUALITY = 50  # PDQ quality under which a hash matches unreliably (the matcher's default gate)


@dataclass(frozen=True, slots=True)
class FileHash:
    source: str
    time_s: float | None  # position in a video; None for a still image
    hex: str
    quality: int
    variant: str | None = None  # a bank-side crop window of the picture (pipelines.robust.bank_crop_variants)


def hash_file(path: Path, *, signal_type: str = "pdq", scale_width: int = 512,
              every_s: float = 1.0, crops: bool = False) -> Iterator[FileHash]:
    """One hash for an image; one per `every_s` seconds (vPDQ style) for a video. `crops`: a still image also
    yields its crop windows (found then when a stream shows the picture cropped), those with PDQ quality of at
    least MIN_QUALITY."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise UserError(f"{path}: cannot open as image or video: {getattr(exc, 'strerror', None) or exc}") from None
    with container:
        if not container.streams.video:
            raise UserError(f"{path}: no picture in this file")
        video = container.streams.video[0]
        # Still images come through the image demuxers; everything else is treated as video.
        is_still = container.format.name == "image2" or container.format.name.endswith("_pipe")
        next_t = 0.0
        try:
            for frame in container.decode(video):
                t = float(frame.pts * video.time_base) if frame.pts is not None and video.time_base else 0.0
                if not is_still and t + 1e-6 < next_t:
                    continue
                next_t = t + every_s
                rgb = scaled_rgb(frame, scale_width)
                code, quality = pdq(rgb)
                if signal_type == "phash":
                    code = phash(rgb)
                yield FileHash(str(path), None if is_still else round(t, 3), code_to_hex(code), quality)
                if is_still:
                    if crops:
                        for name, view in bank_crop_variants(rgb):
                            vcode, vquality = pdq(view)
                            if vquality < MIN_QUALITY:
                                continue  # a window too flat to hash reliably: the picture itself is in the bank
                            if signal_type == "phash":
                                vcode = phash(view)
                            yield FileHash(str(path), None, code_to_hex(vcode), vquality, name)
                    return
        except av.error.FFmpegError as exc:
            raise UserError(f"{path}: cannot decode: {exc}") from None
