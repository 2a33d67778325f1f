"""Stream ids nobody can forge or collide, and what of a stream name (often the publisher's secret key) may be shown.

`StreamNamer` keys them with a secret of its own (`ID_KEY_FILE` in the state directory); the hooks, discovery
and the engine name every stream through it (docs/security-hooks.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from monitor.common.errors import UserError
from monitor.config.models import STREAM_ID_RE

log = logging.getLogger("monitor.servers.hooks")  # one logger for the hook server, whichever module logs

ID_KEY_FILE = "stream-ids.key"  # in the state directory, 0600

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_UNSAFE_SHOWN = re.compile(r"[^A-Za-z0-9]")
_DIGEST_HEX = 32  # 128 bits of HMAC-SHA256: ids collide only by finding an HMAC collision under a secret key
_SHOWN_APP = 24
_SHOWN_NAME = 3


class StreamNamer:
    """Stream ids and redacted names under a secret key (`ID_KEY_FILE` in the state directory).

    `stream_id(server, app, name)` is `{server}-{app}-{shown}-{digest}`: the server kind, the app sanitised to
    [A-Za-z0-9._-] and cut at 24 characters, the first characters of the name (at most 3, and at most a quarter
    of it, others than [A-Za-z0-9] as `_`) and 32 hex digits of HMAC-SHA256 over the exact, length-prefixed
    (server, app, name). The readable parts are for people; the digest makes ids injective: two different
    triples share an id only through an HMAC collision, which nobody without the key can even look for. Ids are
    at most 16 + 24 + 3 + 32 + 3 = 78 characters, always within the config's 1-128 of [A-Za-z0-9._-].

    Why a key of its own, made once and kept 0600 in the state directory, rather than one derived from the hook
    secret: ids must stay the same when the hook secret is rotated (topics, retained states and the evidence
    log refer to them), discovery works without hooks (no secret), and the hook secret may sit in the
    streaming server's config as a URL token, readable by more people than the monitor's state directory.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("stream id key must be at least 16 bytes")
        self._key = key

    @classmethod
    def ephemeral(cls) -> StreamNamer:
        """A namer with a random key of its own (tests, tools): its ids differ from the monitor's."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def load(cls, path: Path) -> StreamNamer:
        """The key in `path`, made (32 random bytes as hex, mode 0600) when missing."""
        path = Path(path)
        try:
            return cls(_read_key(path))
        except FileNotFoundError:
            pass
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        log.info("stream id key made in %s (keep it: stream ids change without it)", path)
        return cls(_read_key(path))

    def digest(self, server: str, app: str, name: str) -> str:
        """32 hex digits of HMAC-SHA256 over the exact (server, app, name)."""
        return self._mac(b"stream-id", server, app, name)[:_DIGEST_HEX]

    def stream_id(self, server: str, app: str, name: str) -> str:
        shown_app = _UNSAFE_ID.sub("_", app)[:_SHOWN_APP]
        sid = f"{_UNSAFE_ID.sub('_', server)[:16]}-{shown_app}-{shown_prefix(name)}-{self.digest(server, app, name)}"
        assert STREAM_ID_RE.match(sid), sid
        return sid

    def redacted_name(self, server: str, app: str, name: str) -> str:
        """The name as logs and evidence may show it: `{first characters}***#{digest}`."""
        return f"{shown_prefix(name)}***#{self.digest(server, app, name)}"

    def mask(self, value: str) -> str:
        """A `key` argument as logs may show it: a keyed digest, enough to correlate lines, no way back."""
        return "key#" + self._mac(b"key", value)[:12]

    def _mac(self, *parts: bytes | str) -> str:
        msg = b"".join(
            len(b).to_bytes(4, "big") + b for b in (p if isinstance(p, bytes) else utf8(p) for p in parts)
        )
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()


def shown_prefix(name: str) -> str:
    """What of a stream name (perhaps a secret key) may be shown: at most 3 characters, a quarter of it."""
    return _UNSAFE_SHOWN.sub("_", name[: min(_SHOWN_NAME, len(name) // 4)])


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        st = os.fstat(f.fileno())
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(f.fileno(), 0o600)
            log.warning("stream id key %s was readable by others: now 0600", path)
        text = f.read(200).strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise UserError(f"{path}: not a stream id key (64 hex digits); remove it to make a new one "
                        "(every stream id then changes)")
    return key


def utf8(value: str) -> bytes:
    """Header, query and name text as bytes for HMACs; lone surrogates are kept (they then simply do not match)."""
    return value.encode("utf-8", "surrogatepass")
