"""The outbox keeps every acknowledged alert across crashes, never twice, and fails cleanly when full."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.delivery.outbox import Outbox, OutboxError, OutboxMessage

REPO = Path(__file__).resolve().parents[2]


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
    from monitor.delivery.outbox import Outbox, OutboxMessage

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


# -- an outbox that cannot be written, seen from the publisher --------------------------------------------------


def full_outbox(path: Path) -> Outbox:
    """An outbox whose size cap is reached: every put fails with disk_full, as on a full disk."""
    box = Outbox(path, max_bytes=32 * 4096)
    i = 0
    for size in (3000, 300, 30):  # down to the last bytes of the last page
        while True:
            try:
                box.put(msg(10_000 + i, payload=f"m{10_000 + i}|".encode().ljust(size, b".")))
            except OutboxError as exc:
                assert exc.disk_full
                break
            i += 1
    return box


def make_room(box: Outbox) -> None:
    """What freeing disk space does for the capped outbox."""
    assert box._conn is not None
    box._conn.execute("PRAGMA max_page_count=1000000")


def test_check_writable_probes_without_leaving_a_row(tmp_path: Path) -> None:
    box = full_outbox(tmp_path / "o.db")
    before = box.pending(limit=10_000)
    with pytest.raises(OutboxError) as err:
        box.check_writable()
    assert err.value.disk_full and err.value.operation == "check_writable"
    make_room(box)
    box.check_writable()
    assert box.pending(limit=10_000) == before
    assert box._conn is not None
    assert box._conn.execute("SELECT count(*) FROM outbox WHERE topic = 'probe'").fetchone()[0] == 0
    box.close()


def _publisher(box: Outbox | None, port: int = 1, memory_limit: int = 10_000) -> Any:
    from monitor.config.models import BrokerConfig
    from monitor.delivery.mqtt import MqttPublisher

    return MqttPublisher(BrokerConfig(url=f"mqtt://127.0.0.1:{port}", protocol="3.1.1"), "n", box,
                         memory_limit=memory_limit)


def test_publisher_holds_messages_the_full_outbox_refuses_and_stores_them_once_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = full_outbox(tmp_path / "o.db")
    stored_before = box.depth()
    pub = _publisher(box)
    pub.send_durable("a1", "t/n/alerts/s", {"n": 1})
    pub.send_durable("a2", "t/n/alerts/s", {"n": 2})
    assert pub.held == 2 and pub.held_total == 2
    status = pub.delivery_status()
    assert status["outbox_writable"] is False and "disk is full" in status["outbox_error"]
    assert status["held_in_memory"] == 2 and status["outbox_depth"] == stored_before
    assert pub.durable_pending == stored_before + 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(box.path) in errors[0] and "disk full?" in errors[0]  # said once, with where
    pub._recover()  # still full: nothing changes
    assert pub.held == 2 and pub.outbox_error is not None
    make_room(box)
    pub._recover()
    assert pub.held == 0 and pub.outbox_error is None
    assert [m.msg_id for m in box.pending(limit=10_000)][-2:] == ["a1", "a2"]
    assert any("can be written again" in r.getMessage() for r in caplog.records)
    pub.send_durable("a3", "t/n/alerts/s", {"n": 3})  # stored as usual again
    assert pub.held == 0 and box.depth() == stored_before + 3
    box.close()


def test_publisher_memory_limit_drops_incident_updates_before_alerts(tmp_path: Path) -> None:
    box = full_outbox(tmp_path / "o.db")
    pub = _publisher(box, memory_limit=3)
    pub.send_durable("i1", "t/n/incidents/x", {"s": "open"}, retain=True)
    pub.send_durable("a1", "t/n/alerts/s", {"n": 1})
    pub.send_durable("a2", "t/n/alerts/s", {"n": 2})
    pub.send_durable("a3", "t/n/alerts/s", {"n": 3})  # full: the incident update goes
    assert [m.msg_id for m in pub._held] == ["a1", "a2", "a3"] and pub.dropped == 1
    pub.send_durable("a4", "t/n/alerts/s", {"n": 4})  # only alerts held: the new one is refused
    assert [m.msg_id for m in pub._held] == ["a1", "a2", "a3"] and pub.dropped == 2
    box.close()


def test_a_long_backlog_is_stored_in_batches_in_order(tmp_path: Path) -> None:
    from monitor.delivery.mqtt import STORE_BATCH

    box = full_outbox(tmp_path / "o.db")
    before = box.depth()
    pub = _publisher(box)
    n = 2 * STORE_BATCH + 7
    for i in range(n):
        pub.send_durable(f"b{i}", "t/n/alerts/s", {"n": i})
    assert pub.held == n
    make_room(box)
    rounds = 1
    while pub._recover():  # one batch per call, so the event loop runs in between
        rounds += 1
    assert rounds == 3 and pub.held == 0 and pub.outbox_error is None
    assert [m.msg_id for m in box.pending(limit=10_000)][before:] == [f"b{i}" for i in range(n)]
    box.close()


async def _deliver_with_full_outbox(box: Outbox) -> tuple[list[bytes], Any]:
    import aiomqtt

    from test_streams.broker import EmbeddedBroker

    got: list[bytes] = []
    async with EmbeddedBroker() as broker, aiomqtt.Client("127.0.0.1", broker.port,
                                                          protocol=aiomqtt.ProtocolVersion.V311) as sub:
        await sub.subscribe("livesafe/alerts/#", qos=1)

        async def collect() -> None:
            async for m in sub.messages:
                assert isinstance(m.payload, bytes)
                got.append(m.payload)

        collector = asyncio.create_task(collect())
        # The broker acknowledges, but the outbox cannot record that: the rows stay pending on disk.
        real_mark_sent = box.mark_sent
        failing = True

        def mark_sent(ids: Iterable[str], *, now: float | None = None) -> int:
            if failing:
                raise OutboxError(box.path, "mark_sent", "database or disk is full")
            return real_mark_sent(ids, now=now)

        box.mark_sent = mark_sent  # type: ignore[method-assign]
        pub = _publisher(box, broker.port)
        stop = asyncio.Event()
        await pub.start()
        task = asyncio.create_task(pub.run(stop))
        await asyncio.wait_for(pub.connected.wait(), 10)
        pub.send_durable("held-1", "livesafe/alerts/s1", {"id": "held-1"})  # not storable: held, sent directly
        await asyncio.sleep(3.0)  # every pending row and held-1 go out; a re-send would show up now too
        assert pub.held == 0 and pub.outbox_error is not None and pub.durable_pending == 0
        failing = False
        make_room(box)
        for _ in range(50):  # retried every RECOVERY_INTERVAL_S
            if pub.outbox_error is None:
                break
            await asyncio.sleep(0.1)
        assert await pub.flush(2.0)
        stop.set()
        await asyncio.wait_for(task, 10)
        collector.cancel()
    return got, pub


def test_publisher_delivers_directly_while_the_outbox_is_full_and_never_twice(tmp_path: Path) -> None:
    box = full_outbox(tmp_path / "o.db")
    stored = [m.msg_id for m in box.pending(limit=10_000)]
    got, pub = asyncio.run(_deliver_with_full_outbox(box))
    received = [json.loads(p)["id"] if p.startswith(b"{") else p.split(b"|")[0].decode() for p in got]
    assert sorted(received) == sorted([*stored, "held-1"])  # each once
    assert pub.outbox_error is None and pub.held == 0
    assert box.depth() == 0  # what was delivered meanwhile is marked sent once the outbox can be written
    box.close()
