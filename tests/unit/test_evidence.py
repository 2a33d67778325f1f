"""The evidence log: records chain correctly, every kind of tampering is named, exports are complete."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.cli.evidence import main
from monitor.evidence.export import export_incident
from monitor.evidence.records import GENESIS_HASH, EvidenceRecord, record_hash
from monitor.evidence.store import EvidenceError, EvidenceLog, NotAnEvidenceLog, UnknownIncident
from monitor.evidence.verify import verify

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def ticking_clock() -> Iterator[datetime]:
    for i in range(10**6):
        yield T0 + timedelta(seconds=i, microseconds=7)


def open_log(path: Path, **kw: Any) -> EvidenceLog:
    clock = ticking_clock()
    return EvidenceLog(path, clock=lambda: next(clock), **kw)


def tamper(path: Path, *statements: str, params: tuple[Any, ...] = ()) -> None:
    """What an attacker with file access does: bypass the append-only triggers, edit rows."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
        for sql in statements:
            conn.execute(sql, params if "?" in sql else ())
        conn.commit()
    finally:
        conn.close()


def row(path: Path, seq: int) -> EvidenceRecord:
    conn = sqlite3.connect(path)
    try:
        r = conn.execute(
            "SELECT seq, recorded_at, kind, stream_id, incident_id, body, prev_hash, hash"
            " FROM records WHERE seq = ?",
            (seq,),
        ).fetchone()
    finally:
        conn.close()
    return EvidenceRecord(*r)


@pytest.fixture
def log9(tmp_path: Path) -> Path:
    """A log of 9 records (seq 1..9), closed."""
    path = tmp_path / "evidence.db"
    with open_log(path) as log:
        for i in range(9):
            log.append("note", stream_id="s1", body={"i": i}, incident_id="inc-1" if i % 2 else None)
    return path


# -- writing and reading ----------------------------------------------------------------------------


def test_append_and_read(tmp_path: Path) -> None:
    with open_log(tmp_path / "e.db") as log:
        a = log.append("match", stream_id="s1", body={"z": 1, "a": "ü"}, incident_id="inc-1")
        b = log.append("note", stream_id="s2", body={"text": "hello"})
        assert (a.seq, b.seq) == (1, 2)
        assert a.prev_hash == GENESIS_HASH and b.prev_hash == a.hash
        assert a.recorded_at == "2024-05-01T12:00:00.000007Z"
        assert a.body == '{"a":"ü","z":1}'  # canonical: sorted, compact, not ASCII-escaped
        assert a.data() == {"a": "ü", "z": 1}
        assert a.hash == record_hash(1, a.recorded_at, "match", "s1", "inc-1", a.body, GENESIS_HASH)
        assert (
            a.hash
            == hashlib.sha256(
                json.dumps(
                    [1, a.recorded_at, "match", "s1", "inc-1", a.body, GENESIS_HASH],
                    separators=(",", ":"),
                    ensure_ascii=False,
                ).encode()
            ).hexdigest()
        )
        assert list(log.records()) == [a, b]
        assert list(log.records("inc-1")) == [a]
        assert list(log.records("other")) == []
        head = log.head()
        assert (head.count, head.last_seq, head.last_hash) == (2, 2, b.hash)


def test_reopen_continues_chain_and_pages(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with open_log(path) as log:
        for i in range(600):
            log.append("note", stream_id="s", body={"i": i})
    with EvidenceLog(path) as log:
        rec = log.append("alert", stream_id="s", body={"msg_id": "m1"})
        assert rec.seq == 601
        assert [r.seq for r in log.records()] == list(range(1, 602))  # crosses the 500-row page
    assert verify(path).ok


def test_invalid_appends_are_refused(tmp_path: Path) -> None:
    with open_log(tmp_path / "e.db") as log:
        with pytest.raises(ValueError, match="kind"):
            log.append("gossip", stream_id="s", body={})
        with pytest.raises(ValueError, match="stream_id"):
            log.append("note", stream_id="", body={})
        with pytest.raises(ValueError):
            log.append("note", stream_id="s", body={"x": float("nan")})
        with pytest.raises(ValueError):
            log.append("note", stream_id="s", body={"x": "\ud800"})
        assert list(log.records()) == []


def test_images_refused_by_default(tmp_path: Path) -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    with open_log(tmp_path / "e.db") as log:
        with pytest.raises(ValueError, match="image_png_b64"):
            log.append("match", stream_id="s", body={"image_png_b64": png})
        with pytest.raises(ValueError, match="store_images"):
            log.append("match", stream_id="s", body={"sample": [{"image_png_b64": png}]})
        assert log.head().count == 0
    with open_log(tmp_path / "img.db", store_images=True) as log:
        log.append("match", stream_id="s", body={"image_png_b64": png}, incident_id="i")
    doc = export_incident(tmp_path / "img.db", "i")
    stub = doc["matches"][0]["details"]["image_png_b64"]
    assert stub == {"omitted": True, "bytes": 9, "sha256": hashlib.sha256(b"\x89PNG fake").hexdigest()}
    assert png not in json.dumps(doc)


def test_triggers_refuse_casual_edits(log9: Path) -> None:
    conn = sqlite3.connect(log9)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE records SET body = '{}' WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM records WHERE seq = 1")
    finally:
        conn.close()


def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    a, b = EvidenceLog(path), EvidenceLog(path)  # two connections, as two processes would have

    def work(log: EvidenceLog, tag: str) -> None:
        for i in range(30):
            log.append("note", stream_id=tag, body={"i": i})

    threads = [threading.Thread(target=work, args=(log, tag)) for log, tag in ((a, "a"), (b, "b"), (a, "c"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    b.close()
    report = verify(path)
    assert report.ok, report.problems
    assert report.records == 90


def test_storage_failure_raises_and_keeps_log_intact(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    log = open_log(path)
    assert log._conn is not None
    log._conn.execute("PRAGMA max_page_count=12")
    with pytest.raises(EvidenceError, match="append failed") as err:
        for i in range(1000):
            log.append("note", stream_id="s", body={"pad": "x" * 2000, "i": i})
    assert err.value.path == path
    assert isinstance(err.value.cause, sqlite3.OperationalError)
    log.close()
    report = verify(path)
    assert report.ok, report.problems
    assert 0 < report.records < 1000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bodies=st.lists(
        st.dictionaries(
            st.text(max_size=5),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=10),
                lambda inner: (
                    st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
                ),
                max_leaves=8,
            ),
            max_size=4,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_json_body_roundtrips_and_verifies(
    tmp_path_factory: pytest.TempPathFactory, bodies: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("h") / "e.db"
    with EvidenceLog(path) as log:
        for body in bodies:
            rec = log.append("note", stream_id="s", body=body)
            assert rec.data() == body
    assert verify(path).ok


# -- tampering --------------------------------------------------------------------------------------


def test_intact_log_verifies(log9: Path) -> None:
    report = verify(log9)
    assert report.ok and report.problems == [] and report.records == 9
    assert report.head is not None and report.head.count == 9 and report.head.last_hash == report.last_hash


def test_edited_body(log9: Path) -> None:
    tamper(log9, "UPDATE records SET body = '{\"i\":99}' WHERE seq = 5")
    report = verify(log9)
    assert not report.ok
    assert report.problems == ["seq 5: hash mismatch (record edited)"]


def test_deleted_middle_row(log9: Path) -> None:
    tamper(log9, "DELETE FROM records WHERE seq = 5")
    problems = verify(log9).problems
    assert "seq 6: expected seq 5 (record removed or reordered)" in problems
    assert any(p.startswith("seq 6: prev_hash does not match the hash of seq 4") for p in problems)
    assert "head: 9 records sealed, 8 present (records removed)" in problems


def test_deleted_first_row(log9: Path) -> None:
    tamper(log9, "DELETE FROM records WHERE seq = 1")
    problems = verify(log9).problems
    assert "seq 2: expected seq 1 (record removed or reordered)" in problems
    assert "seq 2: prev_hash is not the genesis value (records removed at the start)" in problems


def test_deleted_last_row(log9: Path) -> None:
    tamper(log9, "DELETE FROM records WHERE seq = 9")
    problems = verify(log9).problems
    assert problems[0] == "head: 9 records sealed, 8 present (records removed at the end)"
    assert "head: sealed up to seq 9, the log ends at seq 8" in problems


def test_truncation_with_rewritten_head_needs_an_anchor(log9: Path) -> None:
    """The documented limit: a consistent truncation verifies; only a published head catches it."""
    anchor = (9, row(log9, 9).hash)
    h8 = row(log9, 8).hash
    tamper(
        log9,
        "DELETE FROM records WHERE seq = 9",
        "UPDATE head SET count = 8, last_seq = 8, last_hash = ?",
        params=(h8,),
    )
    assert verify(log9).ok
    report = verify(log9, anchors=[anchor])
    assert report.problems == ["anchor: seq 9 is missing (log truncated or rewritten since it was published)"]
    assert verify(log9, anchors=[(8, h8)]).ok


def test_swapped_rows(log9: Path) -> None:
    tamper(
        log9,
        "UPDATE records SET seq = -1 WHERE seq = 3",
        "UPDATE records SET seq = 3 WHERE seq = 6",
        "UPDATE records SET seq = 6 WHERE seq = -1",
    )
    problems = verify(log9).problems
    assert "seq 3: record moved here from seq 6 (records reordered)" in problems
    assert "seq 6: record moved here from seq 3 (records reordered)" in problems
    assert any(p.startswith("seq 4: prev_hash does not match the hash of seq 3") for p in problems)
    assert any(p.startswith("seq 7: prev_hash does not match the hash of seq 6") for p in problems)
    assert not any("edited)" in p for p in problems)


def test_swapped_first_rows(log9: Path) -> None:
    tamper(
        log9,
        "UPDATE records SET seq = -1 WHERE seq = 1",
        "UPDATE records SET seq = 1 WHERE seq = 2",
        "UPDATE records SET seq = 2 WHERE seq = -1",
    )
    problems = verify(log9).problems
    assert problems[:2] == [
        "seq 1: record moved here from seq 2 (records reordered)",
        "seq 2: record moved here from seq 1 (records reordered)",
    ]
    assert problems[2].startswith("seq 3: prev_hash does not match the hash of seq 2")


def _forge(path: Path, seq: int, prev_hash: str, body: str = '{"forged":true}') -> None:
    at = "2024-05-01T13:00:00.000000Z"
    h = record_hash(seq, at, "note", "s1", None, body, prev_hash)
    tamper(
        path,
        "INSERT INTO records VALUES (?, ?, 'note', 's1', NULL, ?, ?, ?)",
        params=(seq, at, body, prev_hash, h),
    )


def test_forged_row_appended(log9: Path) -> None:
    _forge(log9, 10, row(log9, 9).hash)  # a well-formed record, correctly chained: only the head knows
    problems = verify(log9).problems
    assert problems == [
        "head: 9 records sealed, 10 present (records added outside the log)",
        "head: sealed up to seq 9, the log ends at seq 10",
    ]


def test_forged_row_inserted_in_the_middle(log9: Path) -> None:
    h4 = row(log9, 4).hash
    tamper(log9, *[f"UPDATE records SET seq = seq + 1 WHERE seq = {s}" for s in range(9, 4, -1)])
    _forge(log9, 5, h4)  # chains onto seq 4, so seq 5 itself looks fine
    problems = verify(log9).problems
    for seq in range(6, 11):
        assert f"seq {seq}: record moved here from seq {seq - 1} (records reordered)" in problems
    assert "head: 9 records sealed, 10 present (records added outside the log)" in problems
    assert not any(p.startswith("seq 5:") for p in problems)


def test_forged_row_with_bad_hash(log9: Path) -> None:
    tamper(
        log9,
        "INSERT INTO records VALUES (10, '2024-05-01T13:00:00.000000Z', 'note', 's1', NULL, '{}', ?, ?)",
        params=(row(log9, 9).hash, "ab" * 32),
    )
    assert "seq 10: hash mismatch (record edited)" in verify(log9).problems


def test_malformed_forged_row(log9: Path) -> None:
    tamper(log9, "INSERT INTO records VALUES (10, 'yesterday', 'gossip', 's1', NULL, '{}', 'x', 'y')")
    assert any(p.startswith("seq 10: malformed record") for p in verify(log9).problems)


def test_edited_and_rehashed_breaks_at_next(log9: Path) -> None:
    r5 = row(log9, 5)
    body = '{"i":1234}'
    new_hash = record_hash(5, r5.recorded_at, r5.kind, r5.stream_id, r5.incident_id, body, r5.prev_hash)
    tamper(log9, "UPDATE records SET body = ?, hash = ? WHERE seq = 5", params=(body, new_hash))
    problems = verify(log9).problems
    assert len(problems) == 1
    assert problems[0].startswith("seq 6: prev_hash does not match the hash of seq 5")


def test_last_record_edited_and_rehashed(log9: Path) -> None:
    r9 = row(log9, 9)
    body = '{"i":0}'
    new_hash = record_hash(9, r9.recorded_at, r9.kind, r9.stream_id, r9.incident_id, body, r9.prev_hash)
    tamper(log9, "UPDATE records SET body = ?, hash = ? WHERE seq = 9", params=(body, new_hash))
    assert verify(log9).problems == ["head: sealed hash differs from the hash of seq 9 (last record edited)"]


def test_head_removed(log9: Path) -> None:
    tamper(log9, "DELETE FROM head")
    assert verify(log9).problems == [
        "head: missing or duplicated (log damaged; removals at the end cannot be checked)"
    ]
    with EvidenceLog(log9) as log, pytest.raises(EvidenceError, match="head row missing"):
        log.append("note", stream_id="s", body={})


def test_verify_is_read_only(log9: Path) -> None:
    before = log9.read_bytes()
    verify(log9)
    assert log9.read_bytes() == before


def test_not_an_evidence_log(tmp_path: Path) -> None:
    with pytest.raises(NotAnEvidenceLog, match="no such file"):
        verify(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello " * 1000)
    with pytest.raises(NotAnEvidenceLog, match="not an SQLite database"):
        verify(junk)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(NotAnEvidenceLog, match="not an evidence log"):
        verify(other)
    with pytest.raises(NotAnEvidenceLog, match="not an evidence log"):
        EvidenceLog(other)
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(NotAnEvidenceLog):
        verify(empty)


# -- export -----------------------------------------------------------------------------------------


def _incident_log(path: Path) -> None:
    with open_log(path) as log:
        log.append(
            "incident",
            stream_id="cam-7",
            incident_id="inc-42",
            body={
                "status": "open",
                "stream_url": "rtmp://user:hunter2@ingest.example:1935/live/cam-7?token=s3cret&id=7",
                "publisher_addr": "203.0.113.9:50123",
            },
        )
        for i, t in enumerate((1714564800.25, 1714564810.5)):
            log.append(
                "match",
                stream_id="cam-7",
                incident_id="inc-42",
                body={
                    "pipeline": "known_content",
                    "media_time_s": 12.5 + i,
                    "received_at": t,
                    "bank": "ncmec",
                    "entry_id": f"e{i}",
                    "signal_type": "pdq",
                    "sample_hash": "ab" * 32,
                    "distance": 10 + i,
                    "threshold": 31,
                    "quality": 90,
                },
            )
        log.append("match", stream_id="other", incident_id="inc-99", body={"entry_id": "x"})
        log.append(
            "alert",
            stream_id="cam-7",
            incident_id="inc-42",
            body={"msg_id": "m-1", "topic": "livesafe/alerts/cam-7", "sent_at": 1714564801.0},
        )
        log.append(
            "action",
            stream_id="cam-7",
            incident_id="inc-42",
            body={"moderator": "Dana Reyes", "action": "confirmed", "acted_at": "2024-05-01T12:01:00+00:00"},
        )
        log.append(
            "termination",
            stream_id="cam-7",
            incident_id="inc-42",
            body={"by": "Dana Reyes", "reason": "known CSAM match", "password": "oops"},
        )
        log.append("note", stream_id="cam-7", incident_id="inc-42", body={"text": "reported"})


def test_export_incident(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    _incident_log(path)
    doc = export_incident(path, "inc-42")
    json.dumps(doc)  # JSON-ready
    text = json.dumps(doc)
    assert "hunter2" not in text and "s3cret" not in text and "oops" not in text
    assert doc["incident_id"] == "inc-42"
    assert doc["stream"] == {
        "stream_ids": ["cam-7"],
        "stream_urls": ["rtmp://ingest.example:1935/live/c***?token=***&id=7"],  # stream key hidden
        "publisher_addresses": ["203.0.113.9:50123"],
    }
    assert doc["first_seen_utc"] == "2024-05-01T12:00:00.250000Z"
    assert doc["last_seen_utc"] == "2024-05-01T12:00:10.500000Z"
    m = doc["matches"][0]
    assert {k: m[k] for k in ("media_time_s", "observed_at", "bank", "entry_id", "signal_type")} == {
        "media_time_s": 12.5,
        "observed_at": "2024-05-01T12:00:00.250000Z",
        "bank": "ncmec",
        "entry_id": "e0",
        "signal_type": "pdq",
    }
    assert (m["sample_hash"], m["distance"], m["threshold"], m["seq"]) == ("ab" * 32, 10, 31, 2)
    assert m["record_hash"] == row(path, 2).hash
    assert [x["entry_id"] for x in doc["matches"]] == ["e0", "e1"]  # inc-99 left out
    assert doc["alerts"][0]["msg_id"] == "m-1"
    assert doc["alerts"][0]["sent_at"] == "2024-05-01T12:00:01.000000Z"
    action = doc["moderator_actions"][0]
    assert (action["moderator"], action["action"], action["acted_at"]) == (
        "Dana Reyes",
        "confirmed",
        "2024-05-01T12:01:00.000000Z",
    )
    term = doc["terminations"][0]
    assert (term["by"], term["reason"]) == ("Dana Reyes", "known CSAM match")
    assert term["terminated_at"] == row(path, 7).recorded_at  # no time in the body: when it was logged
    assert doc["notes"][0]["details"] == {"text": "reported"}
    ev = doc["evidence"]
    assert ev["verification"] == {"ok": True, "records": 8, "problems": [], "signatures": None}
    assert ev["first_record"] == {"seq": 1, "hash": row(path, 1).hash}
    assert ev["last_record"] == {"seq": 8, "hash": row(path, 8).hash}
    assert ev["head"] == {"count": 8, "last_seq": 8, "last_hash": row(path, 8).hash}
    assert doc["tool"]["name"] == "livestream-safety-monitor"
    assert doc["tool"]["version"]
    datetime.fromisoformat(doc["generated_at"])


def test_export_unknown_incident(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    _incident_log(path)
    with pytest.raises(UnknownIncident) as err:
        export_incident(path, "inc-404")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == f"{path}: no records for incident 'inc-404'"


def test_export_reports_tampering(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    _incident_log(path)
    tamper(path, "UPDATE records SET body = '{}' WHERE seq = 3")
    ev = export_incident(path, "inc-42")["evidence"]["verification"]
    assert ev["ok"] is False and ev["problems"] == ["seq 3: hash mismatch (record edited)"]


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_verify_ok(log9: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(log9)]) == 0
    out = capsys.readouterr().out
    assert "OK, 9 records" in out


def test_cli_verify_tampered(log9: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tamper(log9, "UPDATE records SET body = '{}' WHERE seq = 4")
    assert main(["verify", str(log9)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "seq 4: hash mismatch (record edited)" in out
    assert main(["verify", "--json", str(log9)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (
        doc["ok"] is False
        and doc["records"] == 9
        and doc["problems"] == ["seq 4: hash mismatch (record edited)"]
    )


def test_cli_verify_anchor(log9: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(log9), "--anchor", f"9:{row(log9, 9).hash}"]) == 0
    assert main(["verify", str(log9), "--anchor", f"9:{'0' * 64}"]) == 1
    capsys.readouterr()
    assert main(["verify", str(log9), "--anchor", "nonsense"]) == 2
    assert "SEQ:HASH" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, b"not a database at all" * 50])
def test_cli_verify_unusable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None
) -> None:
    path = tmp_path / "x.db"
    if content is not None:
        path.write_bytes(content)
    assert main(["verify", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("monitor evidence: ") and str(path) in err


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.db"
    _incident_log(path)
    assert main(["export", str(path), "inc-42"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["incident_id"] == "inc-42" and len(doc["matches"]) == 2
    out = tmp_path / "report.json"
    assert main(["export", str(path), "inc-42", "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["incident_id"] == "inc-42"
    assert capsys.readouterr().out == ""


def test_cli_export_unknown_incident(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.db"
    _incident_log(path)
    assert main(["export", str(path), "inc-404"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"monitor evidence: {path}: no records for incident 'inc-404'"


def test_cli_export_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.db"
    _incident_log(path)
    assert main(["export", str(path), "inc-42", "--out", str(tmp_path / "no" / "such" / "dir.json")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()


# -- finding 1 (issue 19): signed heads catch a recomputed chain ---------------------------------------------

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from monitor.evidence.signing import (  # noqa: E402
    KeyFileError,
    generate_signing_key,
    load_public_key,
    load_signing_key,
)


class StepClock:
    """A clock the test moves: each reading advances it by `step` seconds."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = T0
        self.step = timedelta(seconds=step)

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def signed_log(path: Path, key: Ed25519PrivateKey, *, interval_s: float = 60.0, step_s: float = 1.0) -> Path:
    """12 notes with a signed head after every 4 (heads at seq 5, 10, 15), like a running monitor."""
    with EvidenceLog(path, clock=StepClock(step_s)) as log:
        for i in range(12):
            log.append("note", stream_id="s1", body={"i": i, "moderator": "alice"}, incident_id="inc-1")
            if i % 4 == 3:
                assert log.sign_head(key, interval_s) is not None
        assert log.sign_head(key, interval_s) is None  # nothing new since the last head: nothing written
    return path


def recompute_chain(path: Path, edit_seq: int, new_body: str, *, drop_heads_after: int | None = None) -> None:
    """The attacker of finding 1: edit one record, recompute every later hash and the head row."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
        rows = [list(r) for r in conn.execute(
            "SELECT seq, recorded_at, kind, stream_id, incident_id, body, prev_hash, hash FROM records ORDER BY seq")]
        conn.execute("DELETE FROM records")
        kept = [r for r in rows if not (drop_heads_after is not None and r[2] == "head" and r[0] > drop_heads_after)]
        prev = GENESIS_HASH
        for seq, r in enumerate(kept, start=1):
            if r[0] == edit_seq:
                r[5] = new_body
            r[0], r[6] = seq, prev
            r[7] = record_hash(*r[:7])
            prev = r[7]
            conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", r)
        conn.execute("UPDATE head SET count = ?, last_seq = ?, last_hash = ?", (len(kept), len(kept), prev))
        conn.commit()
    finally:
        conn.close()


def test_finding1_recomputed_chain_passes_without_key_fails_with_pubkey(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = signed_log(tmp_path / "e.db", key)
    assert verify(path, public_key=key.public_key()).ok
    recompute_chain(path, 2, '{"i":1,"moderator":"mallory"}')
    assert verify(path).ok  # what the review saw: the keyless chain says OK
    report = verify(path, public_key=key.public_key())
    assert not report.ok
    assert any("seq 5: signed head" in p and "does not match the chain" in p for p in report.problems), report.problems


def test_finding1_recomputed_chain_with_later_heads_removed_fails(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = signed_log(tmp_path / "e.db", key)
    with EvidenceLog(path, clock=lambda: T0 + timedelta(hours=1)) as log:  # an hour later, no head since
        log.append("note", stream_id="s1", body={"late": True})
    assert not verify(path, public_key=key.public_key()).ok  # heads stopped: reported even untampered
    path = signed_log(tmp_path / "f.db", key, step_s=30.0)  # a head every 2 minutes (4 records 30 s apart)
    recompute_chain(path, 12, '{"edited":true}', drop_heads_after=5)
    assert verify(path).ok
    problems = verify(path, public_key=key.public_key()).problems
    assert any("past two signing intervals" in p for p in problems), problems
    recompute_chain(path, 1, '{"edited":true}', drop_heads_after=0)  # every head removed
    problems = verify(path, public_key=key.public_key()).problems
    assert any("no valid signed head" in p for p in problems), problems


def test_finding1_heads_resigned_with_another_key_fail(tmp_path: Path) -> None:
    key, thief = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    path = signed_log(tmp_path / "e.db", thief)  # a whole log made (or re-signed) without the real key
    problems = verify(path, public_key=key.public_key()).problems
    assert any("head signed by another key" in p for p in problems), problems
    path2 = signed_log(tmp_path / "f.db", key)
    r5 = row(path2, 5).data()
    r5["signature"] = base64.b64encode(bytes(64)).decode()
    body = json.dumps(r5, sort_keys=True, separators=(",", ":"))
    recompute_chain(path2, 5, body)
    problems = verify(path2, public_key=key.public_key()).problems
    assert "seq 5: head signature invalid (head forged or edited)" in problems


def test_finding1_head_cannot_be_appended_unsigned(tmp_path: Path) -> None:
    with open_log(tmp_path / "e.db") as log, pytest.raises(ValueError, match="written by sign_head"):
        log.append("head", stream_id="-", body={"count": 0})


def test_finding1_keygen_verify_and_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "keys" / "evidence.key"
    keyfile.parent.mkdir()
    assert main(["keygen", str(keyfile)]) == 0
    assert (keyfile.stat().st_mode & 0o777) == 0o600
    pub = keyfile.with_name("evidence.key.pub")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["keygen", str(keyfile)]) == 2  # never overwritten
    assert "exists already" in capsys.readouterr().err
    key = load_signing_key(keyfile, state_dir=tmp_path / "state")
    path = signed_log(tmp_path / "e.db", key)
    capsys.readouterr()
    assert main(["verify", str(path), "--pubkey", str(pub)]) == 0
    assert "3 signed heads valid" in capsys.readouterr().out
    assert main(["export", str(path), "inc-1", "--pubkey", str(pub), "--out", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    signing = doc["evidence"]["signing"]
    assert signing["public_key_pem"] == pub.read_text()
    assert [k["public_key_pem"] for k in signing["public_keys_named_in_log"]] == [pub.read_text()]
    assert signing["covering_head"]["signed"]["last_seq"] == 14  # the head after inc-1's last record
    assert doc["evidence"]["verification"]["signatures"]["valid"] == 3
    recompute_chain(path, 2, '{"i":1,"moderator":"mallory"}')
    capsys.readouterr()
    assert main(["verify", str(path)]) == 0  # keyless: a recomputed chain passes, and it says so
    assert "signatures not checked" in capsys.readouterr().out
    assert main(["verify", str(path), "--pubkey", str(pub)]) == 1
    assert "TAMPERED" in capsys.readouterr().out
    assert main(["verify", str(path), "--pubkey", str(tmp_path / "nope.pub")]) == 2


def test_finding1_signing_key_refused_inside_state_dir_or_readable_by_others(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key, _, _ = generate_signing_key(state / "k")
    with pytest.raises(KeyFileError, match="inside the state directory"):
        load_signing_key(key, state_dir=state)
    outside, pub, _ = generate_signing_key(tmp_path / "k")
    outside.chmod(0o644)
    with pytest.raises(KeyFileError, match="lets others read it"):
        load_signing_key(outside, state_dir=state)
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(outside.with_name("k"))  # a private key is not a public key file
    assert load_public_key(pub)


def test_finding1_engine_signs_publishes_and_logs_heads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    from monitor.app.engine import Engine
    from monitor.config.models import build_config

    keyfile, pub, kid = generate_signing_key(tmp_path / "evidence.key")
    cfg = build_config({"state_dir": str(tmp_path / "state"), "workers": 0,
                        "evidence": {"signing_key_file": str(keyfile), "head_interval_s": 5}})
    engine = Engine(cfg, [])
    sent: list[tuple[str, dict[str, Any], bool]] = []
    engine.publisher.send_json = lambda topic, body, retain=False, **kw: sent.append((topic, body, retain))  # type: ignore[method-assign]

    async def go() -> None:
        engine._loop = asyncio.get_running_loop()
        engine.record("note", "s1", {"text": "hello"})
        engine.sign_head()
        for _ in range(100):
            if sent:
                return
            await asyncio.sleep(0.02)

    with caplog.at_level(logging.INFO, logger="monitor.app"):
        asyncio.run(go())
    engine._evidence_writer.shutdown(wait=True)
    assert engine.evidence is not None
    engine.evidence.close()
    engine.outbox.close()
    engine.state_lock.release()
    topic, body, retain = sent[0]
    assert topic == "livesafe/node-1/evidence/head" and retain
    assert body["key_id"] == kid and body["count"] == 1 and body["record_seq"] == 2
    assert any("evidence head signed: 1 records up to seq 1" in r.getMessage() for r in caplog.records)
    assert verify(tmp_path / "state" / "evidence.sqlite", public_key=load_public_key(pub)).ok
    assert verify(tmp_path / "state" / "evidence.sqlite", anchors=[(body["last_seq"], body["last_hash"])]).ok


def test_finding1_validate_config_checks_the_signing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli.main import main as cli_main

    state = tmp_path / "state"
    state.mkdir()
    key, _, _ = generate_signing_key(state / "evidence.key")
    config = tmp_path / "c.yaml"
    config.write_text(f"state_dir: {state}\nevidence: {{signing_key_file: {key}}}\n")
    assert cli_main(["run", "--config", str(config), "--validate-config"]) == 2
    err = capsys.readouterr().err
    assert "inside the state directory" in err and "Traceback" not in err
    outside, _, _ = generate_signing_key(tmp_path / "evidence.key")
    config.write_text(f"state_dir: {state}\nevidence: {{signing_key_file: {outside}}}\n")
    assert cli_main(["run", "--config", str(config), "--validate-config"]) == 0


def test_a_stream_escalated_as_evasive_is_recorded_in_the_evidence_log(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    from monitor.app.engine import Engine
    from monitor.config.models import build_config
    from monitor.ops.sampling_report import Escalation

    cfg = build_config({"state_dir": str(tmp_path / "state"), "workers": 0})
    engine = Engine(cfg, [])

    async def go() -> None:
        engine._loop = asyncio.get_running_loop()
        engine._escalated([Escalation("s1", {"change_after_key": 3}, 3.2, 1.9)])

    with caplog.at_level(logging.WARNING, logger="monitor.app"):
        asyncio.run(go())
    engine._evidence_writer.shutdown(wait=True)
    assert engine.evidence is not None
    engine.evidence.close()
    engine.outbox.close()
    engine.state_lock.release()
    assert not [r for r in caplog.records if "could not record" in r.getMessage()], caplog.text
    with EvidenceLog(tmp_path / "state" / "evidence.sqlite") as log:
        notes = [r.data() for r in log.records() if r.kind == "note" and r.stream_id == "s1"]
    assert [n["text"] for n in notes] == ["stream escalated as evasive"], notes
    assert notes[0]["signals"] == {"change_after_key": 3} and notes[0]["score"] == 3.2
