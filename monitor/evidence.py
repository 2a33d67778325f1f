"""Append-only evidence log with a hash chain, for reports to the authorities.

Every match, alert, incident change, moderator action and stream termination is appended as one
record. Each record's hash covers its content and the previous record's hash, so editing,
removing, inserting or reordering any record breaks the chain at that point; `verify` names it.

Hash of a record (reimplementable in a few lines by whoever receives the file)::

    sha256(utf8(json.dumps([seq, recorded_at, kind, stream_id, incident_id, body, prev_hash],
                           ensure_ascii=False, separators=(",", ":")))).hexdigest()

where `body` is the stored canonical JSON text (a string inside the array), `incident_id` is
null when absent, and the first record's `prev_hash` is 64 zeros.

A `head` row, rewritten in the same transaction as each append, seals the record count and the
last hash, so removing records at the end is detected too.

Limits (a keyless chain cannot do more):
  * Someone with write access who truncates the log AND rewrites the head to match, or who
    rewrites the whole chain from some record on (recomputing every later hash), produces a
    file that verifies. Only a head hash published elsewhere catches that: send `EvidenceLog.head()`
    with alerts or to a write-once store, and pass it to `verify(..., anchors=[(seq, hash)])`.
  * Records appended after the last published anchor by such a person are indistinguishable from
    genuine ones; closing that needs signatures with a key kept off this machine (not done here).
  * The SQLite triggers that refuse UPDATE/DELETE only stop accidents; the chain is the protection.

Body conventions read by `export_incident` (other keys are kept, under "details"):
  match:       media_time_s, received_at (unix s) or observed_at (ISO), bank, entry_id, entry_label,
               signal_type, sample_hash, distance, threshold, quality, stream_url, publisher_addr
  alert:       msg_id, topic, sent_at
  incident:    stream_url, publisher_addr, status
  action:      moderator, action, acted_at
  termination: by, reason, terminated_at
  note:        text
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import importlib
import json
import os
import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.statefiles import connect_private
from monitor.urls import redact_url

__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "EvidenceError",
    "EvidenceHead",
    "EvidenceLog",
    "EvidenceRecord",
    "NotAnEvidenceLog",
    "UnknownIncident",
    "VerifyReport",
    "export_incident",
    "main",
    "record_hash",
    "verify",
]

KINDS = frozenset({"match", "alert", "incident", "action", "termination", "note"})
GENESIS_HASH = "0" * 64
IMAGE_KEY = "image_png_b64"
TOOL_NAME = "livestream-safety-monitor"

_APPLICATION_ID = 0x4C534556  # "LSEV": tells an evidence log from any other SQLite file
_SCHEMA_VERSION = 1
_MAX_PROBLEMS = 1000  # a wholesale rewrite would otherwise list every record
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

_SCHEMA = [
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
]

_SELECT = "SELECT seq, recorded_at, kind, stream_id, incident_id, body, prev_hash, hash FROM records"


# -- errors -----------------------------------------------------------------------------------------


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


# -- records ----------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """The one JSON text of obj that is hashed: sorted keys, no spaces, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(
    seq: int,
    recorded_at: str,
    kind: str,
    stream_id: str,
    incident_id: str | None,
    body: str,
    prev_hash: str,
) -> str:
    """The chain hash of one record (see the module docstring for the exact encoding)."""
    material = json.dumps(
        [seq, recorded_at, kind, stream_id, incident_id, body, prev_hash],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EvidenceRecord:
    """One record as stored; `body` is the canonical JSON text the hash covers."""

    seq: int
    recorded_at: str  # UTC, ISO 8601 with microseconds, e.g. 2024-05-01T12:00:00.000000Z
    kind: str
    stream_id: str
    incident_id: str | None
    body: str
    prev_hash: str
    hash: str

    def data(self) -> Any:
        """The body parsed back into Python objects."""
        return json.loads(self.body)

    def compute_hash(self) -> str:
        return record_hash(
            self.seq, self.recorded_at, self.kind, self.stream_id, self.incident_id, self.body, self.prev_hash
        )


@dataclass(frozen=True)
class EvidenceHead:
    """The seal: how many records there are and the last hash. Publish it to anchor the log."""

    count: int
    last_seq: int
    last_hash: str


@dataclass
class VerifyReport:
    """Result of `verify`: ok is False when any problem was found; each problem names a seq."""

    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)
    head: EvidenceHead | None = None
    first_hash: str | None = None
    last_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utc_iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _contains_key(obj: Any, key: str) -> bool:
    if isinstance(obj, Mapping):
        return key in obj or any(_contains_key(v, key) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_contains_key(v, key) for v in obj)
    return False


def _db_error(path: Path, exc: sqlite3.Error) -> EvidenceError:
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return NotAnEvidenceLog(path, "not an SQLite database (so not an evidence log)", exc)
    return EvidenceError(path, f"database error: {exc}", exc)


def _check_identity(path: Path, conn: sqlite3.Connection, *, allow_empty: bool) -> bool:
    """True for an evidence log, False for an empty file (when allowed); NotAnEvidenceLog otherwise."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == _APPLICATION_ID:
        if version != _SCHEMA_VERSION:
            raise NotAnEvidenceLog(path, f"evidence log schema version {version} is not supported")
        return True
    tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    if allow_empty and not (app_id or version or tables):
        return False
    raise NotAnEvidenceLog(path, "not an evidence log (an SQLite file of some other kind)")


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
            conn = connect_private(self.path)  # 0600, and so are its -wal and -shm files
        except (OSError, sqlite3.Error) as exc:
            raise EvidenceError(self.path, f"cannot open: {exc}", exc) from exc
        try:
            self._init(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise _db_error(self.path, exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _init(self, conn: sqlite3.Connection) -> None:
        _check_identity(self.path, conn, allow_empty=True)  # refuse a wrong file before writing to it
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise EvidenceError(self.path, f"cannot enable WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous=FULL")  # an appended record survives power loss
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _check_identity(self.path, conn, allow_empty=True):
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

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
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(sorted(KINDS))}, not {kind!r}")
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
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                head = conn.execute("SELECT count, last_seq, last_hash FROM head WHERE id = 1").fetchone()
                if head is None:
                    raise EvidenceError(self.path, "head row missing: the log was damaged; run verify")
                count, last_seq, prev_hash = head
                recorded_at = _utc_iso(self._clock())
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
                            f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT 500", (after,)
                        ).fetchall()
                    else:
                        rows = conn.execute(
                            f"{_SELECT} WHERE incident_id = ? AND seq > ? ORDER BY seq LIMIT 500",
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


# -- verification -----------------------------------------------------------------------------------


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an evidence log; NotAnEvidenceLog for anything else."""
    path = Path(path)
    if not path.exists():
        raise NotAnEvidenceLog(path, "no such file")
    if not path.is_file():
        raise NotAnEvidenceLog(path, "not a file")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise NotAnEvidenceLog(path, f"cannot open: {exc}", exc) from exc
    try:
        _check_identity(path, conn, allow_empty=False)
    except sqlite3.Error as exc:
        conn.close()
        raise _db_error(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


class _Problems:
    """Problem lines in order, capped; a wholesale rewrite would otherwise list every record."""

    def __init__(self) -> None:
        self.items: list[tuple[int | None, str, str]] = []  # (seq, code, text)
        self.dropped = 0

    def add(self, text: str, seq: int | None = None, code: str = "") -> None:
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append((seq, code, text))
        else:
            self.dropped += 1

    def result(self, moved: Mapping[int, int]) -> list[str]:
        """The lines; for a record found to be moved, its hash and link lines become one line."""
        out: list[str] = []
        for seq, code, text in self.items:
            if seq is not None and seq in moved and code in ("hash", "link"):
                line = f"seq {seq}: record moved here from seq {moved[seq]} (records reordered)"
                if line not in out:
                    out.append(line)
            else:
                out.append(text)
        return [*out, f"... and {self.dropped} more problems"] if self.dropped else out


def _well_formed(row: tuple[Any, ...]) -> str | None:
    """Why a stored row cannot be a genuine record (types, kind, body, time format), or None."""
    seq, recorded_at, kind, stream_id, incident_id, body, prev_hash, hash_ = row
    if not isinstance(seq, int):
        return "seq is not an integer"
    for name, value in (
        ("recorded_at", recorded_at),
        ("kind", kind),
        ("stream_id", stream_id),
        ("body", body),
    ):
        if not isinstance(value, str):
            return f"{name} is not text"
    for name, value in (("prev_hash", prev_hash), ("hash", hash_)):
        if not isinstance(value, str) or not _HEX64.match(value):
            return f"{name} is not 64 hex digits"
    if incident_id is not None and not isinstance(incident_id, str):
        return "incident_id is not text"
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    if not _UTC_ISO.match(recorded_at):
        return f"recorded_at {recorded_at!r} is not UTC ISO 8601 with microseconds"
    try:
        if canonical_json(json.loads(body)) != body:
            return "body is not canonical JSON"
    except ValueError:
        return "body is not JSON"
    return None


def _verify_conn(conn: sqlite3.Connection, anchors: Iterable[tuple[int, str]]) -> VerifyReport:
    """Verify inside the caller's read transaction (one consistent snapshot)."""
    problems = _Problems()
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if "records" not in tables:
        return VerifyReport(ok=False, records=0, problems=["records table missing (log destroyed)"])
    n = 0
    prev_seq = 0
    prev_hash = GENESIS_HASH
    first_hash: str | None = None
    mismatched: list[tuple[Any, ...]] = []  # rows whose hash is wrong: edited, or moved to another seq
    for row in conn.execute(f"{_SELECT} ORDER BY seq"):
        n += 1
        seq, stored_hash = row[0], str(row[7])
        if first_hash is None:
            first_hash = stored_hash
        reason = _well_formed(row)
        if reason is not None:
            problems.add(f"seq {seq}: malformed record ({reason}; forged or damaged)", seq)
            prev_seq, prev_hash = seq, stored_hash
            continue
        expected = prev_seq + 1
        if seq > expected:
            problems.add(f"seq {seq}: expected seq {expected} (record removed or reordered)", seq)
        elif seq < expected:
            problems.add(f"seq {seq}: expected seq {expected} (record inserted or reordered)", seq)
        if EvidenceRecord(*row).compute_hash() != stored_hash:
            problems.add(f"seq {seq}: hash mismatch (record edited)", seq, "hash")
            if len(mismatched) < _MAX_PROBLEMS:
                mismatched.append(row)
        if row[6] != prev_hash:
            if n == 1:
                problems.add(
                    f"seq {seq}: prev_hash is not the genesis value (records removed at the start)",
                    seq,
                    "link",
                )
            else:
                problems.add(
                    f"seq {seq}: prev_hash does not match the hash of seq {prev_seq}"
                    f" (seq {prev_seq} edited and rehashed, or a record inserted, removed or moved)",
                    seq,
                    "link",
                )
        prev_seq, prev_hash = seq, stored_hash
    moved = _find_moved(conn, mismatched) if mismatched else {}

    head: EvidenceHead | None = None
    head_rows = (
        conn.execute("SELECT count, last_seq, last_hash FROM head").fetchall() if "head" in tables else []
    )
    if len(head_rows) != 1:
        problems.add("head: missing or duplicated (log damaged; removals at the end cannot be checked)")
    else:
        count, head_seq, head_hash = head_rows[0]
        head = EvidenceHead(int(count), int(head_seq), str(head_hash))
        last_seq = prev_seq  # 0 when there are no records
        if head.count > n:
            where = "records removed at the end" if head.last_seq > last_seq else "records removed"
            problems.add(f"head: {head.count} records sealed, {n} present ({where})")
        elif head.count < n:
            problems.add(f"head: {head.count} records sealed, {n} present (records added outside the log)")
        if head.last_seq != last_seq:
            problems.add(f"head: sealed up to seq {head.last_seq}, the log ends at seq {last_seq}")
        elif head.last_hash != prev_hash:
            problems.add(f"head: sealed hash differs from the hash of seq {last_seq} (last record edited)")

    for a_seq, a_hash in anchors:
        got = conn.execute("SELECT hash FROM records WHERE seq = ?", (a_seq,)).fetchone()
        if got is None:
            problems.add(
                f"anchor: seq {a_seq} is missing (log truncated or rewritten since it was published)"
            )
        elif got[0] != a_hash:
            problems.add(f"anchor: seq {a_seq} hash differs from the published one (log rewritten)")

    items = problems.result(moved)
    return VerifyReport(
        ok=not items,
        records=n,
        problems=items,
        head=head,
        first_hash=first_hash,
        last_hash=prev_hash if n else None,
    )


def _find_moved(conn: sqlite3.Connection, mismatched: list[tuple[Any, ...]]) -> dict[int, int]:
    """Second pass, only on failure: which wrongly hashed records were moved, and from which seq.

    A record's prev_hash names its true predecessor. If that one is stored at seq P (itself moved
    from P'), and the record hashes correctly as seq P' + 1 (or P + 1), it was moved from there
    rather than edited. Rows are taken in seq order, so runs of renumbered records resolve.
    """
    wanted = {row[6] for row in mismatched}
    seq_of: dict[str, int] = {}
    for seq, stored_hash in conn.execute("SELECT seq, hash FROM records ORDER BY seq"):
        if stored_hash in wanted:
            seq_of.setdefault(stored_hash, seq)
    moved: dict[int, int] = {}
    todo = list(mismatched)
    for _round in range(4):  # a predecessor stored later may resolve in the next round
        rest = []
        for row in todo:
            pred = seq_of.get(row[6]) if row[6] != GENESIS_HASH else 0
            origins = () if pred is None else dict.fromkeys((moved.get(pred, pred) + 1, pred + 1))
            for origin in origins:
                if origin != row[0] and EvidenceRecord(origin, *row[1:]).compute_hash() == row[7]:
                    moved[row[0]] = origin
                    break
            else:
                rest.append(row)
        if len(rest) == len(todo):
            break
        todo = rest
    return moved


def verify(path: Path, *, anchors: Iterable[tuple[int, str]] = ()) -> VerifyReport:
    """Check the whole chain and the head of the log at path, read-only.

    anchors: (seq, hash) pairs published earlier (from `EvidenceLog.head()`); each must still be
    present unchanged, which catches truncation and rewrites that keep the chain consistent.
    Raises NotAnEvidenceLog when path is missing or not an evidence log.
    """
    path = Path(path)
    conn = _open_readonly(path)
    try:
        conn.execute("BEGIN")
        return _verify_conn(conn, list(anchors))
    except sqlite3.Error as exc:
        raise _db_error(path, exc) from exc
    finally:
        conn.close()


# -- export -----------------------------------------------------------------------------------------

_SECRET_KEYS = {"password", "passwd", "secret", "token", "stream_key", "api_key", "auth", "authorization"}


def _clean(obj: Any, *, include_images: bool) -> Any:
    """Export copy of a body: URLs without credentials, secrets masked, images out unless asked for."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            key = str(k).lower()
            if k == IMAGE_KEY and not include_images:
                out[k] = _image_stub(v)
            elif key in _SECRET_KEYS:
                out[k] = "***"
            elif (key.endswith("url") or key.endswith("_urls")) and isinstance(v, str):
                out[k] = redact_url(v)
            else:
                out[k] = _clean(v, include_images=include_images)
        return out
    if isinstance(obj, list):
        return [_clean(v, include_images=include_images) for v in obj]
    return obj


def _image_stub(value: Any) -> dict[str, Any]:
    """What stands in for an image in the export: proof of what was stored, not the image itself."""
    raw: bytes
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = value.encode("utf-8", "replace")
    else:
        raw = canonical_json(value).encode("utf-8")
    return {"omitted": True, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def _as_utc(value: Any) -> str | None:
    """A unix time or an ISO string as UTC ISO 8601 with microseconds; None if it is neither."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _utc_iso(datetime.fromtimestamp(float(value), UTC))
        if isinstance(value, str):
            dt = datetime.fromisoformat(value)
            return _utc_iso(dt if dt.tzinfo else dt.replace(tzinfo=UTC))
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _tool_version() -> str:
    try:
        return str(importlib.import_module("monitor").__version__)
    except Exception:
        return "unknown"


def _ref(rec: EvidenceRecord) -> dict[str, Any]:
    return {
        "seq": rec.seq,
        "recorded_at": rec.recorded_at,
        "stream_id": rec.stream_id,
        "record_hash": rec.hash,
    }


def export_incident(path: Path, incident_id: str, *, include_images: bool = False) -> dict[str, Any]:
    """A JSON-ready report of one incident for the authorities, read from one consistent snapshot.

    Holds the stream identity (URLs without credentials), first/last seen, every match, alert,
    moderator action and termination with its record seq and hash, the chain verification result
    and the head. Stored images are replaced by their size and sha256 unless include_images.
    Raises UnknownIncident (a KeyError) when no record has incident_id, NotAnEvidenceLog for a bad path.
    """
    path = Path(path)
    conn = _open_readonly(path)
    try:
        conn.execute("BEGIN")
        report = _verify_conn(conn, ())
        rows = conn.execute(f"{_SELECT} WHERE incident_id = ? ORDER BY seq", (incident_id,)).fetchall()
    except sqlite3.Error as exc:
        raise _db_error(path, exc) from exc
    finally:
        conn.close()
    if not rows:
        raise UnknownIncident(path, incident_id)

    stream_ids: list[str] = []
    urls: list[str] = []
    publishers: list[str] = []
    seen_times: list[str] = []
    sections: dict[str, list[dict[str, Any]]] = {
        "matches": [],
        "alerts": [],
        "incident_updates": [],
        "moderator_actions": [],
        "terminations": [],
        "notes": [],
    }

    def add_unique(items: list[str], value: Any) -> None:
        if isinstance(value, str) and value and value not in items:
            items.append(value)

    records = [EvidenceRecord(*row) for row in rows]
    for rec in records:
        add_unique(stream_ids, str(rec.stream_id))
        try:
            data = rec.data()
        except ValueError:
            data = {"unparseable_body": True}
        if not isinstance(data, dict):
            data = {"value": data}
        for key in ("stream_url", "url"):
            if isinstance(data.get(key), str):
                add_unique(urls, redact_url(data[key]))
        for key in ("publisher_addr", "publisher_address"):
            add_unique(publishers, data.get(key))
        details = _clean(data, include_images=include_images)
        item = _ref(rec)
        if rec.kind == "match":
            observed = _as_utc(data.get("observed_at", data.get("received_at")))
            if observed is not None:
                seen_times.append(observed)
            item.update(
                media_time_s=data.get("media_time_s"),
                observed_at=observed,
                bank=data.get("bank"),
                entry_id=data.get("entry_id"),
                entry_label=data.get("entry_label"),
                signal_type=data.get("signal_type"),
                sample_hash=data.get("sample_hash"),
                distance=data.get("distance"),
                threshold=data.get("threshold"),
                quality=data.get("quality"),
            )
            sections["matches"].append(item)
        elif rec.kind == "alert":
            item.update(
                msg_id=data.get("msg_id"), topic=data.get("topic"), sent_at=_as_utc(data.get("sent_at"))
            )
            sections["alerts"].append(item)
        elif rec.kind == "action":
            item.update(
                moderator=data.get("moderator"),
                action=data.get("action"),
                acted_at=_as_utc(data.get("acted_at")) or rec.recorded_at,
            )
            sections["moderator_actions"].append(item)
        elif rec.kind == "termination":
            item.update(
                by=data.get("by"),
                reason=data.get("reason"),
                terminated_at=_as_utc(data.get("terminated_at")) or rec.recorded_at,
            )
            sections["terminations"].append(item)
        elif rec.kind == "incident":
            sections["incident_updates"].append(item)
        else:
            sections["notes"].append(item)
        item["details"] = details

    if not seen_times:  # no match carried an observed time: fall back to when records were written
        seen_times = [r.recorded_at for r in records]
    head = report.head
    return {
        "report": "livestream safety incident",
        "format_version": 1,
        "incident_id": incident_id,
        "generated_at": _utc_iso(datetime.now(UTC)),
        "tool": {"name": TOOL_NAME, "version": _tool_version()},
        "stream": {"stream_ids": stream_ids, "stream_urls": urls, "publisher_addresses": publishers},
        "first_seen_utc": min(seen_times),
        "last_seen_utc": max(seen_times),
        **sections,
        "evidence": {
            "log_file": str(path.resolve()),
            "hash": "sha256 over the JSON array [seq, recorded_at, kind, stream_id, incident_id, body,"
            " prev_hash] (no spaces, UTF-8); first prev_hash is 64 zeros",
            "verification": {"ok": report.ok, "records": report.records, "problems": report.problems},
            "first_record": {"seq": records[0].seq, "hash": records[0].hash},
            "last_record": {"seq": records[-1].seq, "hash": records[-1].hash},
            "head": asdict(head) if head is not None else None,
        },
    }


# -- CLI --------------------------------------------------------------------------------------------


def _anchor(text: str) -> tuple[int, str]:
    seq, sep, hash_ = text.partition(":")
    if not sep or not seq.isdigit() or not _HEX64.match(hash_.lower()):
        raise argparse.ArgumentTypeError(f"{text!r} is not SEQ:HASH (HASH is 64 hex digits)")
    return int(seq), hash_.lower()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor evidence", description="Check and export the evidence log."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain; exit 0 intact, 1 tampered, 2 not a log")
    v.add_argument("path", type=Path)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--anchor",
        type=_anchor,
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="a head published earlier",
    )
    e = sub.add_parser("export", help="write one incident's report as JSON (images omitted)")
    e.add_argument("path", type=Path)
    e.add_argument("incident")
    e.add_argument("--out", type=Path, help="write here instead of stdout")
    return parser


def _write_atomically(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`monitor evidence verify|export`: exit 0 ok, 1 chain broken, 2 unusable input (said in one line)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2); argparse already printed why
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "verify":
            report = verify(args.path, anchors=args.anchor)
            if args.json:
                print(json.dumps({"path": str(args.path), **report.to_dict()}, indent=2, ensure_ascii=False))
            elif report.ok:
                head = (
                    f"; head seq {report.head.last_seq} hash {report.head.last_hash}" if report.head else ""
                )
                print(f"{args.path}: OK, {report.records} records, hash chain intact{head}")
            else:
                print(f"{args.path}: TAMPERED, {report.records} records, {len(report.problems)} problems:")
                for problem in report.problems:
                    print(f"  {problem}")
            return 0 if report.ok else 1
        doc = export_incident(args.path, args.incident)
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        if args.out is None:
            sys.stdout.write(text)
        else:
            _write_atomically(args.out, text)
            print(f"incident {args.incident}: report written to {args.out}", file=sys.stderr)
        if not doc["evidence"]["verification"]["ok"]:
            print(f"warning: {args.path} failed verification; the report lists the problems", file=sys.stderr)
            return 1
        return 0
    except EvidenceError as exc:
        print(f"monitor evidence: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"monitor evidence: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"monitor evidence: {args.path}: database error: {exc}", file=sys.stderr)
        return 2
