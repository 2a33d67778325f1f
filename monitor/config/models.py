"""The monitor's configuration: one validated model; each module takes only the part it needs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.common.errors import ConfigError

STREAM_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # one MQTT topic level, no wildcards


def _topic_level(v: str) -> str:
    """Ids that become one MQTT topic level (and file names): no wildcards, no slashes."""
    if not STREAM_ID_RE.match(v):
        raise ValueError("must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return v


TopicLevel = Annotated[str, AfterValidator(_topic_level)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BROKER_PASSWORD_ENV = "MONITOR_BROKER_PASSWORD"


class BrokerConfig(_Strict):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None  # keeps the secret out of the config file
    ca_file: Path | None = None
    topic_prefix: str = "livesafe"
    # "auto" tries MQTT 5 and falls back to 3.1.1 (the embedded broker speaks only 3.1.1).
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    connect_timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError:
            raise ValueError("must look like mqtt://HOST:PORT or mqtts://HOST:PORT") from None
        if "@" in parts.netloc:
            # Never used to log in, and a URL is logged and shown: the secret would leak (the input is not echoed).
            raise ValueError("must not hold user:password@: give broker.username, and the password in "
                             "broker.password_file or the MONITOR_BROKER_PASSWORD environment variable")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a non-empty topic path without wildcards or outer slashes")
        return v

    def secret(self) -> str | None:
        """The password: broker.password, else broker.password_file, else MONITOR_BROKER_PASSWORD (or None).

        Never from the command line: arguments are visible to every user in the process list."""
        if self.password is not None:
            return self.password
        if self.password_file is None:
            return os.environ.get(BROKER_PASSWORD_ENV) or None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"broker.password_file: cannot read {self.password_file}: {exc.strerror}") from None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.ca_file is not None


class StreamConfig(_Strict):
    id: TopicLevel
    url: str
    priority: float = Field(1.0, gt=0)  # weight in the sample budget


class BankConfig(_Strict):
    name: TopicLevel
    path: Path
    signal_type: Literal["pdq", "phash"] = "pdq"
    threshold: int | None = Field(None, ge=0, le=256)  # None: the signal type's default
    severity: Literal["low", "medium", "high"] = "high"
    enabled: bool = True
    # Known benign content (test cards, popular false positives): a sample matching it alerts on no bank.
    negative: bool = False
    max_bytes: int = Field(256 * 2**20, ge=1)  # a larger file is refused (pipelines.banks.DEFAULT_MAX_BYTES)
    follow_symlinks: bool = False  # refused by default: a bank path swapped for a link is not read


class IngestConfig(_Strict):
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


class SamplingConfig(_Strict):
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


class MatchingConfig(_Strict):
    """What is hashed of each sample (pipelines/robust.py); cost and gain per switch in docs/eval-images.md."""

    min_quality: int = Field(50, ge=0, le=100)  # PDQ quality below this hashes unreliably (flat frames)
    strip_bars: bool = True  # letterbox/pillarbox/padding removed before hashing (the full frame is hashed too)
    dihedral: bool = True  # mirrored and rotated content, from the same DCT
    boxes: bool = True  # inner rectangles (picture-in-picture, content inset in another picture)
    crops: bool = False  # a few fixed crops of each sample
    pip: bool = False  # the four quadrants and the centre at 1/4 area
    tones: bool = True  # the frame re-toned by four gammas (brightness/contrast/gamma changed by the stream)


class BankReloadConfig(_Strict):
    watch: bool = True  # reload a bank when its file changes (also on SIGHUP)
    interval_s: float = Field(5.0, gt=0)


class IncidentsConfig(_Strict):
    """Matches of one entry on one stream become one incident (see monitor/incidents/book.py)."""

    strong_distance: int = Field(31, ge=0, le=256)  # at or below: alert on the first sample
    confirm_k: int = Field(2, ge=1)  # weaker matches alert after k of the last n samples ...
    confirm_n: int = Field(3, ge=1)
    confirm_window_s: float = Field(30.0, ge=0)  # ... within this much stream time
    update_interval_s: float = Field(30.0, ge=0)
    close_after_s: float = Field(120.0, ge=0)  # quiet this long (wall time): closed
    quarantine_streams: int = Field(5, ge=1)  # an entry matching this many streams ...
    quarantine_window_s: float = Field(300.0, ge=0)  # ... within this window is quarantined as noisy
    quarantine_s: float = Field(3600.0, ge=0)


class DeliveryConfig(_Strict):
    outbox_max_mb: int = Field(512, ge=1)  # a long broker outage fills this, not the disk the evidence is on
    health_interval_s: float = Field(10.0, gt=0)


class EvidenceConfig(_Strict):
    enabled: bool = True
    store_images: bool = False  # frames are never written to disk unless this is on
    # Ed25519 key (`monitor evidence keygen`) that signs the log's heads; outside state_dir, mode 0600.
    # Unset: heads are not signed, and a rewritten chain cannot be told from the real one.
    signing_key_file: Path | None = None
    head_interval_s: float = Field(60.0, ge=1, le=86400)  # how often a signed head is appended and published


class HooksConfig(_Strict):
    """HTTP endpoint the streaming servers call on publish/unpublish (see monitor/servers/hooks.py)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8181, ge=0, le=65535)
    secret: str | None = None  # or secret_file, or the MONITOR_HOOK_SECRET environment variable
    secret_file: Path | None = None
    pull_url_templates: dict[Literal["nginx-rtmp", "srs", "mediamtx"], str] = {}
    # A publish the monitor cannot watch (caps, registry trouble) is refused with a 4xx unless this is on.
    fail_open: bool = False
    # Streams announced by hooks and discovery: at most this many, and this many per publisher address.
    max_streams: int = Field(500, ge=1)
    max_streams_per_addr: int = Field(50, ge=1)
    # Who may authenticate with ?token= (a secret in a URL): loopback peers, any peer, or nobody.
    token_peers: Literal["loopback", "any", "none"] = "loopback"
    signature_window_s: float = Field(60.0, gt=0, le=3600)  # signed requests: |clock skew| accepted
    mediamtx_ready_timeout_s: float = Field(30.0, gt=0)  # an auth-gate registration never ready is dropped


class ServerConfig(_Strict):
    """A streaming server's API, used to drop publishers and to list streams."""

    kind: Literal["nginx-rtmp", "srs", "mediamtx"]
    api_url: str
    discover: bool = False  # poll the server's stream list and monitor what it lists
    poll_interval_s: float = Field(10.0, gt=0)
    pull_url_template: str | None = None  # for discovered streams; default: the hook template of this kind


class MetricsConfig(_Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    stale_sample_s: float = Field(30.0, gt=0)  # /healthz fails for a live stream without samples this long
    max_outbox_age_s: float = Field(300.0, gt=0)  # ... or alerts undelivered this long


class TerminateConfig(_Strict):
    auto_severities: list[Literal["low", "medium", "high"]] = []  # terminate without a moderator for these
    ban: bool = True  # ban the stream name and its `key` arguments so the publisher's automatic reconnect is refused
    ban_addr: bool = False  # also ban the publisher's address (shared addresses: NAT, a CDN edge, a relay)
    ban_hours: float | None = None  # None: until removed


class ClassLabelConfig(_Strict):
    """One output of a classifier, in output order."""

    name: TopicLevel  # the incident's entry id and the alert's label
    threshold: float | None = Field(0.5, ge=0, le=1)  # null: never alerts (a background / "other" class)
    severity: Literal["low", "medium", "high"] = "high"


class ClassifierSamplingConfig(_Strict):
    """Which samples a classifier sees, and how they are batched (pipelines/classifier.py)."""

    every_k: int = Field(4, ge=1)  # every k-th sample of a stream ...
    dense_every: int = Field(1, ge=1)  # ... and every this many for new streams and after a near match
    new_stream_s: float = Field(10.0, ge=0)
    near_match_s: float = Field(30.0, ge=0)
    near_fraction: float = Field(0.5, ge=0, le=1)  # a score this fraction of its threshold is a near match
    batch_size: int = Field(8, ge=1, le=1024)  # up to B samples of the worker's streams in one inference ...
    batch_wait_ms: float = Field(50.0, ge=0)  # ... or what came within T ms of the first
    queue_size: int = Field(64, ge=1)  # waiting samples; beyond that the oldest is dropped (counted)
    max_sample_age_s: float = Field(5.0, gt=0)  # a sample that waited longer is dropped (counted)


class ClassifierIncidentsConfig(_Strict):
    """Classifiers are noisy: k of the last n classified samples of a stream over a label's threshold."""

    confirm_k: int = Field(3, ge=1)
    confirm_n: int = Field(5, ge=1)
    window_s: float = Field(20.0, gt=0)  # ... within this much stream time

    @model_validator(mode="after")
    def _check_kn(self) -> ClassifierIncidentsConfig:
        if self.confirm_k > self.confirm_n:
            raise ValueError("confirm_k must not exceed confirm_n")
        return self


class KnownContentAnalysisConfig(_Strict):
    """The hash matcher over `banks:`, with the switches of `matching:`."""

    kind: Literal["known_content"]
    name: TopicLevel = "known_content"


class _ClassifierBase(_Strict):
    name: TopicLevel  # the alert's `pipeline` and `bank`
    labels: list[ClassLabelConfig] = Field(min_length=1)
    sampling: ClassifierSamplingConfig = ClassifierSamplingConfig()
    incidents: ClassifierIncidentsConfig = ClassifierIncidentsConfig()

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[ClassLabelConfig]) -> list[ClassLabelConfig]:
        names = [x.name for x in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"label {dup!r} appears twice")
        return v


class OnnxClassifierConfig(_ClassifierBase):
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


class ServiceClassifierConfig(_ClassifierBase):
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
    label_map: dict[str, str] = {}  # service label -> configured label (unmapped service labels are ignored)

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


class MonitorConfig(_Strict):
    node: TopicLevel = "node-1"
    state_dir: Path = Path("state")  # outbox, evidence log, ban list
    # Worker processes that decode and analyse streams (threads inside). None: one per core.
    # 0: everything in the main process (debugging, tiny deployments).
    workers: int | None = Field(None, ge=0, le=256)
    broker: BrokerConfig = BrokerConfig()
    streams: list[StreamConfig] = []
    banks: list[BankConfig] = []
    ingest: IngestConfig = IngestConfig()
    sampling: SamplingConfig = SamplingConfig()
    matching: MatchingConfig = MatchingConfig()
    incidents: IncidentsConfig = IncidentsConfig()
    bank_reload: BankReloadConfig = BankReloadConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    hooks: HooksConfig = HooksConfig()
    servers: list[ServerConfig] = []
    terminate: TerminateConfig = TerminateConfig()
    metrics: MetricsConfig = MetricsConfig()
    # What runs on each sample, built by kind (pipelines/registry.py); the default is the hash matcher alone.
    analyses: list[AnalysisConfig] = [KnownContentAnalysisConfig(kind="known_content")]
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("streams")
    @classmethod
    def _unique_streams(cls, v: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for s in v:
            if s.id in seen:
                raise ValueError(f"stream id {s.id!r} appears twice")
            seen.add(s.id)
        return v

    @field_validator("analyses")
    @classmethod
    def _unique_analyses(cls, v: list[AnalysisConfig]) -> list[AnalysisConfig]:
        names = [a.name for a in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"analysis name {dup!r} appears twice")
        if sum(1 for a in v if a.kind == "known_content") > 1:
            raise ValueError("known_content may appear once")
        return v


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) if str(p).isprintable() and str(p).strip() == str(p) else repr(p)
                         for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else str(e["msg"]).removeprefix("Value error, ")
        msg = " ".join(msg.split())  # one line per problem
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def build_config(data: dict[str, Any], source: str = "config") -> MonitorConfig:
    try:
        return MonitorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(path: Path) -> dict[str, Any]:
    """Read YAML into a dict; relative bank paths are resolved against the file's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for bank in data.get("banks") or []:
        if isinstance(bank, dict) and isinstance(bank.get("path"), str):
            p = Path(bank["path"])
            if not p.is_absolute():
                bank["path"] = str(path.parent / p)
    for analysis in data.get("analyses") or []:
        for key in ("model", "auth_file", "ca_file"):
            if isinstance(analysis, dict) and isinstance(analysis.get(key), str):
                p = Path(analysis[key])
                if not p.is_absolute():
                    analysis[key] = str(path.parent / p)
    return data


def hook_secret(cfg: HooksConfig) -> str:
    """The hook secret from the config, a file, or MONITOR_HOOK_SECRET (kept out of config files)."""
    if cfg.secret:
        return cfg.secret
    if cfg.secret_file is not None:
        try:
            return cfg.secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"hooks.secret_file: cannot read {cfg.secret_file}: {exc.strerror}") from None
    env = os.environ.get("MONITOR_HOOK_SECRET", "")
    if not env:
        raise ConfigError("hooks: enabled, but no secret (hooks.secret, hooks.secret_file or MONITOR_HOOK_SECRET)")
    return env
