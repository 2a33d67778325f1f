"""What the monitor reads and how often it looks: `streams:`, `banks:` and their reloading, `ingest:` (opening,
reading and decoding a stream) and `sampling:` (which moments become samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from monitor.config.base import Severity, Strict, TopicLevel


class StreamConfig(Strict):
    id: TopicLevel
    url: str
    priority: float = Field(1.0, gt=0)  # weight in the sample budget


class BankConfig(Strict):
    name: TopicLevel
    path: Path
    signal_type: Literal["pdq", "phash"] = "pdq"
    threshold: int | None = Field(None, ge=0, le=256)  # None: the signal type's default
    severity: Severity = "high"
    enabled: bool = True
    # Known benign content (test cards, popular false positives): a sample matching it alerts on no bank.
    negative: bool = False
    max_bytes: int = Field(256 * 2**20, ge=1)  # a larger file is refused (pipelines.banks.DEFAULT_MAX_BYTES)
    follow_symlinks: bool = False  # refused by default: a bank path swapped for a link is not read


class BankReloadConfig(Strict):
    watch: bool = True  # reload a bank when its file changes (also on SIGHUP)
    interval_s: float = Field(5.0, gt=0)


class IngestConfig(Strict):
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    # No keyframe for this long while data flows: reconnect (None: 3 GOPs or 2 read timeouts, the longer).
    keyframe_timeout_s: float | None = Field(None, gt=0)
    # HLS waits up to two target durations (+1 s) for a segment; this is assumed when the playlist has none.
    hls_default_segment_s: float = Field(6.0, gt=0)
    # Frames are scaled in libswscale to this width (aspect kept) before hashing.
    scale_width: int = Field(512, ge=64, le=4096)
    decoder_threads: int = Field(1, ge=0, le=16)
    # Pictures larger than this are not decoded (checked from the codec parameters before decoding, and by
    # FFmpeg on a mid-stream size change): the stream is reported with the reason. 4096x2304 by default.
    max_pixels: int = Field(4096 * 2304, ge=64 * 64, le=1 << 28)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


class SamplingConfig(Strict):
    """Which moments become samples (monitor/ingest/coverage.py, monitor/ingest/scheduler.py).

    `adaptive` (default): every keyframe, plus frames between keyframes decoded forward when the stream's
    packets, its GOP or a random audit ask for one, so the encoder cannot choose what the monitor sees.
    `keyframes`: keyframes only (cheapest; a publisher who controls the encoder can hide from it).
    """

    mode: Literal["adaptive", "keyframes"] = "adaptive"
    # Skip keyframes closer than this to the last sample (a keyframe on every frame costs 2 samples a second).
    min_interval_s: float = Field(0.5, ge=0)
    # No representative sample for this long (stream time): decode forward to one (long GOPs, intra refresh).
    max_interval_s: float = Field(2.0, gt=0)
    jitter_s: float = Field(0.2, ge=0)  # random offset on intervals: sampling moments cannot be predicted
    # Random audit samples between keyframes, on average this often per stream (null: none).
    audit_interval_s: float | None = Field(15.0, gt=0)
    # A non-key packet this many times the stream's usual size is a picture change: sampled.
    change_ratio: float = Field(3.0, gt=1)
    escalation_s: float = Field(120.0, ge=0)  # a stream that keeps looking evasive is sampled densely this long
    escalated_interval_s: float = Field(0.5, gt=0)  # ... every this much stream time
    # Packets decoded between keyframes per second and worker process, shared fairly (null: no limit).
    forward_budget_per_s: float | None = Field(300.0, gt=0)
    budget_per_s: float | None = Field(None, gt=0)  # samples per second for all streams, shared fairly
    warmup_s: float = Field(10.0, ge=0)  # new streams are sampled densely (weight x warmup_boost) at first
    warmup_boost: float = Field(4.0, ge=1)
    near_match_boost_s: float = Field(30.0, ge=0)  # a stream with a match gets weight x boost_factor this long
    boost_factor: float = Field(4.0, ge=1)
    queue_size: int = Field(32, ge=1)  # samples waiting for analysis; beyond that the oldest is dropped
    max_sample_age_s: float = Field(2.0, gt=0)  # a sample that waited longer is dropped: latency stays bounded
    analysis_threads: int = Field(1, ge=1, le=64)  # per worker process

    @model_validator(mode="after")
    def _check_intervals(self) -> SamplingConfig:
        if self.jitter_s >= self.max_interval_s:
            raise ValueError("jitter_s must be smaller than max_interval_s")
        if self.min_interval_s > self.max_interval_s:
            raise ValueError("min_interval_s must not exceed max_interval_s")
        return self
