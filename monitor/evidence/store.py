"""The evidence log file: its schema, the append-only writer (`EvidenceLog`), read-only opening, errors.

Each append is one IMMEDIATE transaction that reads the head, writes the record (its hash chained to the
previous one, monitor/evidence/records.py) and rewrites the head; it returns once the record is fsynced.
Head records are signed by `EvidenceLog.sign_head` (monitor/evidence/signing.py). The file is set up by
monitor/common/sqlite.py (0600, WAL, synchronous=FULL, refused unaltered when it is not an evidence log).

The SQLite triggers that refuse UPDATE/DELETE only stop accidents; the chain is the protection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from monitor.common.sqlite import (
    FileFormat,
    FileIdentity,
    Identity,
    NoWalMode,
    WrongFile,
    connect_readonly,
    identify,
    open_state_file,
)
from monitor.evidence.records import (
    GENESIS_HASH,
    IMAGE_KEY,
    KINDS,
    EvidenceHead,
    EvidenceRecord,
    canonical_json,
    utc_iso,
)
from monitor.evidence.signing import signed_head_body

__all__ = [
    "SELECT_RECORDS",
    "EvidenceError",
    "EvidenceLog",
    "NotAnEvidenceLog",
    "UnknownIncident",
    "db_error",
    "open_readonly",
]

_APPLICATION_ID = 0x4C534556  # "LSEV": tells an evidence log from any other SQLite file
_SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE records (
        seq         INTEGER PRIMARY KEY,
        recorded_at TEXT NOT NULL,
        kind        TEXT NOT NULL,
        stream_id   TEXT NOT NULL,
        incident_id TEXT,
        body        TEXT NOT NULL,
        prev_hash   TEXT NOT NULL,
        hash        TEXT NOT NULL
    )""",
    "CREATE INDEX records_incident ON records (incident_id, seq) WHERE incident_id IS NOT NULL",
    """CREATE TABLE head (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        count     INTEGER NOT NULL,
        last_seq  INTEGER NOT NULL,
        last_hash TEXT NOT NULL
    )""",
    f"INSERT INTO head (id, count, last_seq, last_hash) VALUES (1, 0, 0, '{GENESIS_HASH}')",
    """CREATE TRIGGER records_no_update BEFORE UPDATE ON records
       BEGIN SELECT RAISE(ABORT, 'evidence records are append-only'); END""",
    """CREATE TRIGGER records_no_delete BEFORE DELETE ON records
       BEGIN SELECT RAISE(ABORT, 'evidence records are append-only'); END""",
)
_FORMAT = FileFormat(_APPLICATION_ID, _SCHEMA_VERSION, _SCHEMA)

SELECT_RECORDS = "SELECT seq, recorded_at, kind, stream_id, incident_id, body, prev_hash, hash FROM records"


class EvidenceError(Exception):
    """The evidence log cannot be used (I/O error, disk full, damaged head); carries path and cause."""

    def __init__(self, path: Path, message: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = f"{path}: {message}"
        self.cause = cause

    def __str__(self) -> str:  # KeyError (UnknownIncident) would otherwise quote the message
        return self.message


class NotAnEvidenceLog(EvidenceError):
    """The path is missing, not an SQLite file, or an SQLite file that is not an evidence log."""


class UnknownIncident(EvidenceError, KeyError):
    """No record carries the incident id asked for."""

    def __init__(self, path: Path, incident_id: str) -> None:
        super().__init__(path, f"no records for incident {incident_id!r}")
        self.incident_id = incident_id


def _contains_key(obj: object, key: str) -> bool:
    """True when key is a key of obj or of any mapping nested in it."""
    if isinstance(obj, Mapping):
        return key in obj or any(_contains_key(v, key) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_contains_key(v, key) for v in obj)
    return False


def db_error(path: Path, exc: sqlite3.Error) -> EvidenceError:
    """An SQLite error as EvidenceError; a file that is not SQLite at all as NotAnEvidenceLog."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return NotAnEvidenceLog(path, "not an SQLite database (so not an evidence log)", exc)
    return EvidenceError(path, f"database error: {exc}", exc)


def _refusal(path: Path, found: FileIdentity) -> NotAnEvidenceLog:
    """The error for a file that is not an evidence log this version can read."""
    if found.identity is Identity.OTHER_VERSION:
        return NotAnEvidenceLog(path, f"evidence log schema version {found.user_version} is not supported")
    return NotAnEvidenceLog(path, "not an evidence log (an SQLite file of some other kind)")


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an evidence log (verify, export); NotAnEvidenceLog for anything else."""
    path = Path(path)
    if not path.exists():
        raise NotAnEvidenceLog(path, "no such file")
    if not path.is_file():
        raise NotAnEvidenceLog(path, "not a file")
    try:
        conn = connect_readonly(path, timeout=10.0)
    except sqlite3.Error as exc:
        raise NotAnEvidenceLog(path, f"cannot open: {exc}", exc) from exc
    try:
        found = identify(conn, _FORMAT)
        if found.identity is not Identity.OURS:
            raise _refusal(path, found)
    except sqlite3.Error as exc:
        conn.close()
        raise db_error(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


class EvidenceLog:
    """Writer of the evidence log. Thread-safe (one lock, one connection); appends are fsynced.

    Several processes may append to one file: each append is an IMMEDIATE transaction that reads
    the head, writes the record and rewrites the head.
    """

    def __init__(
        self, path: Path, *, store_images: bool = False, clock: Callable[[], datetime] | None = None
    ) -> None:
        """Open or create the log. store_images allows `image_png_b64` in bodies (off: see append).

        clock returns the current time (tests fix it); it defaults to the system UTC clock.
        """
        self.path = Path(path)
        self.store_images = store_images
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            # 0600, and so are its -wal and -shm files; WAL with synchronous=FULL: an appended record survives
            # power loss; a file of another kind is refused before anything is written to it.
            self._conn = open_state_file(self.path, _FORMAT)
        except WrongFile as exc:
            raise _refusal(self.path, exc.found) from None
        except NoWalMode as exc:
            raise EvidenceError(self.path, str(exc)) from None
        except OSError as exc:
            raise EvidenceError(self.path, f"cannot open: {exc}", exc) from exc
        except sqlite3.Error as exc:
            raise db_error(self.path, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EvidenceError(self.path, "evidence log is closed")
        return self._conn

    def append(
        self,
        kind: str,
        *,
        stream_id: str,
        body: Mapping[str, Any],
        incident_id: str | None = None,
    ) -> EvidenceRecord:
        """Append one record and return it once it is on disk.

        ValueError: unknown kind, empty ids, a body that is not JSON (NaN included), or an image
        (`image_png_b64` at any depth) while store_images is off: images of known abuse material
        must not pile up in a log that gets copied around. EvidenceError: storage failed (disk full,
        I/O error, damaged head); nothing was written then.
        """
        if kind not in KINDS or kind == "head":
            raise ValueError(f"kind must be one of {', '.join(sorted(KINDS - {'head'}))}, not {kind!r}"
                             " (head records are written by sign_head)")
        if not isinstance(stream_id, str) or not stream_id:
            raise ValueError("stream_id must be a non-empty string")
        if incident_id is not None and (not isinstance(incident_id, str) or not incident_id):
            raise ValueError("incident_id must be None or a non-empty string")
        if not isinstance(body, Mapping):
            raise ValueError("body must be a mapping")
        if not self.store_images and _contains_key(body, IMAGE_KEY):
            raise ValueError(f"body carries {IMAGE_KEY!r} but this log was opened with store_images=False")
        text = canonical_json(dict(body))
        for value in (text, stream_id, incident_id or ""):
            value.encode("utf-8")  # lone surrogates: UnicodeEncodeError (a ValueError) now, not later
        rec = self._append(kind, stream_id, incident_id, lambda _conn, _head, _at: text)
        assert rec is not None
        return rec

    def sign_head(self, key: Ed25519PrivateKey, interval_s: float) -> EvidenceRecord | None:
        """Append a `head` record: the current count, last seq and last hash, signed with key (Ed25519).

        interval_s (how often the caller signs) is signed too: `verify --pubkey` treats records far
        more recent than the last signed head as a sign of heads removed. Returns None, writing
        nothing, when the last record is already a signed head (an idle log does not grow).
        """

        def body(conn: sqlite3.Connection, head: EvidenceHead, signed_at: str) -> str | None:
            last = conn.execute("SELECT kind FROM records WHERE seq = ?", (head.last_seq,)).fetchone()
            if last is not None and last[0] == "head":
                return None
            return signed_head_body(key, head, signed_at, interval_s)

        return self._append("head", "-", None, body)

    def _append(
        self,
        kind: str,
        stream_id: str,
        incident_id: str | None,
        make_text: Callable[[sqlite3.Connection, EvidenceHead, str], str | None],
    ) -> EvidenceRecord | None:
        """One record in one IMMEDIATE transaction; make_text sees the head it extends (None: write nothing)."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                head = conn.execute("SELECT count, last_seq, last_hash FROM head WHERE id = 1").fetchone()
                if head is None:
                    raise EvidenceError(self.path, "head row missing: the log was damaged; run verify")
                count, last_seq, prev_hash = head
                recorded_at = utc_iso(self._clock())
                text = make_text(conn, EvidenceHead(int(count), int(last_seq), str(prev_hash)), recorded_at)
                if text is None:
                    conn.execute("ROLLBACK")
                    return None
                rec = EvidenceRecord(
                    int(last_seq) + 1, recorded_at, kind, stream_id, incident_id, text, str(prev_hash), ""
                )
                rec = replace(rec, hash=rec.compute_hash())
                conn.execute(
                    "INSERT INTO records (seq, recorded_at, kind, stream_id, incident_id, body, prev_hash,"
                    " hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.seq, rec.recorded_at, kind, stream_id, incident_id, text, rec.prev_hash, rec.hash),
                )
                conn.execute(
                    "UPDATE head SET count = ?, last_seq = ?, last_hash = ? WHERE id = 1",
                    (int(count) + 1, rec.seq, rec.hash),
                )
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise EvidenceError(self.path, f"append failed: {exc}", exc) from exc
                raise
        return rec

    def records(self, incident_id: str | None = None) -> Iterator[EvidenceRecord]:
        """Records in seq order; only those of incident_id when given. Read in pages of 500."""
        after = -(2**63)
        while True:
            with self._lock:
                conn = self._connection()
                try:
                    if incident_id is None:
                        rows = conn.execute(
                            f"{SELECT_RECORDS} WHERE seq > ? ORDER BY seq LIMIT 500", (after,)
                        ).fetchall()
                    else:
                        rows = conn.execute(
                            f"{SELECT_RECORDS} WHERE incident_id = ? AND seq > ? ORDER BY seq LIMIT 500",
                            (incident_id, after),
                        ).fetchall()
                except sqlite3.Error as exc:
                    raise EvidenceError(self.path, f"read failed: {exc}", exc) from exc
            if not rows:
                return
            for row in rows:
                yield EvidenceRecord(*row)
            after = rows[-1][0]

    def head(self) -> EvidenceHead:
        """The current seal; publish (count, last_hash) elsewhere to anchor the log against rewrites."""
        with self._lock:
            try:
                row = self._connection().execute("SELECT count, last_seq, last_hash FROM head").fetchone()
            except sqlite3.Error as exc:
                raise EvidenceError(self.path, f"read failed: {exc}", exc) from exc
        if row is None:
            raise EvidenceError(self.path, "head row missing: the log was damaged; run verify")
        return EvidenceHead(int(row[0]), int(row[1]), str(row[2]))

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> EvidenceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
