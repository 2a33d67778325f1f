"""The alert: its model (`Alert`, from which schemas/alert.schema.json is generated) and `build_alert`.

Schema version 2 (was 1): every alert says its `kind`, "match" (a bank entry; every field of version 1, with the
same meaning) or "classification" (a classifier's label: `label`, `score`, `score_threshold`, `model_id`,
`severity`; `bank` is the analysis, `entry_id` the label, `signal_type` "classifier", `distance` and `threshold`
null, `sample_hash` the sample's PDQ hash). Match alerts carry the new keys as null.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, JsonValue, model_validator

from monitor.contracts.base import JSON_SCHEMA_DIALECT, Integral, IsoTime, Name, Severity, WireModel
from pipelines.base import Finding

SCHEMA_VERSION = 2

Distance = Annotated[int, Field(ge=0, le=256), Integral]
Score = Annotated[float, Field(ge=0, le=1)]


def _uuid(value: str) -> str:
    """As jsonschema's "uuid" format: a UUID written with its four hyphens in place."""
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError("not a UUID") from None
    if not all(value[i:i + 1] == "-" for i in (8, 13, 18, 23)):
        raise ValueError("not a UUID in its hyphenated form")
    return value


Uuid = Annotated[str, AfterValidator(_uuid), Field(json_schema_extra={"format": "uuid"})]

# What a JSON Schema validator cannot learn from the field types: the fields each kind must fill in. The model
# checks the same in `_kind_fields`.
_KIND_RULES: list[JsonValue] = [
    {
        "if": {"properties": {"kind": {"const": "match"}}},
        "then": {"properties": {"signal_type": {"enum": ["pdq", "phash"]}, "distance": {"type": "integer"},
                                "threshold": {"type": "integer"}}},
    },
    {
        "if": {"properties": {"kind": {"const": "classification"}}},
        "then": {"required": ["label", "score", "score_threshold", "model_id", "severity"],
                 "properties": {"signal_type": {"const": "classifier"}, "label": {"type": "string"},
                                "score": {"type": "number"}, "score_threshold": {"type": "number"},
                                "model_id": {"type": "string", "minLength": 1},
                                "severity": {"enum": ["low", "medium", "high"]}}},
    },
]


class Alert(WireModel):
    """One alert, as published (the schema's description below says where)."""

    model_config = ConfigDict(
        title="Known-content and classification alert",
        json_schema_extra={"$schema": JSON_SCHEMA_DIALECT,
                           "description": "Published by a monitor node, QoS 1, on {prefix}/{node}/alerts/{stream_id}. "
                                          "Version 2 adds kind (match or classification) and the classification "
                                          "fields; a match alert has every field of version 1 with the same meaning.",
                           "$id": "https://github.com/livestream-safety-monitor/contracts/schemas/alert-2.json",
                           "allOf": _KIND_RULES})
    schema_file: ClassVar[str] = "alert.schema.json"

    schema_version: Literal[2]
    type: Literal["alert"]
    kind: Literal["match", "classification"] = Field(
        description="A bank entry matched, or a classifier's label scored over its threshold.")
    incident_id: str | None = Field(None, description="The incident this alert opened or belongs to.")
    alert_id: Uuid = Field(description="Unique; the same on every retry, so receivers drop duplicates.")
    node: Name
    stream_id: Name
    stream_url: str = Field(description="Without credentials or secret query values.")
    media_time_s: float = Field(description="Stream time of the sampled frame (pts * time_base).")
    observed_at: IsoTime = Field(description="UTC ISO 8601, when the match was made.")
    received_at: IsoTime = Field(description="UTC ISO 8601, when the keyframe's packet was read.")
    pipeline: str
    bank: str = Field(description="The bank; for classifications the analysis name.")
    entry_id: str = Field(description="The bank entry; for classifications the label.")
    entry_label: str | None = None
    entry_tags: list[str] = Field(default_factory=list)
    entry_frame_s: float | None = Field(None, description="Known videos: the matched frame's time in the video.")
    variant: str | None = Field(None, description="View and orientation that matched, e.g. 'stripped:flip_h'.")
    signal_type: Literal["pdq", "phash", "classifier"]
    distance: Distance | None
    threshold: Distance | None
    quality: Annotated[int, Field(ge=0, le=100), Integral]
    sample_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="PDQ (or pHash) of the sample, hex.")
    label: str | None = Field(None, description="Classifications: the model's label.")
    score: Score | None = None
    score_threshold: Score | None = None
    model_id: str | None = Field(None, description="Classifications: sha256:<hex of the model file>, or the "
                                                   "service's configured model id.")
    severity: Severity | None = Field(None, description="Classifications: the label's severity.")

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        if self.kind == "match":
            if self.signal_type == "classifier":
                raise ValueError("a match alert's signal_type is pdq or phash")
            if self.distance is None or self.threshold is None:
                raise ValueError("a match alert needs an integer distance and threshold")
            return self
        missing = [k for k in ("label", "score", "score_threshold", "model_id", "severity")
                   if k not in self.model_fields_set or getattr(self, k) is None]
        if missing:
            raise ValueError(f"a classification alert needs {', '.join(missing)}")
        if self.signal_type != "classifier":
            raise ValueError("a classification alert's signal_type is classifier")
        if not self.model_id:
            raise ValueError("a classification alert's model_id must not be empty")
        return self


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_schema() -> dict[str, Any]:
    """The committed schemas/alert.schema.json (generated from `Alert` by `python -m monitor.contracts.schemas`)."""
    text = resources.files("monitor.contracts").joinpath("schemas/alert.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def build_alert(finding: Finding, *, node: str, stream_url: str, observed_at: float,
                alert_id: str | None = None, incident_id: str | None = None) -> dict[str, Any]:
    """The alert for one finding. `alert_id` is made once and travels with every retry (outbox included)."""
    classified = finding.kind == "classification"
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "alert",
        "alert_id": alert_id or str(uuid.uuid4()),
        "incident_id": incident_id,
        "node": node,
        "stream_id": finding.stream_id,
        "stream_url": stream_url,
        "media_time_s": round(finding.media_time_s, 3),
        "observed_at": utc_iso(observed_at),
        "received_at": utc_iso(finding.received_at),
        "pipeline": finding.pipeline,
        "bank": finding.bank,
        "entry_id": finding.entry_id,
        "entry_label": finding.entry_label,
        "entry_tags": list(finding.entry_tags),
        "entry_frame_s": finding.entry_frame_s,
        "variant": finding.variant,
        "signal_type": finding.signal_type,
        "distance": None if classified else finding.distance,
        "threshold": None if classified else finding.threshold,
        "quality": finding.quality,
        "sample_hash": finding.sample_hash,
        "kind": finding.kind,
        "label": finding.label,
        "score": finding.score,
        "score_threshold": finding.score_threshold,
        "model_id": finding.model_id,
        "severity": finding.severity,
    }
