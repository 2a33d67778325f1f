"""The `web:` section: the web moderation console (monitor/web/, `monitor web`) and which consoles' signed
commands the monitor trusts (monitor/app/commands.py).

The console signs every command it publishes with `command_key_file` (an Ed25519 key made by `monitor evidence
keygen`); a monitor that lists the matching public key in `trusted_command_keys` records the command's moderator
as verified. With `require_signed_commands`, unsigned commands (the Textual console's) are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from monitor.config.base import Strict

__all__ = ["WebConfig"]


class WebConfig(Strict):
    host: str = "127.0.0.1"  # a reverse proxy with TLS in front when exposed (README "Web console")
    port: int = Field(8088, ge=0, le=65535)
    # TLS served by the console itself; otherwise a proxy that terminates TLS (see trust_proxy).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Honour X-Forwarded-Proto/X-Forwarded-For from the proxy in front (Secure cookies, rate limits by client).
    trust_proxy: bool = False
    secure_cookies: Literal["auto", "always"] = "auto"  # auto: Secure when served over TLS, directly or proxied
    users_file: Path | None = None  # default: <state_dir>/web-users.json
    session_ttl_s: float = Field(8 * 3600.0, ge=60, le=7 * 86400)  # a session ends this long after login
    session_idle_s: float = Field(1800.0, ge=30, le=86400)  # ... or after this long without a request
    login_max_failures: int = Field(5, ge=1, le=100)  # per user name and per client address in the window
    login_window_s: float = Field(300.0, ge=1, le=86400)
    claim_ttl_s: float = Field(900.0, ge=10, le=86400)  # a claim not renewed by activity lapses
    client_id: str = "web-console"  # the console's broker identity (client id prefix)
    # Its own broker account (instead of broker.username/password_file): the broker's ACL can then let only this
    # account, and the Textual consoles' if they stay, publish on the command topic.
    broker_username: str | None = None
    broker_password_file: Path | None = None
    command_key_file: Path | None = None  # Ed25519 key the console signs commands with; outside state_dir
    # On the monitor: public keys (.pub PEM) of consoles whose signed commands record a verified moderator.
    trusted_command_keys: list[Path] = Field(default_factory=list)
    require_signed_commands: bool = False  # refuse unsigned (declared-name) commands
    command_max_age_s: float = Field(300.0, ge=5, le=86400)  # a signed command older than this is a replay
