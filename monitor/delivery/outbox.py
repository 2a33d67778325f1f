"""A durable outbox between detection and MQTT.

Detection writes an alert here first and only then tries to publish it, so an alert is never lost
to a broker outage, a crash or a restart: it stays pending until the publisher marks it sent.
Delivery is therefore at-least-once; subscribers dedupe on msg_id (sent as a user property).

Storage is one SQLite file in WAL mode with synchronous=FULL: when put() returns True the row has
been fsynced, so it survives SIGKILL of the process and (on honest disks) power loss.

The file and its WAL are created 0600, and a file of another kind is refused unaltered (the one set-up of
SQLite state files, monitor/common/sqlite.py). A damaged file (truncated, overwritten) found at start-up is
moved aside by `Outbox.open_recovering`, whatever pending rows can still be read from it are carried into a
new outbox, and one log line says so.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from monitor.common.sqlite import (
    DamagedFile,
    FileFormat,
    NoWalMode,
    WrongFile,
    connect_readonly,
    open_state_file,
)
from monitor.common.statefiles import move_aside

__all__ = ["Outbox", "OutboxError", "OutboxMessage"]

_T = TypeVar("_T")
log = logging.getLogger(__name__)

# "LSOB": marks the file as an outbox, so a wrong path (say, the evidence log) is refused, not altered.
_APPLICATION_ID = 0x4C534F42
_SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id          TEXT NOT NULL UNIQUE,
    topic           TEXT NOT NULL,
    payload         BLOB NOT NULL,
    qos             INTEGER NOT NULL,
    retain          INTEGER NOT NULL,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    user_properties TEXT NOT NULL,
    sent_at         REAL
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (created_at, seq) WHERE sent_at IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL",
)
_FORMAT = FileFormat(_APPLICATION_ID, _SCHEMA_VERSION, _SCHEMA)

_COLUMNS = "msg_id, topic, payload, qos, retain, created_at, attempts, user_properties"


class OutboxError(Exception):
    """The outbox file could not be read or written (disk full, I/O error, wrong file).

    Raised instead of sqlite3 errors so the caller can keep running and report it; a failed
    operation is rolled back and leaves already stored rows as they were.
    """

    def __init__(self, path: Path, operation: str, cause: BaseException | str, *, corrupt: bool = False) -> None:
        self.path = path
        self.operation = operation
        self.cause = cause
        self._corrupt = corrupt
        super().__init__(f"outbox {path}: {operation} failed: {cause}")

    @property
    def corrupt(self) -> bool:
        """True when the file is damaged (SQLite says corrupt or not a database, or the integrity check failed)."""
        return self._corrupt or getattr(self.cause, "sqlite_errorname", None) in ("SQLITE_CORRUPT", "SQLITE_NOTADB")

    @property
    def disk_full(self) -> bool:
        """True when SQLite reported SQLITE_FULL (disk or size cap full): freeing space may help."""
        return getattr(self.cause, "sqlite_errorname", None) == "SQLITE_FULL"


@dataclass(frozen=True)
class OutboxMessage:
    """One MQTT publication waiting to go out; msg_id is the dedupe key end to end."""

    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float  # unix seconds, when the alert was made (not when it was stored)
    attempts: int = 0  # publish attempts so far, for backoff and for reporting stuck messages
    user_properties: tuple[tuple[str, str], ...] = ()


def _check(msg: OutboxMessage) -> None:
    """Reject what MQTT could never send, before it blocks the head of the queue forever."""
    if not isinstance(msg.msg_id, str) or not msg.msg_id:
        raise ValueError("msg_id must be a non-empty string")
    if not isinstance(msg.topic, str) or not msg.topic or any(c in msg.topic for c in "#+\0"):
        raise ValueError(f"topic {msg.topic!r} must be a non-empty topic name without wildcards")
    if not isinstance(msg.payload, bytes | bytearray | memoryview):
        raise ValueError("payload must be bytes")
    if msg.qos not in (0, 1, 2) or isinstance(msg.qos, bool):
        raise ValueError(f"qos must be 0, 1 or 2, not {msg.qos!r}")
    for pair in msg.user_properties:
        if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
            raise ValueError(f"user property {pair!r} must be a (str, str) pair")


class Outbox:
    """Pending MQTT messages in SQLite; safe to share between one asyncio loop and worker threads.

    All calls take one lock around one connection: each is a short transaction, so holding the lock
    from the event loop costs about one fsync (put, mark_*) or one indexed read.
    """

    def __init__(self, path: Path, *, max_bytes: int | None = None) -> None:
        """Open or create the outbox at path.

        max_bytes caps the database file (SQLite max_page_count), so a long broker outage fills the
        outbox, raising OutboxError(disk_full), instead of the disk the evidence log lives on.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = open_state_file(self.path, _FORMAT, quick_check=True, max_bytes=max_bytes)
        except WrongFile:
            raise OutboxError(self.path, "open", "not an outbox file (or written by another version)") from None
        except DamagedFile as exc:
            raise OutboxError(self.path, "open", str(exc), corrupt=True) from None
        except NoWalMode as exc:
            raise OutboxError(self.path, "open", str(exc)) from None
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(self.path, "open", exc) from exc

    @classmethod
    def open_recovering(cls, path: Path, *, max_bytes: int | None = None) -> Outbox:
        """Open the outbox at path; a damaged one is moved aside and a new one started in its place.

        Pending rows that can still be read from the damaged file are stored in the new one (the damaged
        file stays beside it, `<name>.corrupt-<UTC time>`, for whoever wants to look further). Other
        errors (a wrong file, no permission, a full disk) are raised as OutboxError: nothing is moved then.
        """
        try:
            return cls(path, max_bytes=max_bytes)
        except OutboxError as exc:
            if not exc.corrupt:
                raise
            damage = exc.cause
        try:
            aside = move_aside(Path(path))
        except OSError as exc:
            raise OutboxError(Path(path), "move aside the damaged file", exc) from exc
        box = cls(path, max_bytes=max_bytes)
        rescued, lost = box._rescue(aside)
        log.error("outbox %s was damaged (%s): moved aside to %s and a new outbox started; %d waiting messages "
                  "carried over%s", path, damage, aside, rescued,
                  f", the rest could not be read ({lost})" if lost else "")
        return box

    def _rescue(self, damaged: Path) -> tuple[int, str | None]:
        """Copy whatever pending rows a damaged outbox still yields into this one: (count, why it stopped)."""
        n = 0
        try:
            conn = connect_readonly(damaged, timeout=1.0)
        except sqlite3.Error as exc:
            return 0, str(exc)
        try:
            # A table scan in rowid order (the index may be what is damaged); created_at order is kept by put.
            rows = conn.execute(f"SELECT {_COLUMNS} FROM outbox NOT INDEXED WHERE sent_at IS NULL ORDER BY seq")
            for row in rows:
                try:
                    n += self.put(self._row(row))
                except (ValueError, TypeError):
                    continue  # a mangled row: skipped, the rest may still be good
        except (sqlite3.Error, OutboxError) as exc:
            return n, str(exc)
        finally:
            conn.close()
        return n, None

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, operation: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; sqlite3 errors become OutboxError after a rollback."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise OutboxError(self.path, operation, "outbox is closed")
            try:
                yield conn
            except sqlite3.Error as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error is the one worth reporting
                raise OutboxError(self.path, operation, exc) from exc

    def _write(self, operation: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run body in one IMMEDIATE transaction: all of it is stored, or none of it."""
        with self._locked(operation) as conn:
            conn.execute("BEGIN IMMEDIATE")
            result = body(conn)
            conn.execute("COMMIT")
            return result

    @staticmethod
    def _row(row: tuple[str, str, bytes, int, int, float, int, str]) -> OutboxMessage:
        msg_id, topic, payload, qos, retain, created_at, attempts, props = row
        return OutboxMessage(
            msg_id=msg_id,
            topic=topic,
            payload=bytes(payload),
            qos=int(qos),
            retain=bool(retain),
            created_at=float(created_at),
            attempts=int(attempts),
            user_properties=tuple((str(k), str(v)) for k, v in json.loads(props)),
        )

    # -- API --------------------------------------------------------------------------------------

    def put(self, msg: OutboxMessage) -> bool:
        """Store msg durably; False (and nothing changed) if its msg_id is already known.

        Idempotence is what lets a restarted monitor re-detect the same alert without sending it
        twice. It holds while the first copy is pending or sent-but-not-yet-purged; a differing
        payload under a known msg_id is ignored too (the first one wins).
        """
        _check(msg)
        props = json.dumps([list(p) for p in msg.user_properties], ensure_ascii=False)
        row = (
            msg.msg_id,
            msg.topic,
            bytes(msg.payload),
            int(msg.qos),
            int(bool(msg.retain)),
            float(msg.created_at),
            int(msg.attempts),
            props,
        )

        def insert(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (msg_id) DO NOTHING",
                row,
            )
            return cur.rowcount == 1

        return self._write("put", insert)

    def pending(self, limit: int = 100) -> list[OutboxMessage]:
        """Up to limit unacknowledged messages, oldest created_at first (ties: order of put)."""
        with self._locked("pending") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE sent_at IS NULL ORDER BY created_at, seq LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
        return [self._row(r) for r in rows]

    def mark_sent(self, msg_ids: Iterable[str], *, now: float | None = None) -> int:
        """Acknowledge delivery; returns how many pending messages this marked. Unknown ids are ignored.

        Sent rows stay (for dedupe of re-detections) until purge_sent removes them.
        """
        ids = [(i,) for i in msg_ids]
        sent_at = time.time() if now is None else now

        def update(conn: sqlite3.Connection) -> int:
            n = 0
            for (msg_id,) in ids:
                cur = conn.execute(
                    "UPDATE outbox SET sent_at = ? WHERE msg_id = ? AND sent_at IS NULL", (sent_at, msg_id)
                )
                n += cur.rowcount
            return n

        return self._write("mark_sent", update)

    def mark_attempt(self, msg_id: str) -> None:
        """Count one publish attempt (kept across restarts, for backoff and stuck-message reports)."""
        sql = "UPDATE outbox SET attempts = attempts + 1 WHERE msg_id = ?"
        self._write("mark_attempt", lambda conn: conn.execute(sql, (msg_id,)))

    def depth(self) -> int:
        """Number of pending (unacknowledged) messages."""
        with self._locked("depth") as conn:
            return int(conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])

    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Age of the oldest pending message in seconds (never negative), or None when none is pending.

        The health signal for "alerts are not getting out": it grows while the broker is unreachable.
        """
        with self._locked("oldest_age_s") as conn:
            oldest = conn.execute("SELECT min(created_at) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        if oldest is None:
            return None
        return max(0.0, (time.time() if now is None else now) - float(oldest))

    def purge_sent(self, older_than_s: float, *, now: float | None = None) -> int:
        """Delete messages sent more than older_than_s ago; returns how many.

        This ends the dedupe window for them: a later put of the same msg_id is accepted again.
        Freed pages are reused by later puts (the file does not shrink).
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        return self._write(
            "purge_sent",
            lambda conn: (
                conn.execute(
                    "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (cutoff,)
                ).rowcount
            ),
        )

    def check_writable(self, nbytes: int = 4096) -> None:
        """Raise OutboxError unless a message of about nbytes could be stored now; nothing is kept.

        A probe row is inserted and deleted in one transaction: it needs what a put needs (free pages or room
        to grow under the size cap, and room for the WAL frames), so it fails on a full disk or a full outbox,
        and leaves no row behind. For telling when a write error has cleared while nothing waits to be written.
        """
        probe = f"outbox-probe-{uuid.uuid4().hex}"

        def insert_and_delete(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, 'probe', zeroblob(?), 0, 0, 0, 0, '[]')",
                (probe, max(0, int(nbytes))),
            )
            conn.execute("DELETE FROM outbox WHERE msg_id = ?", (probe,))

        self._write("check_writable", insert_and_delete)

    def close(self) -> None:
        """Close the file (idempotent); later calls raise OutboxError."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise OutboxError(self.path, "close", exc) from exc

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
