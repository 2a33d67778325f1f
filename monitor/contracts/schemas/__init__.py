"""The wire messages' JSON Schemas, generated from their models: `python -m monitor.contracts.schemas` writes them.

The files in this folder are committed (subscribers written in other languages read them); tests/unit/test_contracts.py
fails when one differs from what the models generate. `generate` adds nothing by hand: what pydantic cannot infer from
a field's type (the fields each `kind` of alert must fill in) the models carry in their `json_schema_extra`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from monitor.contracts.alerts import Alert
from monitor.contracts.base import WireModel
from monitor.contracts.messages import Command, Health, Incident, NodeStatus, SignedCommand, StreamStatus

__all__ = ["MODELS", "SCHEMA_DIR", "generate", "render", "write"]

MODELS: tuple[type[WireModel], ...] = (Alert, Incident, Command, SignedCommand, StreamStatus, Health, NodeStatus)
SCHEMA_DIR = Path(__file__).resolve().parent


_ORDER = ("$schema", "$id", "title", "description", "type", "required", "additionalProperties", "properties")


class _WireSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema without the titles it makes up for every field ("Stream Id")."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def generate(model: type[WireModel]) -> dict[str, Any]:
    schema = model.model_json_schema(schema_generator=_WireSchema, mode="validation")
    head = [k for k in _ORDER if k in schema]  # in the order a reader looks for them; pydantic sorts the keys
    return {k: schema[k] for k in head} | {k: v for k, v in schema.items() if k not in head}


def render(model: type[WireModel]) -> str:
    return json.dumps(generate(model), indent=2, ensure_ascii=False) + "\n"


def write(folder: Path = SCHEMA_DIR) -> list[Path]:
    """Write every model's schema into `folder`; returns the files that changed."""
    changed: list[Path] = []
    for model in MODELS:
        path = folder / model.schema_file
        text = render(model)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed
