"""Ban list kept on disk: stream keys and publisher addresses the publish hooks refuse.

Kicking a publisher only ends the current session: publishing software reconnects within seconds, so the
publish hooks (monitor.servers.hooks) consult this list and refuse banned keys and addresses.

The file is JSON (`{"version": 1, "bans": [...]}`), rewritten atomically (temp file + os.replace) so a crash
never leaves half a list. Another process (the CLI) may edit it while the monitor runs: every call notices a
changed file and reloads it, and edits take an flock on a sidecar `.lock` file so two writers do not lose
each other's bans. A corrupt file raises BanListError naming the file; the publish path keeps the last good
list instead (a broken edit must not lift every ban nor crash the hooks).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from monitor.common.errors import UserError

log = logging.getLogger(__name__)

BanKind = Literal["key", "addr"]
FORMAT_VERSION = 1

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BanListError(UserError):
    """The ban list file cannot be read, parsed or written; the message names the file.

    A UserError so the CLI prints it as one line instead of a traceback."""


class Ban(BaseModel):
    """One ban. `addr` values are an IP address or a CIDR network; `key` values match exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: BanKind
    value: str = Field(min_length=1, max_length=1024)
    reason: str = Field(default="", max_length=2000)
    author: str = Field(default="", max_length=200)
    created_at: AwareDatetime
    expires_at: AwareDatetime | None = None

    @field_validator("created_at", "expires_at")
    @classmethod
    def _to_utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else v.astimezone(UTC)

    @field_validator("value")
    @classmethod
    def _normalise_addr(cls, v: str, info: ValidationInfo) -> str:
        # "10.0.0.1/8" and "10.0.0.0/8" must be the same ban, and so must "::ffff:1.2.3.4" and "1.2.3.4".
        return _normalise_network(v) if info.data.get("kind") == "addr" else v

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _normalise_network(value: str) -> str:
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"addr ban {value!r} is not an IP address or CIDR network") from None
    net = _unmap(net)
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def _unmap(net: IPNetwork) -> IPNetwork:
    """IPv4-mapped IPv6 (::ffff:a.b.c.d, what dual-stack sockets report) compares as plain IPv4."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def _parse_addr(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


_Stamp = tuple[int, int, int]


class BanList:
    """Thread-safe ban list backed by a JSON file (created on the first add)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.RLock()
        self._bans: dict[tuple[str, str], Ban] = {}
        self._stamp: _Stamp | None = None
        with self._lock:
            self._reload(strict=True)

    @property
    def path(self) -> Path:
        return self._path

    def add(
        self,
        kind: BanKind,
        value: str,
        *,
        reason: str = "",
        author: str = "",
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Ban:
        """Add or replace the ban on (kind, value) and persist it. Raises ValueError for a bad value."""
        now_ = _now(now)
        try:
            ban = Ban(
                kind=kind, value=value, reason=reason, author=author, created_at=now_, expires_at=expires_at
            )
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None
        if ban.expired(now_):
            raise ValueError(f"ban on {kind} would already be expired at {ban.expires_at}")
        with self._edit() as bans:
            bans[(ban.kind, ban.value)] = ban
        return ban

    def add_many(
        self,
        targets: Iterable[tuple[BanKind, str]],
        *,
        reason: str = "",
        author: str = "",
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> builtins.list[Ban]:
        """Ban every (kind, value) at once: one locked rewrite of the file, so all of them are stored or none.

        ValueError for a bad value (nothing stored then); BanListError when the file cannot be written.
        """
        now_ = _now(now)
        bans: builtins.list[Ban] = []
        for kind, value in dict.fromkeys(targets):
            try:
                ban = Ban(kind=kind, value=value, reason=reason, author=author, created_at=now_, expires_at=expires_at)
            except ValidationError as exc:
                raise ValueError(_first_error(exc)) from None
            if ban.expired(now_):
                raise ValueError(f"ban on {kind} would already be expired at {ban.expires_at}")
            bans.append(ban)
        if bans:
            with self._edit() as current:
                for ban in bans:
                    current[(ban.kind, ban.value)] = ban
        return bans

    @staticmethod
    def problem(kind: BanKind, value: str) -> str | None:
        """Why (kind, value) cannot be a ban (too long, not an address, ...), or None: for callers that ban
        several values at once and must not lose the good ones over one bad one."""
        try:
            Ban(kind=kind, value=value, created_at=datetime.now(UTC))
        except ValidationError as exc:
            return _first_error(exc)
        return None

    def remove(self, kind: BanKind, value: str) -> bool:
        """Lift a ban; returns whether one was there."""
        if kind == "addr":
            try:
                value = _normalise_network(value)
            except ValueError:
                return False
        with self._edit() as bans:
            return bans.pop((kind, value), None) is not None

    def is_banned(self, key: str | None, addr: str | None, now: datetime | None = None) -> Ban | None:
        """The ban matching `key` (exactly) or `addr` (inside an addr network), key bans first; or None.

        Never raises for file trouble: a corrupt or unreadable file keeps the last good list (logged).
        """
        now_ = _now(now)
        with self._lock:
            try:
                self._reload(strict=False)
            except BanListError as exc:
                log.error("%s; keeping the previous %d ban(s)", exc, len(self._bans))
            self._prune_expired(now_)
            if key:
                ban = self._bans.get(("key", key))
                if ban is not None:
                    return ban
            if addr:
                ip = _parse_addr(addr)
                if ip is None:
                    return self._bans.get(("addr", addr))
                for ban in self._bans.values():
                    if ban.kind == "addr" and ip in _unmap(ipaddress.ip_network(ban.value, strict=False)):
                        return ban
            return None

    def list(self, now: datetime | None = None) -> builtins.list[Ban]:
        """Current (unexpired) bans, oldest first."""
        now_ = _now(now)
        with self._lock:
            try:
                self._reload(strict=False)
            except BanListError as exc:
                log.error("%s; showing the previous list", exc)
            self._prune_expired(now_)
            return sorted(self._bans.values(), key=lambda b: (b.created_at, b.kind, b.value))

    # -- internals ---------------------------------------------------------------------------------------

    def _prune_expired(self, now: datetime) -> None:
        expired = [k for k, b in self._bans.items() if b.expired(now)]
        if not expired:
            return
        try:
            with self._edit() as bans:
                for k, b in builtins.list(bans.items()):
                    if b.expired(now):
                        del bans[k]
        except BanListError as exc:
            # Persisting is housekeeping; the in-memory list must still stop honouring expired bans.
            log.warning("could not prune expired bans: %s", exc)
            for k in expired:
                self._bans.pop(k, None)

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[tuple[str, str], Ban]]:
        """Reload under the file lock, let the caller change a copy, then write it and adopt it."""
        with self._lock, self._file_lock():
            self._reload(strict=True)
            bans = dict(self._bans)
            yield bans
            if bans != self._bans:
                self._write(bans)
                self._bans = bans

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BanListError(f"cannot lock ban list {self._path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _file_stamp(self) -> _Stamp | None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BanListError(f"cannot read ban list {self._path}: {exc}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, *, strict: bool) -> None:
        """Re-read the file when it changed since we last saw it (strict: even if we are not sure)."""
        stamp = self._file_stamp()
        if not strict and stamp == self._stamp:
            return
        if stamp is None:
            self._bans, self._stamp = {}, None
            return
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            self._bans, self._stamp = {}, None
            return
        except OSError as exc:
            raise BanListError(f"cannot read ban list {self._path}: {exc}") from None
        self._bans = self._parse(raw)
        self._stamp = stamp

    def _parse(self, raw: bytes) -> dict[tuple[str, str], Ban]:
        if not raw.strip():
            return {}
        try:
            doc: object = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BanListError(f"ban list {self._path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("bans"), builtins.list):
            raise BanListError(f'ban list {self._path}: expected an object with a "bans" array')
        if doc.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise BanListError(f"ban list {self._path}: unsupported version {doc.get('version')!r}")
        bans: dict[tuple[str, str], Ban] = {}
        for i, item in enumerate(doc["bans"]):
            try:
                ban = Ban.model_validate(item)
            except ValidationError as exc:
                raise BanListError(f"ban list {self._path}: entry {i}: {_first_error(exc)}") from None
            bans[(ban.kind, ban.value)] = ban
        return bans

    def _write(self, bans: dict[tuple[str, str], Ban]) -> None:
        ordered = sorted(bans.values(), key=lambda b: (b.created_at, b.kind, b.value))
        doc = {"version": FORMAT_VERSION, "bans": [b.model_dump(mode="json") for b in ordered]}
        data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
        parent = self._path.parent
        tmp: str | None = None
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileNotFoundError):
                # mkstemp makes 0600 (right for a list of stream keys); keep a mode an operator chose.
                os.chmod(tmp, os.stat(self._path).st_mode & 0o777)
            os.replace(tmp, self._path)
            tmp = None
            _fsync_dir(parent)
        except OSError as exc:
            raise BanListError(f"cannot write ban list {self._path}: {exc}") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._stamp = self._file_stamp()


def _fsync_dir(path: Path) -> None:
    """Make the rename durable; best effort (some filesystems refuse fsync on directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])
