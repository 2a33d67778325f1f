"""Hash-list formats, entry ids, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.errors import BankFormatError
from pipelines.banks import format_bank, load_bank
from pipelines.hamming import code_to_hex, hex_to_code

A, B, C = "a" * 64, "0123456789abcdef" * 4, "f" * 63 + "e"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_plain_hex_uses_line_numbers_as_entry_ids(tmp_path: Path) -> None:
    bank = load_bank(write(tmp_path, "l.txt", f"# header comment\n{A}\n\n{B.upper()}\n"), "b")
    assert [e.entry_id for e in bank.entries] == ["2", "4"]
    assert code_to_hex(bank.codes[1]) == B
    assert bank.threshold == 31 and bank.signal_type == "pdq"


def test_typed_lines_skip_other_signal_types(tmp_path: Path) -> None:
    bank = load_bank(write(tmp_path, "l.txt", f"pdq {A}\nphash {B}\nPDQ {C}\n"), "b")
    assert [e.entry_id for e in bank.entries] == ["1", "3"]


def test_threatexchange_csv_with_and_without_header(tmp_path: Path) -> None:
    text = f"hash,indicator_id,descriptor_id,added_on,tags\n{A},1001,d1,2024-01-02T00:00:00Z,tag1 tag2\n{B},,d2,,\n"
    bank = load_bank(write(tmp_path, "te.csv", text), "te")
    assert [e.entry_id for e in bank.entries] == ["1001", "3"]
    assert bank.entries[0].tags == ("tag1", "tag2") and bank.entries[0].added_on == "2024-01-02T00:00:00Z"
    bank = load_bank(write(tmp_path, "nohdr.csv", f"{A},77,d,,\n"), "x")
    assert bank.entries[0].entry_id == "77"


def test_json_lines(tmp_path: Path) -> None:
    text = f'{{"hash": "{A}", "id": 5, "label": "cat", "tags": ["x"]}}\n{{"hash": "{B}", "signal_type": "phash"}}\n'
    bank = load_bank(write(tmp_path, "l.jsonl", text), "j")
    assert len(bank) == 1 and bank.entries[0].entry_id == "5" and bank.entries[0].label == "cat"


@pytest.mark.parametrize(
    ("name", "text", "line", "reason"),
    [
        ("p.txt", f"{A}\nzz{A[2:]}\n", 2, "is not a 64-digit hex pdq hash"),
        ("p.txt", f"{A}\n{A[:-2]}\n", 2, "is not a 64-digit hex pdq hash"),
        ("p.txt", f"{A}\npdq {A} extra\n", 2, "expected '<hex>' or '<signal_type> <hex>'"),
        ("c.csv", f"hash,indicator_id\n{A},1\n{A},2,3,4,5,6,7\n", 3, "7 columns, expected at most 2"),
        ("j.jsonl", f'{{"hash": "{A}"}}\n{{"hash": 5}}\n', 2, "expected an object with a string 'hash'"),
        ("j.jsonl", f'{{"hash": "{A}"}}\n{{oops\n', 2, "invalid JSON"),
    ],
)
def test_malformed_line_rejects_the_file(tmp_path: Path, name: str, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(BankFormatError) as err:
        load_bank(path, "b")
    assert err.value.line == line
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert reason in str(err.value) and "nothing loaded from this file" in str(err.value)


def test_binary_file_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "b.bin"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BankFormatError, match="not a UTF-8 text file"):
        load_bank(p, "b")


@pytest.mark.parametrize("fmt", ["csv", "plain", "typed", "jsonl"])
def test_format_round_trip(tmp_path: Path, fmt: str) -> None:
    text = format_bank([A, B], fmt, "pdq", ["one", "two"])
    bank = load_bank(write(tmp_path, f"x.{fmt}", text), "r")
    assert [code_to_hex(c) for c in bank.codes] == [A, B]
    assert [e.entry_id for e in bank.entries] == ["1", "2"]


def test_lookup_returns_entries_within_threshold_nearest_first(tmp_path: Path) -> None:
    bank = load_bank(write(tmp_path, "l.txt", f"{A}\n{B}\n"), "b", threshold=10)
    probe = hex_to_code(A)
    probe[0] ^= 0b111  # 3 bits away from A
    hits = bank.lookup(probe)
    assert [(h.entry.entry_id, h.distance) for h in hits] == [("1", 3)]
    assert bank.lookup(np.zeros(32, np.uint8)) == []


def test_convert_keeps_ids_labels_tags_and_dates(tmp_path: Path) -> None:
    from pipelines.banks import Entry

    entries = [Entry("te-9", "cat", ("t1", "t2"), "2024-02-03T00:00:00Z"), Entry("te-10")]
    for fmt in ("csv", "jsonl"):
        text = format_bank([A, B], fmt, "pdq", entries=entries)
        bank = load_bank(write(tmp_path, f"e.{fmt}", text), "e")
        assert bank.entries == entries


def test_video_entries_share_an_id_and_carry_frame_times(tmp_path: Path) -> None:
    from pipelines.banks import Entry

    entries = [Entry("7", "clip.mp4", frame_s=0.0), Entry("7", "clip.mp4", frame_s=1.0), Entry("8", "still.png")]
    for fmt in ("csv", "jsonl"):
        bank = load_bank(write(tmp_path, f"v.{fmt}", format_bank([A, B, C], fmt, "pdq", entries=entries)), "v")
        assert bank.entries == entries
    with pytest.raises(BankFormatError, match="frame_s 'x' is not a number"):
        load_bank(write(tmp_path, "bad.csv", f"hash,indicator_id,frame_s\n{A},1,x\n"), "b")
