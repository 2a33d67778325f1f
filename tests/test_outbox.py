"""The outbox keeps every acknowledged alert across crashes, never twice, and fails cleanly when full."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.outbox import Outbox, OutboxError, OutboxMessage

REPO = Path(__file__).resolve().parents[1]


def msg(i: int, *, created_at: float | None = None, payload: bytes | None = None) -> OutboxMessage:
    return OutboxMessage(
        msg_id=f"m{i}",
        topic=f"livesafe/alerts/s{i % 3}",
        payload=payload if payload is not None else f"payload {i}".encode(),
        qos=1,
        retain=False,
        created_at=1_000.0 + i if created_at is None else created_at,
        user_properties=(("msg_id", f"m{i}"), ("stream", f"s{i % 3}")),
    )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as ob:
        yield ob


def test_put_pending_roundtrip(box: Outbox) -> None:
    m = msg(1, payload=b"\x00\xffbinary")
    assert box.put(m) is True
    assert box.pending() == [m]
    assert box.depth() == 1


def test_pending_oldest_first_and_limit(box: Outbox) -> None:
    for i, created in [(1, 30.0), (2, 10.0), (3, 20.0), (4, 10.0)]:
        box.put(msg(i, created_at=created))
    assert [m.msg_id for m in box.pending()] == ["m2", "m4", "m3", "m1"]  # ties keep put order
    assert [m.msg_id for m in box.pending(limit=2)] == ["m2", "m4"]


def test_put_is_idempotent_on_msg_id(box: Outbox) -> None:
    assert box.put(msg(1)) is True
    assert box.put(msg(1)) is False
    assert box.put(msg(1, payload=b"different")) is False  # first one wins
    assert [m.payload for m in box.pending()] == [b"payload 1"]
    box.mark_sent(["m1"])
    assert box.put(msg(1)) is False  # sent but not purged: still deduped
    assert box.depth() == 0


def test_mark_sent_attempt_depth_age(box: Outbox) -> None:
    for i in range(5):
        box.put(msg(i))
    assert box.oldest_age_s(now=1_010.0) == pytest.approx(10.0)
    assert box.oldest_age_s(now=0.0) == 0.0  # clock behind created_at: never negative
    assert box.mark_sent(["m0", "m2", "nope"]) == 2
    assert box.mark_sent(["m0"]) == 0
    box.mark_attempt("m1")
    box.mark_attempt("m1")
    box.mark_attempt("unknown")
    pending = box.pending()
    assert [m.msg_id for m in pending] == ["m1", "m3", "m4"]
    assert pending[0].attempts == 2
    assert box.depth() == 3
    assert box.oldest_age_s(now=1_010.0) == pytest.approx(9.0)
    box.mark_sent(["m1", "m3", "m4"])
    assert box.depth() == 0
    assert box.oldest_age_s() is None


def test_purge_sent_ends_dedupe_window(box: Outbox) -> None:
    box.put(msg(1))
    box.put(msg(2))
    box.mark_sent(["m1"], now=100.0)
    assert box.purge_sent(60.0, now=150.0) == 0  # sent 50 s ago: kept
    assert box.purge_sent(60.0, now=200.0) == 1
    assert box.put(msg(1)) is True  # window over: accepted again
    assert box.depth() == 2  # the pending one was never purged


def test_invalid_messages_rejected(box: Outbox) -> None:
    with pytest.raises(ValueError, match="qos"):
        box.put(OutboxMessage("a", "t", b"", 3, False, 0.0))
    with pytest.raises(ValueError, match="topic"):
        box.put(OutboxMessage("a", "t/#", b"", 1, False, 0.0))
    with pytest.raises(ValueError, match="msg_id"):
        box.put(OutboxMessage("", "t", b"", 1, False, 0.0))
    assert box.depth() == 0


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        for i in range(3):
            box.put(msg(i))
        box.mark_sent(["m0"])
        box.mark_attempt("m1")
    with Outbox(path) as box:
        assert [(m.msg_id, m.attempts) for m in box.pending()] == [("m1", 1), ("m2", 0)]
        assert box.pending()[1] == msg(2)
        assert box.put(msg(0)) is False  # the sent one is still remembered


def test_wal_and_full_sync(box: Outbox, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "outbox.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert box._conn is not None
    assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_closed_outbox_raises(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.depth()


def test_refuses_files_that_are_not_an_outbox(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=r"junk\.db") as err:
        Outbox(junk)
    assert err.value.path == junk
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE records (x)")
    conn.commit()
    conn.close()
    with pytest.raises(OutboxError, match="not an outbox"):
        Outbox(other)
    conn = sqlite3.connect(other)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left unaltered
    finally:
        conn.close()


def test_disk_full_raises_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, max_bytes=64 * 4096)
    stored: list[OutboxMessage] = []
    with pytest.raises(OutboxError) as err:
        for i in range(1000):
            m = msg(i, payload=bytes([i % 256]) * 3000)
            box.put(m)
            stored.append(m)
    assert err.value.disk_full
    assert err.value.path == path
    assert err.value.operation == "put"
    assert "full" in str(err.value) and str(path) in str(err.value)
    assert 10 < len(stored) < 1000
    # The outbox keeps working: reads, acks and purges go on; earlier rows are intact.
    assert box.pending(limit=10_000) == stored
    with pytest.raises(OutboxError):
        box.put(msg(5000, payload=b"x" * 3000))
    box.mark_sent([m.msg_id for m in stored[:20]], now=1.0)
    assert box.purge_sent(0.0, now=2.0) == 20
    assert box.put(msg(5000, payload=b"x" * 3000)) is True  # freed pages are reused
    box.close()
    with Outbox(path) as again:
        assert again.pending(limit=10_000) == [*stored[20:], msg(5000, payload=b"x" * 3000)]
        assert again._conn is not None
        assert again._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_threads_share_one_outbox(box: Outbox) -> None:
    def worker(t: int) -> None:
        for i in range(25):
            box.put(msg(t * 1000 + i))
            box.put(msg(t * 1000 + i))  # duplicate from a "re-detection"

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert box.depth() == 100
    assert len({m.msg_id for m in box.pending(limit=1000)}) == 100


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from monitor.outbox import Outbox, OutboxMessage

    box = Outbox(Path(sys.argv[1]))
    start = int(sys.argv[2])
    for i in range(start, start + 100000):
        m = OutboxMessage(f"m{i}", "t/x", f"p{i}".encode() * 50, 1, False, float(i), 0, (("k", str(i)),))
        box.put(m)
        print(f"put m{i}", flush=True)
        if i % 3 == 0:
            box.mark_sent([f"m{i}"])
            print(f"sent m{i}", flush=True)
    """
)


def test_sigkill_keeps_every_acknowledged_put(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    rng = random.Random()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    acked: set[str] = set()
    sent: set[str] = set()
    start = 0
    for round_ in range(3):  # each round restarts on the same file, as a restarted monitor would
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        kill_after = rng.randint(5, 120)
        deadline = time.monotonic() + 20
        for seen, line in enumerate(proc.stdout, start=1):
            verb, msg_id = line.split()
            (acked if verb == "put" else sent).add(msg_id)
            if seen >= kill_after or time.monotonic() > deadline:
                break
        # Killed while it goes on writing: somewhere inside (or between) put/mark_sent transactions.
        time.sleep(rng.random() * 0.02)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # lines it printed after we stopped reading were acknowledged too
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        for line in rest.splitlines():
            verb, msg_id = line.split()
            (acked if verb == "put" else sent).add(msg_id)
        start += 100000

        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute("SELECT msg_id, payload, sent_at FROM outbox").fetchall()
        finally:
            conn.close()
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids)), "a message was stored twice"
        assert acked <= set(ids), f"acknowledged but lost: {sorted(acked - set(ids))[:5]}"
        assert len(set(ids) - acked) <= round_ + 1  # at most the put in flight at each kill
        for msg_id, payload, sent_at in rows:
            assert payload == f"p{msg_id[1:]}".encode() * 50
            if msg_id in sent:
                assert sent_at is not None, f"{msg_id} acknowledged as sent but pending again"
    with Outbox(path) as box:
        never_marked = {i for i in acked if int(i[1:]) % 3 != 0}  # a mark_sent may commit unprinted
        assert {m.msg_id for m in box.pending(limit=100_000)} >= never_marked
        assert not sent & {m.msg_id for m in box.pending(limit=100_000)}
        assert box.put(OutboxMessage(sorted(acked)[0], "t/x", b"", 1, False, 0.0)) is False
