"""What every wire model shares: strict JSON types, the field shapes used by several messages, readable errors.

The models in `monitor/contracts/alerts.py` and `monitor/contracts/messages.py` validate messages as JSON Schema
would: a string is never a number, a boolean is never an integer, an integer may be written `5.0` (`Integral`),
and no field outside the model is accepted. `check` returns a model or raises `ContractError`, one line naming
the fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from monitor.common.safetext import describe_char, forbidden_char

__all__ = [
    "JSON_SCHEMA_DIALECT",
    "ContractError",
    "Integral",
    "IsoTime",
    "Name",
    "Safe",
    "Severity",
    "StreamStateName",
    "WireModel",
    "check",
    "describe",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Severity = Literal["low", "medium", "high"]
# The values of monitor.runtime.supervisor.StreamState (tests/unit/test_contracts.py keeps them equal).
StreamStateName = Literal["connecting", "live", "stalled", "reconnecting", "ended", "failed"]


class WireModel(BaseModel):
    """A message as it travels: strict types, no unknown fields, patterns matched as JSON Schema matches them."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, regex_engine="python-re")
    schema_file: ClassVar[str] = ""  # a message's file in monitor/contracts/schemas/ ("" for a part of one)


def _integral(value: object) -> object:
    """JSON Schema counts 5.0 as an integer; strict pydantic would not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _iso_time(value: str) -> str:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not an ISO 8601 date and time") from None
    if "T" not in value.upper() or dt.tzinfo is None:
        raise ValueError("not an RFC 3339 date-time (date, 'T', time and zone)")
    return value


def _safe(value: str) -> str:
    bad = forbidden_char(value)
    if bad is not None:
        raise ValueError(f"contains {describe_char(bad[1])} at position {bad[0]}: control, separator and "
                         "bidirectional characters are not accepted")
    return value


# For integers: `Annotated[int, Field(ge=0), Integral]`, constraints first. Put after it, pydantic writes them into
# the JSON Schema untranslated ("ge" for "minimum"), and JSON Schema validators ignore them.
Integral = BeforeValidator(_integral)
IsoTime = Annotated[str, AfterValidator(_iso_time), Field(json_schema_extra={"format": "date-time"})]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
# For text from people: `Annotated[str, Field(max_length=100), Safe]`, constraints first (as with Integral).
Safe = AfterValidator(_safe)


class ContractError(ValueError):
    """A message that is not what its contract says; the text names the offending fields."""


def describe(exc: ValidationError, limit: int = 3) -> str:
    """One line: `where: what (got value)` for the first `limit` problems."""
    parts: list[str] = []
    errors = exc.errors(include_url=False)
    for err in errors[:limit]:
        where = "/".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a rule across fields (the model's own validator): the message says it all
            parts.append(msg)
        elif err["type"] == "missing":
            parts.append(f"{where}: missing")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        else:
            got = repr(err.get("input"))
            parts.append(f"{where}: {msg} (got {got if len(got) <= 60 else got[:57] + '...'})")
    if len(errors) > limit:
        parts.append(f"{len(errors) - limit} more")
    return "; ".join(parts)


M = TypeVar("M", bound=WireModel)


def check(model: type[M], body: Mapping[str, object] | bytes | str) -> M:
    """`body` (a parsed JSON object, or the JSON text) as `model`; ContractError says what is wrong."""
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ContractError(f"not JSON ({exc})") from None
    if not isinstance(body, Mapping):
        raise ContractError(f"expected a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ContractError(f"{model.__name__.lower()}: {describe(exc)}") from None
