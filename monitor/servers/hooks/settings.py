"""The hook server's settings (`HookSettings`, built from the `hooks:` config) and the pull URLs they template.

`pull_url` turns a publish (server kind, app, name) into the URL the monitor reads the stream from.
"""

from __future__ import annotations

import re
import string
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from monitor.servers.hooks.origins import StreamRefused

ServerKind = Literal["nginx-rtmp", "srs", "mediamtx"]
SERVER_KINDS: tuple[ServerKind, ...] = ("nginx-rtmp", "srs", "mediamtx")
DEFAULT_PULL_URL_TEMPLATES: dict[ServerKind, str] = {
    "nginx-rtmp": "rtmp://127.0.0.1:1935/{app}/{name}",
    "srs": "rtmp://127.0.0.1:1935/{app}/{name}",
    "mediamtx": "rtsp://127.0.0.1:8554/{path}",
}
TEMPLATE_FIELDS = frozenset({"app", "name", "path", "stream_id"})
DEFAULT_PORT = 8181


class HookSettings(BaseModel):
    """Hook server settings. Only `secret` is required."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr
    # Where the monitor pulls a stream from once it is published; fields {app} {name} {path} {stream_id}
    # ({path} is "app/name", or MediaMTX's path). Kinds left out keep their default.
    pull_url_templates: dict[ServerKind, str] = Field(
        default_factory=lambda: dict(DEFAULT_PULL_URL_TEMPLATES)
    )
    max_body_bytes: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)
    # Callers that fail authentication, per address (token bucket); authenticated servers are never limited.
    rate_limit_per_s: float = Field(default=20.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    # MediaMTX: register on the auth gate's publish (earliest) as well as on runOnReady; a gate registration
    # that no runOnReady confirms within this many seconds is dropped (the publish never came up).
    mediamtx_register_on_auth: bool = True
    mediamtx_ready_timeout_s: float = Field(default=30.0, gt=0)
    # nginx-rtmp `on_update` (with `notify_update_strict on`) drops a publisher banned mid-stream.
    nginx_update_checks_bans: bool = True
    # A publish the monitor cannot watch is refused (fail closed) unless this is on.
    fail_open: bool = False
    # Who may authenticate with `?token=` (it sits in a URL): loopback peers only, any peer, or nobody.
    token_peers: Literal["loopback", "any", "none"] = "loopback"
    signature_window_s: float = Field(default=60.0, gt=0, le=3600)  # |monitor clock - X-Hook-Timestamp|
    replay_cache_size: int = Field(default=10_000, ge=16)

    @field_validator("secret")
    @classmethod
    def _secret_strength(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("hook secret must be at least 16 characters")
        return v

    @field_validator("pull_url_templates")
    @classmethod
    def _check_templates(cls, v: dict[ServerKind, str]) -> dict[ServerKind, str]:
        merged = {**DEFAULT_PULL_URL_TEMPLATES, **v}
        for kind, template in merged.items():
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
                unknown = fields - TEMPLATE_FIELDS
                if unknown:
                    raise ValueError(f"unknown field(s) {sorted(unknown)}; use {sorted(TEMPLATE_FIELDS)}")
                template.format(app="a", name="n", path="a/n", stream_id="s")
            except (ValueError, KeyError, IndexError) as exc:
                raise ValueError(f"pull URL template for {kind} {template!r}: {exc}") from None
        return merged


_RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpe", "rtmpt", "rtmpte", "rtmpts"})
_RTMP_UNPULLABLE = re.compile(r"[\x00-\x20\x7f?]")


def pull_url(template: str, app: str, name: str, path: str, stream_id: str) -> str:
    """A pull URL from a template, with the raw names in it (never log it: redact_url it).

    FFmpeg's RTMP client sends the URL's app and playpath as written, without percent-decoding, so RTMP URLs
    get the names as they are; a name it cannot carry (a '/' moves into the app, a space ends the URL, '?'
    starts arguments, control characters) raises StreamRefused("unpullable"): such a publish would be allowed
    and never watched. Other schemes (HTTP, RTSP, SRT) get percent-encoded names."""
    if template.split(":", 1)[0].lower() in _RTMP_SCHEMES:
        if "/" in name or _RTMP_UNPULLABLE.search(name) or _RTMP_UNPULLABLE.search(app):
            raise StreamRefused("unpullable", "the monitor cannot pull a stream whose name has '/', spaces, '?' "
                                "or control characters over RTMP")
        return template.format(app=app, name=name, path=path, stream_id=stream_id)
    return template.format(
        app=quote(app, safe="/"), name=quote(name, safe=""), path=quote(path, safe="/"), stream_id=stream_id
    )
