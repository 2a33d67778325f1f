"""The monitor's configuration: one validated model (`MonitorConfig`), read from YAML; each module takes only the
part it needs.

The sections live by concern: monitor/config/base.py (the strict base model, shared literals, topic-level ids),
ingest.py (streams, banks, ingest, sampling), analyses.py (matching and the `analyses:` entries), outputs.py
(incidents, delivery, evidence, terminate), endpoints.py (broker, hooks, servers, metrics). Every name is
importable from here as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from monitor.common.errors import ConfigError
from monitor.config.analyses import (
    ANALYSIS_PATH_FIELDS,
    AnalysisConfig,
    ClassifierConfig,
    ClassifierIncidentsConfig,
    ClassifierSamplingConfig,
    ClassLabelConfig,
    KnownContentAnalysisConfig,
    MatchingConfig,
    OnnxClassifierConfig,
    ServiceClassifierConfig,
)
from monitor.config.base import STREAM_ID_RE, ServerKind, Severity, Strict, TopicLevel, first_duplicate
from monitor.config.cluster import ClusterConfig
from monitor.config.endpoints import (
    BROKER_PASSWORD_ENV,
    BrokerConfig,
    HooksConfig,
    MetricsConfig,
    ServerConfig,
    hook_secret,
)
from monitor.config.ingest import BankConfig, BankReloadConfig, IngestConfig, SamplingConfig, StreamConfig
from monitor.config.outputs import DeliveryConfig, EvidenceConfig, IncidentsConfig, TerminateConfig
from monitor.config.web import WebConfig

__all__ = [
    "BROKER_PASSWORD_ENV",
    "STREAM_ID_RE",
    "AnalysisConfig",
    "BankConfig",
    "BankReloadConfig",
    "BrokerConfig",
    "ClassLabelConfig",
    "ClassifierConfig",
    "ClassifierIncidentsConfig",
    "ClassifierSamplingConfig",
    "ClusterConfig",
    "DeliveryConfig",
    "EvidenceConfig",
    "HooksConfig",
    "IncidentsConfig",
    "IngestConfig",
    "KnownContentAnalysisConfig",
    "MatchingConfig",
    "MetricsConfig",
    "MonitorConfig",
    "OnnxClassifierConfig",
    "SamplingConfig",
    "ServerConfig",
    "ServerKind",
    "ServiceClassifierConfig",
    "Severity",
    "StreamConfig",
    "Strict",
    "TerminateConfig",
    "TopicLevel",
    "WebConfig",
    "build_config",
    "hook_secret",
    "load_config",
]


def _only_the_hash_matcher() -> list[AnalysisConfig]:
    return [KnownContentAnalysisConfig(kind="known_content")]


class MonitorConfig(Strict):
    """The whole configuration file; every section and key has a default."""

    node: TopicLevel = "node-1"
    state_dir: Path = Path("state")  # outbox, evidence log, ban list
    # Worker processes that decode and analyse streams (threads inside). None: one per core.
    # 0: everything in the main process (debugging, tiny deployments).
    workers: int | None = Field(None, ge=0, le=256)
    cluster: ClusterConfig = ClusterConfig()  # engine: ray runs the streams on a Ray cluster instead
    broker: BrokerConfig = BrokerConfig()
    streams: list[StreamConfig] = Field(default_factory=list)
    banks: list[BankConfig] = Field(default_factory=list)
    ingest: IngestConfig = IngestConfig()
    sampling: SamplingConfig = SamplingConfig()
    matching: MatchingConfig = MatchingConfig()
    incidents: IncidentsConfig = IncidentsConfig()
    bank_reload: BankReloadConfig = BankReloadConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    hooks: HooksConfig = HooksConfig()
    servers: list[ServerConfig] = Field(default_factory=list)
    terminate: TerminateConfig = TerminateConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: WebConfig = WebConfig()  # the web console (monitor/config/web.py)
    # What runs on each sample, built by kind (pipelines/registry.py); the default is the hash matcher alone.
    analyses: list[AnalysisConfig] = Field(default_factory=_only_the_hash_matcher)
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
        dup = first_duplicate(a.name for a in v)
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
        for key in ANALYSIS_PATH_FIELDS:
            if isinstance(analysis, dict) and isinstance(analysis.get(key), str):
                p = Path(analysis[key])
                if not p.is_absolute():
                    analysis[key] = str(path.parent / p)
    return data
