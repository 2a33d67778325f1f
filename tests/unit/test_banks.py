"""Hash-list formats, entry ids, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.banks import format_bank, load_bank
from pipelines.errors import BankFormatError
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


# -- finding 4 (issue 19): size caps, symbolic links, serialised reloads reported back ---------------------

import logging  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from monitor.config.models import BankConfig  # noqa: E402
from monitor.runtime.bank_reload import BankReloader, ReloadResult, load_banks  # noqa: E402
from pipelines.banks import DEFAULT_MAX_BYTES, Bank  # noqa: E402
from pipelines.known_content import KnownContentMatcher  # noqa: E402


def test_finding4_bank_larger_than_its_cap_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "big.txt", f"{A}\n" * 100)  # 6500 bytes
    with pytest.raises(BankFormatError, match=r"big.txt: 6500 bytes, more than this bank's max_bytes \(1000\)"):
        load_banks([BankConfig(name="big", path=p, max_bytes=1000)])
    assert len(load_banks([BankConfig(name="big", path=p, max_bytes=6500)])[0]) == 100
    assert BankConfig(name="x", path=p).max_bytes == DEFAULT_MAX_BYTES


def test_finding4_bank_through_a_symbolic_link_is_refused_unless_allowed(tmp_path: Path) -> None:
    secret = write(tmp_path, "secret.txt", "Name:\tsshd\nPassword:\thunter2\n")
    link = tmp_path / "bank.txt"
    link.symlink_to(secret)
    with pytest.raises(BankFormatError) as err:
        load_banks([BankConfig(name="b", path=link)])
    assert "is a symbolic link" in str(err.value) and "follow_symlinks" in str(err.value)
    assert "hunter2" not in str(err.value) and "sshd" not in str(err.value)  # nothing of it was read
    proc = tmp_path / "proc.txt"
    proc.symlink_to("/proc/self/status")  # the review's probe
    with pytest.raises(BankFormatError, match="is a symbolic link"):
        load_banks([BankConfig(name="p", path=proc)])
    good = write(tmp_path, "real.txt", f"{A}\n")
    (tmp_path / "linked.txt").symlink_to(good)
    assert len(load_banks([BankConfig(name="l", path=tmp_path / "linked.txt", follow_symlinks=True)])[0]) == 1
    linked_dir = tmp_path / "banks"
    linked_dir.symlink_to(tmp_path)  # the folder swapped for a link
    with pytest.raises(BankFormatError, match="is a symbolic link"):
        load_banks([BankConfig(name="d", path=linked_dir / "real.txt")])


def test_finding4_fifo_and_devices_are_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(BankFormatError, match="not a regular file"):
        load_bank(fifo, "f")  # no writer: an open without O_NONBLOCK would hang here
    assert time.monotonic() - t0 < 5
    with pytest.raises(BankFormatError, match="not a regular file"):
        load_bank(Path("/dev/zero"), "z")


def test_finding4_files_that_report_no_size_are_capped_while_read(tmp_path: Path) -> None:
    from pipelines.banks import read_bank_text

    with pytest.raises(BankFormatError, match=r"more than this bank's max_bytes \(16\) bytes"):
        read_bank_text(Path(f"/proc/{os.getpid()}/status"), max_bytes=16)  # st_size 0, content longer


class _Recorder(KnownContentMatcher):
    def __init__(self) -> None:
        super().__init__([])
        self.swaps: list[str] = []

    def set_banks(self, banks: Sequence[Bank]) -> None:
        self.swaps.append(banks[0].name if banks else "-")
        super().set_banks(banks)


def test_finding4_an_older_slower_reload_never_replaces_a_newer_one(tmp_path: Path) -> None:
    """Three reloads in quick succession, the first one slow: its banks never come back after the newest."""
    paths = {n: write(tmp_path, f"{n}.txt", f"{A}\n") for n in ("old", "mid", "new")}
    started = threading.Event()

    def slow_loader(banks: Sequence[BankConfig], previous: Sequence[Bank]) -> list[Bank]:
        if banks[0].name == "old":
            started.set()
            time.sleep(0.5)  # before the fix this load, in its own thread, finished after "new"
        return load_banks(banks, previous)

    matcher = _Recorder()
    results: list[ReloadResult] = []
    reloader = BankReloader([matcher], results.append, loader=slow_loader)
    reloader.request([BankConfig(name="old", path=paths["old"])])
    assert started.wait(5)
    reloader.request([BankConfig(name="mid", path=paths["mid"])])
    last = reloader.request([BankConfig(name="new", path=paths["new"])])
    assert reloader.wait(last, 10)
    time.sleep(0.6)  # anything still running would have swapped by now
    assert matcher.swaps == ["old", "new"]  # in order; "mid" was folded into "new"
    assert matcher.banks[0].name == "new"
    assert [(r.generation, r.ok, r.skipped) for r in results] == [(1, True, 0), (3, True, 1)]


def test_finding4_a_failed_reload_is_reported_with_its_reason(tmp_path: Path) -> None:
    good = write(tmp_path, "b.txt", f"{A}\n")
    matcher = _Recorder()
    results: list[ReloadResult] = []
    reloader = BankReloader([matcher], results.append)
    reloader.wait(reloader.request([BankConfig(name="b", path=good)]))
    good.write_text(f"{A}\nnot-a-hash\n")
    reloader.wait(reloader.request([BankConfig(name="b", path=good)]))
    assert [r.ok for r in results] == [True, False]
    assert "b.txt:2:" in results[1].detail and "stay in use" in results[1].detail
    assert len(matcher.banks[0]) == 1  # the loaded bank stays


def test_finding4_engine_logs_a_workers_reload_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from monitor.app.engine import Engine
    from monitor.config.models import build_config

    engine: Any = Engine(build_config({"state_dir": str(tmp_path / "state"), "workers": 0}), [])
    failed = ReloadResult(4, False, "bank reload failed, the loaded banks stay in use: x.csv:3: bad", worker=1)

    async def go() -> None:
        engine._loop = asyncio.get_running_loop()
        threading.Thread(target=engine.on_bank_reload, args=(failed,)).start()  # from the events thread
        for _ in range(100):
            if engine.bank_reloads:
                return
            await asyncio.sleep(0.01)

    try:
        with caplog.at_level(logging.ERROR, logger="monitor.app"):
            asyncio.run(go())
    finally:
        engine.state_lock.release()
    assert engine.bank_reloads["worker 1"] is failed
    assert any("bank reload 4 in worker 1 FAILED" in r.getMessage() and "x.csv:3" in r.getMessage()
               for r in caplog.records)
