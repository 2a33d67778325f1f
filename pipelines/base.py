"""The one interface every analysis implements: a Sample in, Findings out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Sample:
    """A decoded, scaled frame chosen for analysis."""

    stream_id: str
    media_time_s: float  # stream time of the frame (pts * time_base)
    received_at: float  # unix time when its packet was read
    rgb: npt.NDArray[np.uint8]  # (H, W, 3), already scaled in libswscale


@dataclass(frozen=True, slots=True)
class Finding:
    """One sample matched one bank entry."""

    pipeline: str
    stream_id: str
    media_time_s: float
    received_at: float
    bank: str
    entry_id: str
    signal_type: str
    distance: int
    threshold: int
    quality: int
    sample_hash: str
    entry_label: str | None = None
    entry_tags: tuple[str, ...] = field(default_factory=tuple)
    entry_frame_s: float | None = None  # the entry is a known video; this is the matched frame's time in it
    # Which view of the sample matched and how it shows the entry: 'full:identity', 'stripped:flip_h' (mirrored
    # inside black bars), 'box1:identity' (picture-in-picture), ...
    variant: str | None = None


class Pipeline(Protocol):
    """An analysis. `process` runs on a stream's worker thread and must not block on I/O."""

    name: str

    def process(self, sample: Sample) -> list[Finding]: ...
