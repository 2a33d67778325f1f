"""The monitor's connections to other systems: the MQTT broker, the streaming servers' hooks and APIs, and the
metrics endpoint; secrets are read from files or the environment, never taken from the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from monitor.common.errors import ConfigError
from monitor.config.base import ServerKind, Strict

BROKER_PASSWORD_ENV = "MONITOR_BROKER_PASSWORD"


class BrokerConfig(Strict):
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


class HooksConfig(Strict):
    """HTTP endpoint the streaming servers call on publish/unpublish (see monitor/servers/hooks/)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8181, ge=0, le=65535)
    secret: str | None = None  # or secret_file, or the MONITOR_HOOK_SECRET environment variable
    secret_file: Path | None = None
    pull_url_templates: dict[ServerKind, str] = Field(default_factory=dict)
    # A publish the monitor cannot watch (caps, registry trouble) is refused with a 4xx unless this is on.
    fail_open: bool = False
    # Streams announced by hooks and discovery: at most this many, and this many per publisher address.
    max_streams: int = Field(500, ge=1)
    max_streams_per_addr: int = Field(50, ge=1)
    # Who may authenticate with ?token= (a secret in a URL): loopback peers, any peer, or nobody.
    token_peers: Literal["loopback", "any", "none"] = "loopback"
    signature_window_s: float = Field(60.0, gt=0, le=3600)  # signed requests: |clock skew| accepted
    mediamtx_ready_timeout_s: float = Field(30.0, gt=0)  # an auth-gate registration never ready is dropped


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


class ServerConfig(Strict):
    """A streaming server's API, used to drop publishers and to list streams."""

    kind: ServerKind
    api_url: str
    discover: bool = False  # poll the server's stream list and monitor what it lists
    poll_interval_s: float = Field(10.0, gt=0)
    pull_url_template: str | None = None  # for discovered streams; default: the hook template of this kind


class MetricsConfig(Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    stale_sample_s: float = Field(30.0, gt=0)  # /healthz fails for a live stream without samples this long
    max_outbox_age_s: float = Field(300.0, gt=0)  # ... or alerts undelivered this long
