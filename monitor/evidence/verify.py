"""Verification of an evidence log: the hash chain, the head, published anchors and the signed heads.

`verify` reads the whole log in one read-only snapshot and names every problem by seq: a record edited
(hash mismatch), removed, inserted or moved (seq gaps, broken links; a second pass, only on failure, tells a
moved record from an edited one), records removed at the end (the head), a rewrite that kept the chain
consistent (anchors published earlier), and, given the public key, a recomputed chain (signed heads,
monitor/evidence/signing.py). The record format is in monitor/evidence/records.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from monitor.evidence.records import (
    GENESIS_HASH,
    HEX64,
    KINDS,
    UTC_ISO,
    EvidenceHead,
    EvidenceRecord,
    canonical_json,
    parse_utc,
    utc_iso,
)
from monitor.evidence.signing import head_problem, key_id
from monitor.evidence.store import SELECT_RECORDS, db_error, open_readonly

__all__ = ["HEAD_SLACK_S", "VerifyReport", "verify", "verify_snapshot"]

_MAX_PROBLEMS = 1000  # a wholesale rewrite would otherwise list every record
HEAD_SLACK_S = 60.0  # clock steps and a slow disk: a head may come this much later than its interval says


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
        """The report as JSON-ready data (`monitor evidence verify --json`)."""
        return asdict(self)


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
        if not isinstance(value, str) or not HEX64.match(value):
            return f"{name} is not 64 hex digits"
    if incident_id is not None and not isinstance(incident_id, str):
        return "incident_id is not text"
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    if not UTC_ISO.match(recorded_at):
        return f"recorded_at {recorded_at!r} is not UTC ISO 8601 with microseconds"
    try:
        if canonical_json(json.loads(body)) != body:
            return "body is not canonical JSON"
    except ValueError:
        return "body is not JSON"
    return None


def verify_snapshot(
    conn: sqlite3.Connection, anchors: Iterable[tuple[int, str]], public: Ed25519PublicKey | None = None
) -> VerifyReport:
    """Verify inside the caller's read transaction (one consistent snapshot); heads too, given a public key.

    For `verify` and for monitor/evidence/export.py, which reads the incident in the same snapshot.
    """
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
    for row in conn.execute(f"{SELECT_RECORDS} ORDER BY seq"):
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
            why = head_problem(body, public, n - 1, prev_seq, prev_hash)
            if why is not None:
                problems.add(f"seq {seq}: {why}", seq)
            else:
                valid_heads += 1
                signed_at = parse_utc(body["signed_at"])
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
            newest = parse_utc(last_recorded)
            allowed = last_signed[1] + timedelta(seconds=2 * last_signed[2] + HEAD_SLACK_S)
            if newest is not None and newest > allowed:
                problems.add(f"signatures: {tail} records after the last signed head (seq {last_signed[0]}, signed "
                             f"{utc_iso(last_signed[1])}) run to {last_recorded}, past two signing intervals: "
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
    conn = open_readonly(path)
    try:
        conn.execute("BEGIN")
        return verify_snapshot(conn, list(anchors), public_key)
    except sqlite3.Error as exc:
        raise db_error(path, exc) from exc
    finally:
        conn.close()
