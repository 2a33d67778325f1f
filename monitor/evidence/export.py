"""Incident reports for the authorities, exported from the evidence log (`monitor evidence export`).

`export_incident` reads one incident's records (with the matches of its stream recorded before it opened that its
FOLDED_TEXT note links, each marked `linked_by_seq` and `link_verified`: the record is the one the note names by
seq and hash, of the note's stream, bank and entry), the verification result and the signed head covering
them from one consistent snapshot, and returns a JSON-ready report: the stream identity (URLs without
credentials), first/last seen, every match, alert, moderator action and termination with its record seq
and hash. Secrets are masked and stored images replaced by their size and sha256 unless asked for.

Body conventions read here (other keys are kept, under "details"):
  match:       media_time_s, received_at (unix s) or observed_at (ISO), bank, entry_id, entry_label,
               signal_type, sample_hash, distance, threshold, quality, stream_url, publisher_addr
  alert:       msg_id, topic, sent_at
  incident:    stream_url, publisher_addr, status
  action:      moderator, action, acted_at
  termination: by, reason, terminated_at
  note:        text
  head:        see monitor/evidence/signing.py
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import importlib
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from monitor.common.urls import redact_url
from monitor.evidence.records import FOLDED_TEXT, IMAGE_KEY, EvidenceRecord, canonical_json, utc_iso
from monitor.evidence.signing import key_id, public_key_pem
from monitor.evidence.store import SELECT_RECORDS, UnknownIncident, db_error, open_readonly
from monitor.evidence.verify import verify_snapshot

__all__ = ["TOOL_NAME", "export_incident"]

TOOL_NAME = "livestream-safety-monitor"

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
            return utc_iso(datetime.fromtimestamp(float(value), UTC))
        if isinstance(value, str):
            dt = datetime.fromisoformat(value)
            return utc_iso(dt if dt.tzinfo else dt.replace(tzinfo=UTC))
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _tool_version() -> str:
    """The monitor's version, imported late (the package imports nothing of the evidence log)."""
    try:
        return str(importlib.import_module("monitor").__version__)
    except Exception:
        return "unknown"


def _ref(rec: EvidenceRecord) -> dict[str, Any]:
    """Where a record stands in the log: what a reader needs to find it and check its hash."""
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
    conn = open_readonly(path)
    try:
        conn.execute("BEGIN")
        report = verify_snapshot(conn, (), public_key)
        rows = conn.execute(f"{SELECT_RECORDS} WHERE incident_id = ? ORDER BY seq", (incident_id,)).fetchall()
        links = _folded_links(rows)
        rows = sorted([*rows, *_linked_rows(conn, links)], key=lambda row: int(row[0]))  # only same-stream ones
        covering = conn.execute(f"{SELECT_RECORDS} WHERE kind = 'head' AND seq > ? ORDER BY seq LIMIT 1",
                                (rows[-1][0] if rows else 0,)).fetchone()
        key_rows = conn.execute("SELECT DISTINCT json_extract(body, '$.public_key') FROM records"
                                " WHERE kind = 'head'").fetchall()
    except sqlite3.Error as exc:
        raise db_error(path, exc) from exc
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
        if rec.kind == "match" and rec.incident_id is None and rec.seq in links:  # recorded unconfirmed, before
            link = links[rec.seq]  # the incident had an id: the note must name this very record of its key
            item.update(linked_by_seq=link.note_seq,
                        link_verified=(rec.hash == link.record_hash == rec.compute_hash()
                                       and rec.stream_id == link.stream_id
                                       and (data.get("bank"), data.get("entry_id")) == (link.bank, link.entry_id)))
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
        "generated_at": utc_iso(datetime.now(UTC)),
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


@dataclass(frozen=True)
class _Link:
    """A match record a FOLDED_TEXT note of the incident names: the note, the hash it names, its key."""

    note_seq: int
    record_hash: str
    stream_id: str
    bank: object
    entry_id: object


def _folded_links(rows: list[tuple[Any, ...]]) -> dict[int, _Link]:
    """The match records the incident's FOLDED_TEXT notes name, by seq. Only notes on the incident's own stream
    count (the stream of its other records): a note naming another stream's records links none of them."""
    recs = [EvidenceRecord(*row) for row in rows]
    own_streams = {r.stream_id for r in recs if r.kind != "note"}
    links: dict[int, _Link] = {}
    for rec in recs:
        if rec.kind != "note" or (own_streams and rec.stream_id not in own_streams):
            continue
        try:
            data = rec.data()
        except ValueError:
            continue
        if not isinstance(data, dict) or data.get("text") != FOLDED_TEXT or not isinstance(data.get("matches"), list):
            continue
        for m in data["matches"]:
            if isinstance(m, dict) and type(m.get("seq")) is int and isinstance(m.get("record_hash"), str):
                links.setdefault(m["seq"], _Link(rec.seq, m["record_hash"], rec.stream_id, data.get("bank"),
                                                 data.get("entry_id")))
    return links


def _linked_rows(conn: sqlite3.Connection, links: dict[int, _Link]) -> list[tuple[Any, ...]]:
    """The match records `links` names that carry no incident id (one with an id is exported under its own) and
    belong to the stream of the note naming them (no note pulls in another stream's records)."""
    seqs = sorted(links)
    out: list[tuple[Any, ...]] = []
    for i in range(0, len(seqs), 500):
        chunk = seqs[i:i + 500]
        out += conn.execute(f"{SELECT_RECORDS} WHERE kind = 'match' AND incident_id IS NULL AND seq IN "
                            f"({', '.join('?' * len(chunk))})", chunk).fetchall()
    return [row for row in out if EvidenceRecord(*row).stream_id == links[int(row[0])].stream_id]


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
                     "monitor/evidence/signing.py)",
        "checked_with_key_id": key_id(public_key) if public_key is not None else None,
        "public_keys_named_in_log": keys,
        "public_key_pem": public_key_pem(public_key) if public_key is not None else None,
        "covering_head": head,
        "note": "check the key against the one the operator published; a key named only in the log proves nothing",
    }
