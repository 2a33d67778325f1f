"""The one SQLite state-file set-up (monitor/common/sqlite.py): identity, WAL, private modes, refusals."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from monitor.common.sqlite import (
    DamagedFile,
    FileFormat,
    Identity,
    WrongFile,
    connect_readonly,
    identify,
    open_state_file,
)

FMT = FileFormat(0x54455354, 2, ("CREATE TABLE t (x INTEGER)", "CREATE INDEX t_x ON t (x)"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _other_file(path: Path, *, app_id: int = 0, version: int = 0) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (y)")
    conn.execute(f"PRAGMA application_id={app_id}")
    conn.execute(f"PRAGMA user_version={version}")
    conn.commit()
    conn.close()


def test_a_new_file_is_private_wal_full_and_marked(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    old = os.umask(0o022)
    try:
        conn = open_state_file(path, FMT)
    finally:
        os.umask(old)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA application_id").fetchone()[0] == FMT.application_id
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FMT.schema_version
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")}
        assert names == {"t", "t_x"}
        assert identify(conn, FMT).identity is Identity.OURS
        assert conn.isolation_level is None  # autocommit: callers open their own transactions
        conn.execute("INSERT INTO t VALUES (1)")
        for p in tmp_path.iterdir():
            assert _mode(p) == 0o600, p.name  # the -wal and -shm files too
    finally:
        conn.close()
    again = open_state_file(path, FMT)  # reopening keeps the rows and runs no schema twice
    try:
        assert again.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        again.close()


def test_a_file_of_another_kind_is_refused_unaltered(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    _other_file(path)
    with pytest.raises(WrongFile) as info:
        open_state_file(path, FMT)
    assert info.value.found.identity is Identity.FOREIGN
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_schema")] == ["mine"]
    finally:
        conn.close()


def test_another_schema_version_is_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _other_file(path, app_id=FMT.application_id, version=1)
    with pytest.raises(WrongFile) as info:
        open_state_file(path, FMT)
    found = info.value.found
    assert (found.identity, found.application_id, found.user_version) == (Identity.OTHER_VERSION, FMT.application_id, 1)


def test_an_empty_file_is_new_and_a_marked_one_without_tables_is_foreign(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    conn = sqlite3.connect(empty)
    try:
        assert identify(conn, FMT).identity is Identity.EMPTY
        conn.execute("PRAGMA user_version=7")
        assert identify(conn, FMT).identity is Identity.FOREIGN
    finally:
        conn.close()


def test_quick_check_refuses_a_damaged_file_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    conn = open_state_file(path, FMT)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(20000)])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    with open(path, "r+b") as fh:  # zero part of a b-tree page's cell pointers; the file header stays intact
        fh.seek(page_size * 3 + 8)
        fh.write(b"\0" * 16)
    open_state_file(path, FMT).close()  # not asked: the damage shows only when that page is read
    with pytest.raises(DamagedFile) as info:
        open_state_file(path, FMT, quick_check=True)
    assert info.value.problems and info.value.problems != ["ok"]


def test_max_bytes_caps_the_file(tmp_path: Path) -> None:
    conn = open_state_file(tmp_path / "c.sqlite", FMT, max_bytes=64 * 1024)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        assert conn.execute("PRAGMA max_page_count").fetchone()[0] == 64 * 1024 // page_size
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("INSERT INTO t VALUES (zeroblob(200000))")
        assert info.value.sqlite_errorname == "SQLITE_FULL"
    finally:
        conn.close()


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.sqlite"
    target.touch()
    (tmp_path / "link.sqlite").symlink_to(target)
    with pytest.raises(OSError):
        open_state_file(tmp_path / "link.sqlite", FMT)


def test_readonly_connection_reads_and_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    conn = open_state_file(path, FMT)
    conn.execute("INSERT INTO t VALUES (5)")
    conn.close()
    ro = connect_readonly(path)
    try:
        assert ro.execute("SELECT x FROM t").fetchall() == [(5,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.execute("INSERT INTO t VALUES (6)")
    finally:
        ro.close()
    with pytest.raises(sqlite3.OperationalError):
        connect_readonly(tmp_path / "missing.sqlite").execute("SELECT 1 FROM t")
    assert not (tmp_path / "missing.sqlite").exists()
