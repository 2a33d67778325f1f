"""The one interface every analysis implements: a Sample in, Findings out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Sample:
    """A decoded, scaled frame chosen for analysis."""

    stream_id: str
    media_time_s: float  # stream time of the frame (pts * time_base)
    received_at: float  # unix time when its packet was read
    rgb: npt.NDArray[np.uint8]  # (H, W, 3), already scaled in libswscale


FindingKind = Literal["match", "classification"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One sample matched one bank entry (kind "match"), or a classifier scored one of its labels at or over the
    label's threshold (kind "classification": `bank` is the analysis name, `entry_id` and `label` the label,
    `signal_type` "classifier", `distance`/`threshold` unused (0), `sample_hash` the sample's PDQ hash)."""

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
    kind: FindingKind = "match"
    label: str | None = None  # classifications: the model's label
    score: float | None = None  # ... its score (0-1) on this sample
    score_threshold: float | None = None  # ... the label's threshold
    model_id: str | None = None  # ... "sha256:<hex of the model file>" or the service's configured id
    severity: str | None = None  # ... the label's severity (matches take their bank's)
    image_png: bytes | None = field(default=None, repr=False)  # ... the sample, only with evidence.store_images


@dataclass(frozen=True, slots=True)
class SampleInfo:
    """What a sink learns of a sample analysed off the hash path (the pixels stay with the worker)."""

    stream_id: str
    media_time_s: float
    received_at: float


# Called by a batched analysis for every sample it analysed (findings may be empty: misses count for k of n).
ClassifiedSink = Callable[[SampleInfo, str, list[Finding], float], None]  # (sample, analysis, findings, done_at)


@runtime_checkable
class BatchedPipeline(Protocol):
    """An analysis with its own thread and queue (classifiers): `offer` returns at once and never blocks the
    hash path; results go to the sink given to `start`."""

    name: str

    def offer(self, sample: Sample) -> None: ...

    def boost(self, stream_id: str, seconds: float) -> None: ...

    def forget(self, stream_id: str) -> None: ...

    def start(self, sink: ClassifiedSink) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> Mapping[str, object]: ...  # JSON-ready counters (pipelines/classifier/stats.py)


class Pipeline(Protocol):
    """An analysis. `process` runs on a stream's worker thread and must not block on I/O."""

    name: str

    def process(self, sample: Sample) -> list[Finding]: ...
