"""What runs on each sample: the `matching:` switches of the hash matcher and the `analyses:` entries (the
known-content matcher and the classifiers), built by kind in monitor/runtime/analyses.py.

The two classifiers (an ONNX model, an HTTPS service) share `ClassifierConfig`: name, labels, sampling and
incidents; each adds only what reaching its scorer takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from monitor.config.base import Severity, Strict, TopicLevel, first_duplicate


class MatchingConfig(Strict):
    """What is hashed of each sample (pipelines/robust.py); cost and gain per switch in docs/eval-images.md."""

    min_quality: int = Field(50, ge=0, le=100)  # PDQ quality below this hashes unreliably (flat frames)
    strip_bars: bool = True  # letterbox/pillarbox/padding removed before hashing (the full frame is hashed too)
    dihedral: bool = True  # mirrored and rotated content, from the same DCT
    boxes: bool = True  # inner rectangles (picture-in-picture, content inset in another picture)
    crops: bool = False  # a few fixed crops of each sample
    pip: bool = False  # the four quadrants and the centre at 1/4 area
    tones: bool = True  # the frame re-toned by four gammas (brightness/contrast/gamma changed by the stream)
    reextend: bool = True  # the frame as a 5 % crop of its original, re-extended at 16 positions (cropped clips)
    strips: bool = True  # edge strips smeared over: bottom/top 20 % (bands), right/left 30 % (chat columns)
    tilts: bool = True  # the frame turned back by 2 degrees either way (slightly rotated content)
    layout: bool = True  # per stream: what stays fixed while content changes is layout (content window, fill)


class ClassLabelConfig(Strict):
    """One output of a classifier, in output order."""

    name: TopicLevel  # the incident's entry id and the alert's label
    threshold: float | None = Field(0.5, ge=0, le=1)  # null: never alerts (a background / "other" class)
    severity: Severity = "high"


class ClassifierSamplingConfig(Strict):
    """Which samples a classifier sees, and how they are batched (pipelines/classifier/)."""

    every_k: int = Field(4, ge=1)  # every k-th sample of a stream ...
    dense_every: int = Field(1, ge=1)  # ... and every this many for new streams and after a near match
    new_stream_s: float = Field(10.0, ge=0)
    near_match_s: float = Field(30.0, ge=0)
    near_fraction: float = Field(0.5, ge=0, le=1)  # a score this fraction of its threshold is a near match
    batch_size: int = Field(8, ge=1, le=1024)  # up to B samples of the worker's streams in one inference ...
    batch_wait_ms: float = Field(50.0, ge=0)  # ... or what came within T ms of the first
    queue_size: int = Field(64, ge=1)  # waiting samples; beyond that the oldest is dropped (counted)
    max_sample_age_s: float = Field(5.0, gt=0)  # a sample that waited longer is dropped (counted)


class ClassifierIncidentsConfig(Strict):
    """Classifiers are noisy: k of the last n classified samples of a stream over a label's threshold."""

    confirm_k: int = Field(3, ge=1)
    confirm_n: int = Field(5, ge=1)
    window_s: float = Field(20.0, gt=0)  # ... within this much stream time

    @model_validator(mode="after")
    def _check_kn(self) -> ClassifierIncidentsConfig:
        if self.confirm_k > self.confirm_n:
            raise ValueError("confirm_k must not exceed confirm_n")
        return self


class KnownContentAnalysisConfig(Strict):
    """The hash matcher over `banks:`, with the switches of `matching:`."""

    kind: Literal["known_content"]
    name: TopicLevel = "known_content"


class ClassifierConfig(Strict):
    """What every classifier has, whatever scores it: its name, its labels in output order, which samples it
    sees and how its scores become incidents."""

    name: TopicLevel  # the alert's `pipeline` and `bank`
    labels: list[ClassLabelConfig] = Field(min_length=1)
    sampling: ClassifierSamplingConfig = ClassifierSamplingConfig()
    incidents: ClassifierIncidentsConfig = ClassifierIncidentsConfig()

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[ClassLabelConfig]) -> list[ClassLabelConfig]:
        dup = first_duplicate(x.name for x in v)
        if dup is not None:
            raise ValueError(f"label {dup!r} appears twice")
        return v


class OnnxClassifierConfig(ClassifierConfig):
    """An ONNX model run with ONNX Runtime (CPU; CUDA when onnxruntime-gpu offers it)."""

    kind: Literal["onnx_classifier"]
    model: Path  # its sha256 is the model id in alerts and evidence
    input_size: tuple[int, int]  # width, height the model takes
    colour_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    scale: float = Field(1 / 255, gt=0)  # pixel * scale, then (x - mean) / std per channel (in colour_order)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: Literal["probabilities", "logits_softmax", "logits_sigmoid"] = "probabilities"
    providers: Literal["auto", "cpu"] = "auto"  # auto: CUDAExecutionProvider first when present
    threads: int = Field(1, ge=1, le=64)  # intra-op threads per worker process

    @field_validator("input_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(8 <= x <= 4096 for x in v):
            raise ValueError("width and height must be 8-4096")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x == 0 for x in v):
            raise ValueError("must not be 0")
        return v


class ServiceClassifierConfig(ClassifierConfig):
    """A classification service over HTTPS (monitor/runtime/classify_service.py)."""

    kind: Literal["service_classifier"]
    url: str  # the one endpoint samples are posted to (https only)
    model_id: str = Field(min_length=1, max_length=200)  # the vendor's model name and version, for alerts
    ca_file: Path | None = None  # the service's CA (default: the system's)
    auth_header: str = "Authorization"
    auth_file: Path | None = None  # the header's value, e.g. "Bearer ..."; kept out of the config
    timeout_s: float = Field(5.0, gt=0)
    max_concurrency: int = Field(4, ge=1, le=256)
    breaker_failures: int = Field(5, ge=1)  # this many failures in a row open the circuit ...
    breaker_reset_s: float = Field(30.0, gt=0)  # ... for this long, then one trial request
    jpeg_quality: int = Field(85, ge=10, le=100)
    max_side: int = Field(512, ge=32, le=4096)  # the JPEG's longer side
    scores_field: str = "scores"  # dotted path in the JSON answer to {label: score} or [{label, score}]
    # service label -> configured label (unmapped service labels are ignored)
    label_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _https(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL")
        if "@" in parts.netloc:
            raise ValueError("must not hold credentials: put the header value in auth_file")
        return v


AnalysisConfig = Annotated[KnownContentAnalysisConfig | OnnxClassifierConfig | ServiceClassifierConfig,
                           Field(discriminator="kind")]
# Fields of an analysis that name files: a relative path in a config file is relative to that file.
ANALYSIS_PATH_FIELDS = ("model", "auth_file", "ca_file")
