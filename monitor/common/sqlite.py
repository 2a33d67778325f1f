"""The one set-up of the monitor's SQLite state files (the outbox and the evidence log).

Each kind of state file is a `FileFormat`: an application_id that marks the file as that kind (so a wrong
path, say the evidence log given as the outbox, is refused before anything is written to it), a schema
version, and the statements that make a new file. `open_state_file` does what both need, in this order:

1. connect with the state-file permissions of monitor/common/statefiles.py (0600, and so are its `-wal`
   and `-shm` files; autocommit mode, shareable between threads);
2. check the file's identity (`identify`): a file of another kind or version is refused, unaltered;
3. optionally `PRAGMA quick_check` (a damaged file is refused as `DamagedFile`);
4. WAL mode with synchronous=FULL: the WAL is fsynced at every commit, so a committed write survives
   SIGKILL of the process and (on honest disks) power loss;
5. optionally a size cap (max_page_count);
6. in one IMMEDIATE transaction (two processes creating the file at once: one creates), the schema,
   application_id and user_version of a new, empty file.

Refusals are `StateFileError`s (with the connection closed); each caller turns them into its own error
with its own words. `connect_readonly` opens an existing file for reading only (verification, rescue).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from monitor.common.statefiles import connect_private

__all__ = [
    "DamagedFile",
    "FileFormat",
    "FileIdentity",
    "Identity",
    "NoWalMode",
    "StateFileError",
    "WrongFile",
    "connect_readonly",
    "identify",
    "open_state_file",
]


@dataclass(frozen=True)
class FileFormat:
    """What marks an SQLite file as one kind of state file, and the schema a new one gets."""

    application_id: int  # PRAGMA application_id: four ASCII letters, e.g. 0x4C534F42 "LSOB"
    schema_version: int  # PRAGMA user_version
    schema: Sequence[str]  # statements run, in order, on a new (empty) file


class Identity(Enum):
    """How a file's application_id and user_version compare with a FileFormat."""

    EMPTY = "empty"  # a new file: no application_id, no user_version, no tables
    OURS = "ours"  # this kind of file, this schema version
    OTHER_VERSION = "other version"  # this kind of file, another schema version
    FOREIGN = "foreign"  # an SQLite file of some other kind


@dataclass(frozen=True)
class FileIdentity:
    """The identity of an open file: what it is compared with the format asked for, and the raw values."""

    identity: Identity
    application_id: int
    user_version: int


class StateFileError(Exception):
    """A state file was refused at set-up; the connection was closed and the file left as it was."""


class WrongFile(StateFileError):
    """The file is not of the format asked for (another kind, or another schema version)."""

    def __init__(self, found: FileIdentity) -> None:
        super().__init__(f"not the expected kind of file ({found.identity.value}: application_id "
                         f"{found.application_id:#x}, user_version {found.user_version})")
        self.found = found


class DamagedFile(StateFileError):
    """PRAGMA quick_check found damage; problems are its first lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"damaged file ({'; '.join(problems)})")
        self.problems = problems


class NoWalMode(StateFileError):
    """SQLite would not switch the file to WAL mode (journal_mode says which mode it kept)."""

    def __init__(self, journal_mode: str) -> None:
        super().__init__(f"cannot enable WAL mode (journal_mode is {journal_mode})")
        self.journal_mode = journal_mode


def identify(conn: sqlite3.Connection, fmt: FileFormat) -> FileIdentity:
    """Compare the open file's application_id and user_version with fmt (sqlite3.Error from SQLite)."""
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if app_id == fmt.application_id:
        kind = Identity.OURS if version == fmt.schema_version else Identity.OTHER_VERSION
    elif app_id or version or conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
        kind = Identity.FOREIGN
    else:
        kind = Identity.EMPTY
    return FileIdentity(kind, app_id, version)


def _ours_or_new(conn: sqlite3.Connection, fmt: FileFormat) -> bool:
    """True for a file of fmt, False for an empty one; WrongFile for anything else."""
    found = identify(conn, fmt)
    if found.identity is Identity.OURS:
        return True
    if found.identity is Identity.EMPTY:
        return False
    raise WrongFile(found)


def _set_up(conn: sqlite3.Connection, fmt: FileFormat, *, quick_check: bool, max_bytes: int | None) -> None:
    _ours_or_new(conn, fmt)  # before any write: a wrong file must be refused, not altered
    if quick_check:
        problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise DamagedFile(problems)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise NoWalMode(str(mode))
    # FULL: the WAL is fsynced at every commit, so a committed write survives power loss.
    conn.execute("PRAGMA synchronous=FULL")
    if max_bytes is not None:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count={max(1, int(max_bytes) // page_size)}")
    conn.execute("BEGIN IMMEDIATE")  # two processes creating the file at once: one creates
    try:
        if not _ours_or_new(conn, fmt):
            for statement in fmt.schema:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id={int(fmt.application_id)}")
            conn.execute(f"PRAGMA user_version={int(fmt.schema_version)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def open_state_file(
    path: Path, fmt: FileFormat, *, quick_check: bool = False, max_bytes: int | None = None
) -> sqlite3.Connection:
    """Open or create the state file at path as fmt, in WAL mode with synchronous=FULL (steps: module docstring).

    quick_check: refuse a damaged file (DamagedFile). max_bytes: cap the file (SQLite max_page_count), so
    filling it raises SQLITE_FULL instead of filling the disk. Raises OSError (the file cannot be created, or
    is a symlink), sqlite3.Error (from SQLite) or StateFileError (refused); the connection is closed then.
    """
    conn = connect_private(Path(path))
    try:
        _set_up(conn, fmt, quick_check=quick_check, max_bytes=max_bytes)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: Path, *, timeout: float = 10.0) -> sqlite3.Connection:
    """A read-only connection (autocommit mode) to an existing SQLite file; nothing is created or changed."""
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=timeout,
                           isolation_level=None)
