"""The ban list survives restarts and concurrent edits, expires bans, and reports a broken file clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.common.errors import UserError
from monitor.servers.bans import Ban, BanList, BanListError

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "bans.json"


def test_missing_file_is_empty_and_created_on_first_add(path: Path) -> None:
    bans = BanList(path)
    assert bans.list() == []
    assert bans.is_banned("k", "1.2.3.4") is None
    assert not path.exists()
    ban = bans.add("key", "secret-key", reason="matched known content", author="alice", now=T0)
    assert path.exists()
    assert ban == Ban(
        kind="key", value="secret-key", reason="matched known content", author="alice", created_at=T0
    )
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert doc["bans"][0]["kind"] == "key"
    assert doc["bans"][0]["created_at"].startswith("2025-01-01T12:00:00")
    assert os.stat(path).st_mode & 0o777 == 0o600  # it lists stream keys


def test_roundtrip_across_instances(path: Path) -> None:
    bans = BanList(path)
    bans.add("key", "k1", reason="r1", author="a", now=T0)
    bans.add("addr", "10.0.0.0/8", reason="r2", author="b", now=T0 + timedelta(seconds=1))
    again = BanList(path)
    assert again.list(now=T0) == bans.list(now=T0)
    assert [b.value for b in again.list(now=T0)] == ["k1", "10.0.0.0/8"]


def test_key_and_addr_matching(path: Path) -> None:
    bans = BanList(path)
    bans.add("key", "abc", reason="key ban", now=T0)
    bans.add("addr", "192.0.2.7", reason="one host", now=T0)
    bans.add("addr", "2001:db8::/32", reason="v6 net", now=T0)
    bans.add("addr", "198.51.100.9/24", reason="v4 net", now=T0)  # host bits are dropped
    assert "198.51.100.0/24" in [b.value for b in bans.list(now=T0)]

    def hit(key: str | None, addr: str | None) -> str | None:
        ban = bans.is_banned(key, addr, now=T0)
        return ban.reason if ban else None

    assert hit("abc", None) == "key ban"
    assert hit("ABC", None) is None  # keys are exact
    assert hit("abc", "192.0.2.7") == "key ban"  # key bans win
    assert hit(None, "192.0.2.7") == "one host"
    assert hit(None, "::ffff:192.0.2.7") == "one host"  # dual-stack sockets report mapped addresses
    assert hit(None, "192.0.2.8") is None
    assert hit(None, "2001:db8:1::5") == "v6 net"
    assert hit(None, "198.51.100.200") == "v4 net"
    assert hit(None, "not-an-ip") is None
    assert hit(None, "") is None
    assert hit("", None) is None
    assert hit(None, None) is None


def test_add_replaces_and_remove(path: Path) -> None:
    bans = BanList(path)
    bans.add("key", "k", reason="first", now=T0)
    bans.add("key", "k", reason="second", now=T0)
    assert [b.reason for b in bans.list(now=T0)] == ["second"]
    assert bans.remove("key", "k") is True
    assert bans.remove("key", "k") is False
    bans.add("addr", "10.1.2.3", now=T0)
    assert bans.remove("addr", "10.1.2.3/32") is True  # normalised like add
    assert bans.remove("addr", "bogus") is False
    assert BanList(path).list(now=T0) == []


def test_expiry_ignores_and_prunes(path: Path) -> None:
    bans = BanList(path)
    bans.add("key", "temp", reason="1h", expires_at=T0 + timedelta(hours=1), now=T0)
    bans.add("key", "perm", reason="forever", now=T0)
    assert bans.is_banned("temp", None, now=T0 + timedelta(minutes=59)) is not None
    assert bans.is_banned("temp", None, now=T0 + timedelta(hours=1)) is None
    assert [b.value for b in BanList(path).list(now=T0)] == ["perm"]  # pruned on disk too


def test_invalid_input(path: Path) -> None:
    bans = BanList(path)
    with pytest.raises(ValueError, match="not an IP address"):
        bans.add("addr", "example.com", now=T0)
    with pytest.raises(ValueError, match="already be expired"):
        bans.add("key", "k", expires_at=T0 - timedelta(seconds=1), now=T0)
    with pytest.raises(ValueError):
        bans.add("key", "", now=T0)
    with pytest.raises(ValueError):
        bans.add("nope", "k", now=T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        bans.is_banned("k", None, now=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        bans.add("key", "k", expires_at=datetime(2030, 1, 1), now=T0)  # naive
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", '"bans" array'),
        (b'{"version": 7, "bans": []}', "unsupported version"),
        (b'{"bans": [{"kind": "key"}]}', r"entry 0: value: Field required"),
        (b'{"bans": [{"kind": "addr", "value": "x", "created_at": "2025-01-01T00:00:00Z"}]}', "entry 0"),
        (b'{"bans": [{"kind": "key", "value": "k", "created_at": "2025-01-01T00:00:00"}]}', "entry 0"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_corrupt_file_names_the_file(path: Path, content: bytes, match: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(BanListError, match=match) as info:
        BanList(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, UserError)


def test_empty_file_is_an_empty_list(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n")
    assert BanList(path).list() == []


def test_external_edit_is_picked_up_and_corruption_keeps_last_good(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bans = BanList(path)
    bans.add("key", "k1", reason="r", now=T0)
    other = BanList(path)  # e.g. the CLI in another process
    other.add("key", "k2", reason="r", now=T0)
    assert bans.is_banned("k2", None, now=T0) is not None
    path.write_text("{broken")
    assert bans.is_banned("k1", None, now=T0) is not None  # last good list still enforced
    assert any(str(path) in r.getMessage() for r in caplog.records)
    with pytest.raises(BanListError, match="not valid JSON"):
        bans.add("key", "k3", now=T0)  # never overwrite a file we cannot read
    assert path.read_text() == "{broken"


def test_atomic_write_leaves_no_temp_files_and_keeps_mode(path: Path) -> None:
    bans = BanList(path)
    bans.add("key", "a", now=T0)
    os.chmod(path, 0o640)
    bans.add("key", "b", now=T0)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["bans.json", "bans.json.lock"]


def test_write_failure_is_a_ban_list_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = tmp_path / "dir-in-the-way"
        target.mkdir()
        (target / "child").write_text("x")  # os.replace onto a non-empty directory fails even for root
        bans = BanList(tmp_path / "ok.json")
        bans._path = target  # point an existing list at an unwritable target
        with pytest.raises(BanListError, match="dir-in-the-way"):
            bans.add("key", "k", now=T0)
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        with pytest.raises(BanListError, match=str(ro)):
            BanList(ro / "bans.json").add("key", "k", now=T0)


def test_threads_do_not_lose_bans(path: Path) -> None:
    bans = BanList(path)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                bans.add("key", f"t{n}-{i}", now=T0)
                bans.is_banned(f"t{n}-{i}", "10.0.0.1", now=T0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(BanList(path).list(now=T0)) == 90


def test_processes_do_not_lose_bans(path: Path) -> None:
    script = (
        "import sys\nfrom datetime import UTC, datetime\nfrom monitor.servers.bans import BanList\n"
        "b = BanList(sys.argv[1])\n"
        "for i in range(20):\n    b.add('key', f'{sys.argv[2]}-{i}', now=datetime(2025, 1, 1, tzinfo=UTC))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), f"p{n}"], env=env) for n in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert len(BanList(path).list(now=T0)) == 60


# -- finding 2 (issue 19): terminate drops and records even when the ban cannot be written ------------------

import asyncio  # noqa: E402
import logging  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from monitor.servers.api import DropResult  # noqa: E402


@dataclass(frozen=True)
class _Origin:
    """What the hooks tell the engine about a publish (the hooks pass the URL's `key` arguments as keys)."""

    server: str
    app: str
    name: str
    publisher_addr: str | None
    keys: tuple[str, ...] = ()


class _FakeServer:
    def __init__(self) -> None:
        self.drops: list[tuple[str, str]] = []

    async def drop_publisher(self, app: str, name: str) -> DropResult:
        self.drops.append((app, name))
        return DropResult(True, "dropped 1 publisher", 1)


def _terminating_engine(tmp_path: Path, **terminate: Any) -> tuple[Any, _FakeServer]:
    from monitor.app.engine import Engine
    from monitor.config.models import build_config

    engine = Engine(build_config({"state_dir": str(tmp_path / "state"), "workers": 0, "terminate": terminate}), [])
    server = _FakeServer()
    engine.servers = {"nginx-rtmp": server}
    engine.origins["s1"] = _Origin("nginx-rtmp", "live", "cam-key", "127.0.0.1", ("url-key-1", "url-key-2"))
    return engine, server


def _terminate(engine: Any) -> tuple[DropResult, list[dict[str, Any]]]:
    result = asyncio.run(engine.terminate("s1", by="alice", reason="known content", incident_id="inc-1"))
    engine._evidence_writer.shutdown(wait=True)
    records = [r.data() for r in engine.evidence.records() if r.kind == "termination"]
    engine.evidence.close()
    engine.outbox.close()
    engine.state_lock.release()
    return result, records


def test_finding2_terminate_drops_and_records_when_the_ban_list_cannot_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, server = _terminating_engine(tmp_path)
    (tmp_path / "state" / "bans.json").mkdir()  # the ban list cannot be read or written
    with caplog.at_level(logging.ERROR, logger="monitor.app"):
        result, records = _terminate(engine)  # before the fix: BanListError, no drop, no record
    assert server.drops == [("live", "cam-key")]
    assert result.ok and "ban failed: " in result.detail and "bans.json" in result.detail
    assert len(records) == 1
    rec = records[0]
    assert rec["ok"] is True and rec["banned"] is False and "bans.json" in rec["ban_error"]
    assert any("ban NOT stored" in r.getMessage() for r in caplog.records)


def test_finding2_terminate_bans_the_key_arguments_too(tmp_path: Path) -> None:
    engine, server = _terminating_engine(tmp_path)
    result, records = _terminate(engine)
    assert result.ok and server.drops
    bans = BanList(tmp_path / "state" / "bans.json")
    assert sorted((b.kind, b.value) for b in bans.list()) == [
        ("key", "cam-key"), ("key", "url-key-1"), ("key", "url-key-2")]  # not the address: off by default
    assert all(b.author == "alice" and b.reason == "known content" for b in bans.list())
    assert records[0]["banned"] is True
    assert not any("url-key" in str(v) or "cam-key" in str(v) for v in records[0]["bans"])  # keys masked


def test_finding2_terminate_bans_the_address_when_configured(tmp_path: Path) -> None:
    engine, _ = _terminating_engine(tmp_path, ban_addr=True, ban_hours=2)
    result, records = _terminate(engine)
    bans = BanList(tmp_path / "state" / "bans.json")
    assert result.ok and bans.is_banned(None, "127.0.0.1") is not None
    assert all(b.expires_at is not None for b in bans.list())
    assert "addr" in records[0]["bans"]


def test_finding2_terminate_records_a_failing_server_api(tmp_path: Path) -> None:
    engine, server = _terminating_engine(tmp_path)

    async def broken(app: str, name: str) -> DropResult:
        raise ConnectionResetError("server went away")

    server.drop_publisher = broken  # type: ignore[method-assign]
    result, records = _terminate(engine)
    assert not result.ok and "server went away" in result.detail
    assert records[0]["ok"] is False and records[0]["banned"] is True  # banned before the failed drop


def test_add_many_stores_all_or_nothing(path: Path) -> None:
    bans = BanList(path)
    with pytest.raises(ValueError, match="not an IP address"):
        bans.add_many([("key", "k1"), ("addr", "not-an-address")], now=T0)
    assert bans.list(now=T0) == []
    assert len(bans.add_many([("key", "k1"), ("key", "k1"), ("addr", "10.0.0.1")], now=T0)) == 2


def test_finding2_an_unbannable_key_argument_does_not_cost_the_name_its_ban(tmp_path: Path) -> None:
    """A hostile publisher adds `?key=<5,000 characters>`: before, the whole ban failed on that one value."""
    engine, server = _terminating_engine(tmp_path)
    engine.origins["s1"] = _Origin("nginx-rtmp", "live", "cam-key", "127.0.0.1", ("k" * 5000, "url-key-1"))
    result, records = _terminate(engine)
    bans = BanList(tmp_path / "state" / "bans.json")
    assert sorted(b.value for b in bans.list()) == ["cam-key", "url-key-1"]
    assert result.ok and server.drops and "not banned: key#" in result.detail and "k" * 100 not in result.detail
    assert "at most 1024 characters" in records[0]["ban_error"]
