"""Stream URLs as they may be shown: credentials, secret query values and stream keys removed."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query keys that carry secrets in the field (stream keys, tokens, signed-URL parts, SRT stream ids, stream
# names in server APIs such as nginx-rtmp's control/drop/publisher?app=&name=).
_SECRET_KEYS = {"key", "token", "secret", "password", "pass", "pwd", "auth", "sig", "signature", "st", "streamid",
                "name", "stream"}
# Schemes whose last path segment is the stream name, which publishers and servers use as the stream key
# (rtmp://host/app/KEY): it is shown as its first characters only.
_KEY_IN_PATH = {"rtmp", "rtmps", "rtmpe", "rtmpt", "rtmpte", "rtmpts", "rtsp", "rtsps", "rtspu", "srt"}
# HLS playlists named after the stream (nginx-rtmp: /hls/KEY.m3u8, or /hls/KEY/index.m3u8 when nested).
_GENERIC_PLAYLISTS = {"index", "playlist", "master", "main", "chunklist", "prog_index", "live", "stream"}


def hide_segment(segment: str) -> str:
    """A path segment that may be a stream key: at most its first 3 characters (a quarter of it), then ***."""
    return segment[: min(3, len(segment) // 4)] + "***"


def _hide_key(scheme: str, path: str) -> str:
    head, sep, last = path.rpartition("/")
    if not sep:
        return path
    if scheme in _KEY_IN_PATH:
        return f"{head}/{hide_segment(last)}" if last else path
    if scheme in ("http", "https") and last.lower().endswith(".m3u8"):
        stem = last[: -len(".m3u8")]
        if stem.lower() not in _GENERIC_PLAYLISTS:
            return f"{head}/{hide_segment(stem)}{last[len(stem):]}"
        parent_head, psep, parent = head.rpartition("/")
        if psep and parent:
            return f"{parent_head}/{hide_segment(parent)}/{last}"
    return path


def redact_url(url: str) -> str:
    """Drop user:password, mask secret query values and the stream key in the path (the last segment of an
    RTMP/RTSP/SRT URL, an HLS playlist named after its stream); the rest of the path is kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal: keep its brackets
        netloc = f"[{netloc}]"
    try:
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    if port is not None:
        netloc = f"{netloc}:{port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in pairs], safe="*")
    if not parts.scheme:  # a local path
        return url
    path = _hide_key(parts.scheme.lower(), parts.path)
    return urlunsplit((parts.scheme, netloc, path, query, ""))
