"""Reading what the streaming servers send: bodies within a size limit, forms, JSON objects and their fields.

Anything unusable raises `BadRequest` with a short reason, which the guard (monitor/servers/hooks/app.py)
answers with a 400: client input never causes a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import parse_qsl

from aiohttp import web

_MAX_FORM_FIELDS = 200

JsonObject = Mapping[str, object]  # a parsed JSON object: its values are checked field by field


class TooLarge(Exception):
    """A body over the limit (raised by `read_limited`)."""


class BadRequest(Exception):
    """Client input we cannot use: answered 400 with this short reason."""


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, reading at most limit+1 bytes (chunked bodies have no Content-Length to check first)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise TooLarge


def ok() -> web.Response:
    return web.Response(text="ok")



def require_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise BadRequest(f"content type must be {expected}")


def parse_form(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
        return parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=_MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise BadRequest("form body is not valid UTF-8") from None
    except ValueError:
        raise BadRequest("malformed form body") from None


def parse_json_object(body: bytes) -> JsonObject:
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("body is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    return doc


def required(fields: Mapping[str, str], name: str, *, allow_empty: bool = False) -> str:
    value = fields.get(name)
    if value is None or (not value and not allow_empty):
        raise BadRequest(f"missing field {name!r}")
    return value


def str_field(doc: JsonObject, name: str, *, allow_empty: bool = False) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} must be a string")
    if not value and not allow_empty:
        raise BadRequest(f"field {name!r} must not be empty")
    return value


def opt_str(doc: JsonObject, name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"field {name!r} must be a string")
    return value or None


def query_keys(query: str) -> list[str]:
    """`key` arguments of a publish URL's query (SRS gives it with a leading '?')."""
    try:
        pairs = parse_qsl(
            query.lstrip("?"), keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=100
        )
    except ValueError:  # includes UnicodeDecodeError
        raise BadRequest("malformed query") from None
    return [v for k, v in pairs if k == "key" and v]
