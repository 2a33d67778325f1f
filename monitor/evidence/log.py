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

Signed heads. The chain alone is keyless: someone with write access who edits a record and
recomputes every later hash (or truncates the log and rewrites the head) produces a file whose
chain verifies. So the monitor signs: every `evidence.head_interval_s` (and at start and stop) it
appends a `head` record whose body is the count, last seq and last hash before it, the signing time
and interval, and the key's id and raw public key, signed with Ed25519 (`sign_head`; the bytes
signed are `head_message`). The key lives outside the state directory (`evidence.signing_key_file`,
made by `monitor evidence keygen`); the monitor publishes each signed head to a retained MQTT topic
and logs it. `verify(..., public_key=...)` (`monitor evidence verify --pubkey FILE`) then fails a
recomputed chain three ways: a kept head's signed hash no longer matches the chain before it; a
head re-signed without the key fails its signature; removed heads leave records that run more than
two signing intervals past the last valid head (or no valid head at all).

Limits:
  * Whoever holds the signing key (root, or the monitor's own user, on the monitor host) can re-sign
    a rewritten log. The published heads (MQTT, retained; pass them as `anchors=[(seq, hash)]`) are
    what that person cannot recall once a subscriber has stored them.
  * Records appended after the last signed head can be rewritten or dropped by someone with write
    access within one signing interval, and their times squeezed into it.
  * The SQLite triggers that refuse UPDATE/DELETE only stop accidents; the chain is the protection.

Body conventions read by `export_incident` (other keys are kept, under "details"):
  match:       media_time_s, received_at (unix s) or observed_at (ISO), bank, entry_id, entry_label,
               signal_type, sample_hash, distance, threshold, quality, stream_url, publisher_addr
  alert:       msg_id, topic, sent_at
  incident:    stream_url, publisher_addr, status
  action:      moderator, action, acted_at
  termination: by, reason, terminated_at
  note:        text
  head:        count, last_seq, last_hash, signed_at, interval_s, key_id, public_key, signature
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import importlib
import json
import os
import re
import sqlite3
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from monitor.common.errors import UserError
from monitor.common.statefiles import connect_private
from monitor.common.urls import redact_url

__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "EvidenceError",
    "EvidenceHead",
    "EvidenceLog",
    "EvidenceRecord",
    "KeyFileError",
    "NotAnEvidenceLog",
    "UnknownIncident",
    "VerifyReport",
    "export_incident",
    "generate_signing_key",
    "head_message",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "main",
    "record_hash",
    "verify",
]

KINDS = frozenset({"match", "alert", "incident", "action", "termination", "note", "head"})
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


# -- signed heads -----------------------------------------------------------------------------------

HEAD_FORMAT = "lsev-head-1"
_SIGNED_FIELDS = ("count", "last_seq", "last_hash", "signed_at", "interval_s", "key_id", "public_key")
HEAD_SLACK_S = 60.0  # clock steps and a slow disk: a head may come this much later than its interval says


class KeyFileError(UserError):
    """A signing or public key file cannot be made, read or used; the message names the file."""


def _raw_b64(public: Ed25519PublicKey) -> str:
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def public_key_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def head_message(claims: Mapping[str, Any]) -> bytes:
    """The bytes a head's signature covers: canonical JSON of its claims and the format name.

    Reimplementable: `{"count", "format": "lsev-head-1", "interval_s", "key_id", "last_hash", "last_seq",
    "public_key", "signed_at"}` with sorted keys, no spaces, UTF-8; the signature is Ed25519, base64.
    """
    return canonical_json({**{k: claims[k] for k in _SIGNED_FIELDS}, "format": HEAD_FORMAT}).encode("utf-8")


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def generate_signing_key(path: Path, public_path: Path | None = None) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key (PKCS8 PEM, mode 0600, never over an existing file) and its public key.

    Returns (key file, public key file, key id). The public key file defaults to `<path>.pub`.
    """
    path = Path(path)
    public_path = Path(public_path) if public_path is not None else path.with_name(path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    written: list[Path] = []
    try:
        for target, data, mode in ((path, pem, 0o600),
                                   (public_path, public_key_pem(key.public_key()).encode("ascii"), 0o644)):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            written.append(target)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        for done in written:
            done.unlink(missing_ok=True)
        why = "exists already (a key is never overwritten)" if isinstance(exc, FileExistsError) else exc.strerror
        raise KeyFileError(f"{exc.filename or path}: {why or exc}") from None
    return path, public_path, key_id(key.public_key())


def load_signing_key(path: Path, *, state_dir: Path | None = None) -> Ed25519PrivateKey:
    """The Ed25519 key in path; KeyFileError when it is unusable or kept where it protects nothing.

    Refused: a key inside state_dir (whoever copies or edits the state would take the key with it), a
    key file that others may read or write, anything but an unencrypted Ed25519 PEM key. (A symlink is
    followed: secret stores mount keys that way; the mode checked is the target's.)
    """
    path = Path(path)
    if state_dir is not None and _inside(path, state_dir):
        raise KeyFileError(f"evidence.signing_key_file {path} is inside the state directory {state_dir}: "
                           "keep the key where a copy or edit of the state does not reach it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"evidence.signing_key_file {path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        if mode & 0o077:
            raise KeyFileError(f"evidence.signing_key_file {path}: mode {mode:04o} lets others read it "
                               "(chmod 600 it, and make a new key if others may have copied it)")
        data = fh.read(64 * 1024)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"evidence.signing_key_file {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"evidence.signing_key_file {path}: not an Ed25519 key (`monitor evidence keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (what `monitor evidence keygen` writes as `.pub`)."""
    path = Path(path)
    try:
        data = path.read_bytes()[: 64 * 1024]
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def _parse_utc(text: Any) -> datetime | None:
    if not isinstance(text, str) or not _UTC_ISO.match(text):
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _head_problem(body: Any, public: Ed25519PublicKey, n_before: int, prev_seq: int, prev_hash: str) -> str | None:
    """Why a head record does not prove the chain before it (forged, other key, rewritten records), or None."""
    if not isinstance(body, dict) or any(k not in body for k in (*_SIGNED_FIELDS, "signature")):
        return "head record without the signed fields (forged or damaged)"
    if body["key_id"] != key_id(public) or body["public_key"] != _raw_b64(public):
        return f"head signed by another key (key id {str(body['key_id'])[:16]!r}, expected {key_id(public)})"
    try:
        public.verify(base64.b64decode(str(body["signature"]), validate=True), head_message(body))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return "head signature invalid (head forged or edited)"
    if (body["count"], body["last_seq"], body["last_hash"]) != (n_before, prev_seq, prev_hash):
        return (f"signed head (seq {body['last_seq']}, {body['count']} records) does not match the chain before it"
                f" (seq {prev_seq}, {n_before} records): records before it were edited, removed or rehashed")
    return None


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
    # With a public key: heads, valid, key_id, last_signed_seq, unsigned_tail (records after the last valid head).
    signatures: dict[str, Any] | None = None

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
        public = key.public_key()

        def body(conn: sqlite3.Connection, head: EvidenceHead, signed_at: str) -> str | None:
            last = conn.execute("SELECT kind FROM records WHERE seq = ?", (head.last_seq,)).fetchone()
            if last is not None and last[0] == "head":
                return None
            claims = {"count": head.count, "last_seq": head.last_seq, "last_hash": head.last_hash,
                      "signed_at": signed_at, "interval_s": float(interval_s), "key_id": key_id(public),
                      "public_key": _raw_b64(public)}
            signature = base64.b64encode(key.sign(head_message(claims))).decode("ascii")
            return canonical_json({**claims, "signature": signature})

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
                recorded_at = _utc_iso(self._clock())
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


def _verify_conn(
    conn: sqlite3.Connection, anchors: Iterable[tuple[int, str]], public: Ed25519PublicKey | None = None
) -> VerifyReport:
    """Verify inside the caller's read transaction (one consistent snapshot); heads too, given a public key."""
    problems = _Problems()
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if "records" not in tables:
        return VerifyReport(ok=False, records=0, problems=["records table missing (log destroyed)"])
    n = 0
    prev_seq = 0
    prev_hash = GENESIS_HASH
    first_hash: str | None = None
    mismatched: list[tuple[Any, ...]] = []  # rows whose hash is wrong: edited, or moved to another seq
    heads = valid_heads = 0
    last_signed: tuple[int, datetime, float] | None = None  # (seq, signed_at, interval_s) of the last valid head
    last_recorded: str | None = None
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
        last_recorded = row[1]
        if public is not None and row[2] == "head":
            heads += 1
            body = json.loads(row[5])
            why = _head_problem(body, public, n - 1, prev_seq, prev_hash)
            if why is not None:
                problems.add(f"seq {seq}: {why}", seq)
            else:
                valid_heads += 1
                signed_at = _parse_utc(body["signed_at"])
                if signed_at is not None and isinstance(body["interval_s"], int | float):
                    last_signed = (seq, signed_at, float(body["interval_s"]))
        prev_seq, prev_hash = seq, stored_hash
    moved = _find_moved(conn, mismatched) if mismatched else {}
    signatures: dict[str, Any] | None = None
    if public is not None:
        tail = n - (last_signed[0] if last_signed else 0)
        signatures = {"key_id": key_id(public), "heads": heads, "valid": valid_heads,
                      "last_signed_seq": last_signed[0] if last_signed else None, "unsigned_tail": tail}
        if n and last_signed is None:
            problems.add("signatures: no valid signed head in the log (not signed with this key, or its heads "
                         "were removed)")
        elif last_signed is not None and tail:
            newest = _parse_utc(last_recorded)
            allowed = last_signed[1] + timedelta(seconds=2 * last_signed[2] + HEAD_SLACK_S)
            if newest is not None and newest > allowed:
                problems.add(f"signatures: {tail} records after the last signed head (seq {last_signed[0]}, signed "
                             f"{_utc_iso(last_signed[1])}) run to {last_recorded}, past two signing intervals: "
                             "later signed heads were removed, or the log was rewritten from there")

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
        signatures=signatures,
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


def verify(
    path: Path, *, anchors: Iterable[tuple[int, str]] = (), public_key: Ed25519PublicKey | None = None
) -> VerifyReport:
    """Check the whole chain and the head of the log at path, read-only.

    anchors: (seq, hash) pairs published earlier (from `EvidenceLog.head()`); each must still be
    present unchanged, which catches truncation and rewrites that keep the chain consistent.
    public_key: the monitor's signing key; every `head` record must then carry a valid signature over
    the chain before it, there must be one, and no more than two signing intervals of records may follow
    the last one (a chain recomputed after an edit fails all three ways).
    Raises NotAnEvidenceLog when path is missing or not an evidence log.
    """
    path = Path(path)
    conn = _open_readonly(path)
    try:
        conn.execute("BEGIN")
        return _verify_conn(conn, list(anchors), public_key)
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


def export_incident(
    path: Path, incident_id: str, *, include_images: bool = False, public_key: Ed25519PublicKey | None = None
) -> dict[str, Any]:
    """A JSON-ready report of one incident for the authorities, read from one consistent snapshot.

    Holds the stream identity (URLs without credentials), first/last seen, every match, alert,
    moderator action and termination with its record seq and hash, the chain verification result
    and the head. Stored images are replaced by their size and sha256 unless include_images.
    Signing: the first signed head after the incident's last record (it covers every one of them), the
    public keys the log's heads name, and, given public_key, the signature check (in the verification).
    Raises UnknownIncident (a KeyError) when no record has incident_id, NotAnEvidenceLog for a bad path.
    """
    path = Path(path)
    conn = _open_readonly(path)
    try:
        conn.execute("BEGIN")
        report = _verify_conn(conn, (), public_key)
        rows = conn.execute(f"{_SELECT} WHERE incident_id = ? ORDER BY seq", (incident_id,)).fetchall()
        covering = conn.execute(f"{_SELECT} WHERE kind = 'head' AND seq > ? ORDER BY seq LIMIT 1",
                                (rows[-1][0] if rows else 0,)).fetchone()
        key_rows = conn.execute("SELECT DISTINCT json_extract(body, '$.public_key') FROM records"
                                " WHERE kind = 'head'").fetchall()
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
            "verification": {"ok": report.ok, "records": report.records, "problems": report.problems,
                             "signatures": report.signatures},
            "signing": _signing_section(covering, key_rows, public_key),
            "first_record": {"seq": records[0].seq, "hash": records[0].hash},
            "last_record": {"seq": records[-1].seq, "hash": records[-1].hash},
            "head": asdict(head) if head is not None else None,
        },
    }


def _signing_section(covering: tuple[Any, ...] | None, key_rows: list[tuple[Any, ...]],
                     public_key: Ed25519PublicKey | None) -> dict[str, Any]:
    """What a recipient needs to check the heads: the algorithm, the keys, the head covering the incident."""
    keys: list[dict[str, str]] = []
    for (raw,) in key_rows:
        try:
            pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(str(raw), validate=True))
        except (ValueError, TypeError, binascii.Error):
            continue
        keys.append({"key_id": key_id(pub), "public_key_pem": public_key_pem(pub)})
    head: dict[str, Any] | None = None
    if covering is not None:
        rec = EvidenceRecord(*covering)
        with contextlib.suppress(ValueError):
            head = {**_ref(rec), "signed": rec.data()}
    return {
        "algorithm": "Ed25519 over the canonical JSON of the head's claims (see head_message in "
                     "monitor/evidence/log.py)",
        "checked_with_key_id": key_id(public_key) if public_key is not None else None,
        "public_keys_named_in_log": keys,
        "public_key_pem": public_key_pem(public_key) if public_key is not None else None,
        "covering_head": head,
        "note": "check the key against the one the operator published; a key named only in the log proves nothing",
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
    v.add_argument("--pubkey", type=Path, metavar="FILE", help="check the signed heads with this public key")
    e = sub.add_parser("export", help="write one incident's report as JSON (images omitted)")
    e.add_argument("path", type=Path)
    e.add_argument("incident")
    e.add_argument("--out", type=Path, help="write here instead of stdout")
    e.add_argument("--pubkey", type=Path, metavar="FILE", help="check the signed heads and include this key")
    k = sub.add_parser("keygen", help="make an Ed25519 key for signing heads (keep it outside the state dir)")
    k.add_argument("key", type=Path, help="private key file to create (mode 0600)")
    k.add_argument("--pub", type=Path, metavar="FILE", help="public key file (default KEY.pub)")
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
    """`monitor evidence verify|export|keygen`: exit 0 ok, 1 chain broken, 2 unusable input (said in one line)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2); argparse already printed why
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "keygen":
            key, pub, kid = generate_signing_key(args.key, args.pub)
            print(f"signing key {key} (keep it secret, outside the state directory); public key {pub}; key id {kid}")
            print("set evidence.signing_key_file to the key; give the public key to whoever verifies the log")
            return 0
        public = load_public_key(args.pubkey) if args.pubkey is not None else None
        if args.command == "verify":
            report = verify(args.path, anchors=args.anchor, public_key=public)
            if args.json:
                print(json.dumps({"path": str(args.path), **report.to_dict()}, indent=2, ensure_ascii=False))
            elif report.ok:
                head = (
                    f"; head seq {report.head.last_seq} hash {report.head.last_hash}" if report.head else ""
                )
                print(f"{args.path}: OK, {report.records} records, hash chain intact{head}")
                sig = report.signatures
                if sig is None:
                    print("  signatures not checked (give --pubkey FILE): a recomputed chain would also pass")
                else:
                    print(f"  {sig['valid']} signed heads valid (key {sig['key_id']}), last at seq "
                          f"{sig['last_signed_seq']}; {sig['unsigned_tail']} records after it not yet signed")
            else:
                print(f"{args.path}: TAMPERED, {report.records} records, {len(report.problems)} problems:")
                for problem in report.problems:
                    print(f"  {problem}")
            return 0 if report.ok else 1
        doc = export_incident(args.path, args.incident, public_key=public)
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
    except (EvidenceError, KeyFileError) as exc:
        print(f"monitor evidence: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"monitor evidence: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"monitor evidence: {args.path}: database error: {exc}", file=sys.stderr)
        return 2
