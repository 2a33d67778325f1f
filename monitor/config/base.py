"""What every configuration model shares: the strict base model, the literals used by several sections, and ids
that become one MQTT topic level."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

STREAM_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # one MQTT topic level, no wildcards

Severity = Literal["low", "medium", "high"]
ServerKind = Literal["nginx-rtmp", "srs", "mediamtx"]


def _topic_level(v: str) -> str:
    """Ids that become one MQTT topic level (and file names): no wildcards, no slashes."""
    if not STREAM_ID_RE.match(v):
        raise ValueError("must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return v


TopicLevel = Annotated[str, AfterValidator(_topic_level)]


class Strict(BaseModel):
    """Unknown keys are errors; a loaded configuration never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def first_duplicate(names: Iterable[str]) -> str | None:
    """The first name that appears a second time, in order of first appearance (None: all distinct)."""
    listed = list(names)
    return next((n for n in listed if listed.count(n) > 1), None)
