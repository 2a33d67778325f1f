"""The state directory: private modes for its files, one monitor at a time (SQLite files: monitor/common/sqlite.py).

The outbox and the evidence log hold publisher addresses, stream URLs and moderator names: the directory is
made 0700 and every file in it 0600. SQLite gives a database's `-wal` and `-shm` files the mode of the
database file, so creating that file 0600 before SQLite opens it covers them; files left by an older
version with wider modes are narrowed when they are opened.

Two monitors on one state directory would interleave their outbox deliveries and evidence appends and drop
each other's publishers; `StateLock` (an flock on `monitor.lock`, released by the kernel when the process
dies, even by SIGKILL) refuses the second with a message that names the first one's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

from monitor.common.errors import UserError

__all__ = [
    "LOCK_NAME",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "SQLITE_SIDE_FILES",
    "StateDirInUse",
    "StateLock",
    "connect_private",
    "make_private",
    "move_aside",
    "private_dir",
]

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
LOCK_NAME = "monitor.lock"


class StateDirInUse(UserError):
    """Another monitor process holds the state directory's lock."""


def private_dir(path: Path) -> Path:
    """Create path (and missing parents) as 0700, or narrow an existing one of ours to 0700."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, PRIVATE_DIR_MODE)
        log.info("state directory %s was readable by others: now 0700", path)
    elif st.st_uid != os.geteuid() and stat.S_IMODE(st.st_mode) & 0o022:
        # Its owner, or anyone, could swap the outbox or the evidence log under us.
        raise UserError(f"state directory {path} belongs to uid {st.st_uid} and others may write to it: "
                        "give the monitor a directory of its own")
    return path


def make_private(path: Path, *, create: bool = True) -> None:
    """The file (created empty when missing and create) and its SQLite side files: 0600, never a symlink."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    for name in (path.name, *(path.name + s for s in SQLITE_SIDE_FILES)):
        target = path.with_name(name)
        try:
            fd = os.open(target, flags if name == path.name else flags & ~os.O_CREAT, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
                os.fchmod(fd, PRIVATE_FILE_MODE)
        finally:
            os.close(fd)


def connect_private(path: Path, *, timeout: float = 10.0) -> sqlite3.Connection:
    """sqlite3.connect for a state file (autocommit mode, shareable between threads), created 0600.

    OSError for a file that cannot be created or is a symlink; sqlite3.Error from SQLite itself.
    """
    make_private(path)
    return sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)


def move_aside(path: Path, why: str = "corrupt") -> Path:
    """Rename path and its SQLite side files to `<name>.<why>-<UTC time>[-wal|-shm|-journal]`; returns the new path.

    The side files go too: a WAL left beside a new database of the same name could be replayed into it.
    """
    path = Path(path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    os.replace(path, aside)
    with contextlib.suppress(OSError):
        os.chmod(aside, PRIVATE_FILE_MODE)
    for suffix in SQLITE_SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.replace(path.with_name(path.name + suffix), aside.with_name(aside.name + suffix))
    return aside


class StateLock:
    """An exclusive flock on `<state_dir>/monitor.lock`, held for the life of a monitor process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Take the lock without waiting; StateDirInUse (one line, with the holder's pid) when it is held."""
        path = Path(state_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as exc:
            raise UserError(f"cannot open the state lock {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise StateDirInUse(
                f"state directory {Path(state_dir)} is in use by another monitor"
                f"{f' (pid {holder})' if holder.isdigit() else ''}: give each monitor its own state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go (idempotent); the file stays, its pid is only informative."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
