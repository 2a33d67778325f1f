"""Stream URLs as they may be shown: credentials and secret query values removed."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query keys that carry secrets in the field (stream keys, tokens, signed-URL parts).
_SECRET_KEYS = {"key", "token", "secret", "password", "pass", "pwd", "auth", "sig", "signature", "st"}


def redact_url(url: str) -> str:
    """Drop user:password and mask secret query values; paths are kept (they name the stream)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal: keep its brackets
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in pairs], safe="*")
    if not parts.scheme:  # a local path
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
