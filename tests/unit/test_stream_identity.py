"""Issue 12, stream identities nobody can forge: ids injective in (server, app, name) and bounded, the stream
name (often the publisher's key) never in ids, logs or shown URLs, an origin bound to the stream it registered,
fail-closed publishes, and a discovery that survives a bad entry. The real-component test is in
tests/integration/test_e2e_hooks.py (test_finding_names_collide_nowhere_on_real_nginx)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.common.errors import UserError
from monitor.common.urls import redact_url
from monitor.config.models import STREAM_ID_RE, StreamConfig
from monitor.servers.api import ServerAPIError, ServerStream
from monitor.servers.bans import BanList
from monitor.servers.discovery import DiscoveredServer, Discovery
from monitor.servers.hooks import (
    HOOKS_KEY,
    RUNNER_KWARGS,
    HookSettings,
    Origin,
    OriginTable,
    StreamNamer,
    StreamRefused,
    make_hook_app,
    pull_url,
)

SECRET = "hook-secret-0123456789abcdef"
TOKEN = {"token": SECRET}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NAMER = StreamNamer(b"identity tests: a fixed 32B key")
LONG = "k" * 150
SPECIAL = ["a+b", "h#i", "p%20q", "..", "café-ß-日本", "x_y", "x-y", "tab\there", "a&b=c", "...", "-"]


def nginx_form(call: str, app: str, name: str, clientid: str = "7", addr: str = "198.51.100.3") -> dict[str, str]:
    return {"app": app, "flashver": "FMLE/3.0", "tcurl": f"rtmp://127.0.0.1/{app}", "addr": addr,
            "clientid": clientid, "call": call, "name": name, "type": "live"}


class OriginRegistry:
    """The engine's registration rules (OriginTable) without the engine: what the hooks talk to."""

    def __init__(self, max_streams: int | None = None, max_per_addr: int | None = None) -> None:
        self.origins = OriginTable(max_streams, max_per_addr)
        self.urls: dict[str, str] = {}

    def add_stream(self, stream_id: str, url: str, *, server: str, app: str, name: str,
                   publisher_addr: str | None, client_id: str | None = None, keys: tuple[str, ...] = ()) -> None:
        StreamConfig(id=stream_id, url=url)  # what the engine does: the config model must accept the id
        self.origins.admit(stream_id, Origin(server, app, name, publisher_addr, client_id, keys=keys),
                           replaceable=stream_id not in self.urls)
        self.urls[stream_id] = url

    def remove_stream(self, stream_id: str, **origin: Any) -> None:
        self.origins.release(stream_id, **origin)
        self.urls.pop(stream_id, None)
        self.origins.pop(stream_id, None)


Scenario = Callable[[TestClient[web.Request, web.Application]], Awaitable[None]]


def run_app(registry: Any, bans: BanList, scenario: Scenario, **kw: Any) -> None:
    async def main() -> None:
        app = make_hook_app(registry, bans, HookSettings(secret=SECRET, **kw), namer=NAMER)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**RUNNER_KWARGS)
        async with TestClient(server) as client:
            await scenario(client)

    asyncio.run(main())


@pytest.fixture
def bans(tmp_path: Path) -> BanList:
    return BanList(tmp_path / "bans.json")


# -- the ids -------------------------------------------------------------------------------------------------


def test_finding_colliding_names_get_distinct_ids() -> None:
    """`live-x/y` and `live/x-y` (and `x y`, `x_y`) were one id: now each triple has its own."""
    triples = [("nginx-rtmp", "live-x", "y"), ("nginx-rtmp", "live", "x-y"), ("nginx-rtmp", "live", "x y"),
               ("nginx-rtmp", "live", "x_y"), ("nginx-rtmp", "live", "x/y"), ("srs", "live", "x-y"),
               ("mediamtx", "live", "x-y"), ("nginx-rtmp", "", "live-x-y"), ("nginx-rtmp", "live-x-y", "")]
    ids = [NAMER.stream_id(*t) for t in triples]
    assert len(set(ids)) == len(ids)
    assert all(STREAM_ID_RE.match(i) for i in ids)


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.sampled_from(["nginx-rtmp", "srs", "mediamtx"]), st.text(max_size=40), st.text(max_size=200)),
       st.tuples(st.sampled_from(["nginx-rtmp", "srs", "mediamtx"]), st.text(max_size=40), st.text(max_size=200)))
def test_ids_are_injective_and_always_valid(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    ia, ib = NAMER.stream_id(*a), NAMER.stream_id(*b)
    assert (ia == ib) == (a == b)
    for sid in (ia, ib):
        assert STREAM_ID_RE.match(sid) and len(sid) <= 128
        StreamConfig(id=sid, url="rtmp://127.0.0.1/x")  # the config model accepts every id


def test_finding_long_names_fit_the_config_model() -> None:
    """A name over ~113 characters gave an id the config model refused: the publish was allowed, never
    watched. Now 150, 1000 and 10,000 character names (and long apps) all give ids within 1-128."""
    for app, name in (("live", LONG), ("live", "n" * 1000), ("a" * 500, "n" * 10_000), ("live", LONG + "x")):
        sid = NAMER.stream_id("nginx-rtmp", app, name)
        assert STREAM_ID_RE.match(sid) and len(sid) <= 78, sid
    assert NAMER.stream_id("nginx-rtmp", "live", LONG) != NAMER.stream_id("nginx-rtmp", "live", LONG + "x")


def test_the_name_never_appears_in_the_id() -> None:
    key = "sk_live_8f3a9c2e71b4d605"
    sid = NAMER.stream_id("nginx-rtmp", "live", key)
    assert sid == "nginx-rtmp-live-sk_-" + NAMER.digest("nginx-rtmp", "live", key)
    assert key[3:] not in sid
    for name in ("cam1", "ab", "x", ""):
        assert len(NAMER.stream_id("srs", "live", name).split("-")[2]) <= len(name) // 4
    assert NAMER.redacted_name("srs", "live", key) == "sk_***#" + NAMER.digest("srs", "live", key)
    assert key not in NAMER.mask(key) and NAMER.mask(key) == NAMER.mask(key)


def test_ids_depend_on_the_key(tmp_path: Path) -> None:
    """Without the key nobody can compute an id, let alone a colliding one."""
    other = StreamNamer(b"another key of at least 16 bytes")
    assert NAMER.stream_id("srs", "live", "cam") != other.stream_id("srs", "live", "cam")
    with pytest.raises(ValueError):
        StreamNamer(b"short")


def test_key_file_made_once_0600_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "stream-ids.key"
    first = StreamNamer.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert StreamNamer.load(path).stream_id("srs", "a", "b") == first.stream_id("srs", "a", "b")
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary file left
    path.chmod(0o644)
    StreamNamer.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "readable by others" in caplog.text
    path.write_text("not hex\n")
    with pytest.raises(UserError, match="not a stream id key"):
        StreamNamer.load(path)
    link = tmp_path / "link.key"
    os.symlink(tmp_path / "elsewhere.key", link)
    with pytest.raises(OSError):
        StreamNamer.load(link)  # never follows a planted link


def test_shown_urls_hide_the_name() -> None:
    """The pull URL must carry the raw name (that is how the monitor reads the stream), never shown."""
    url = pull_url("rtmp://127.0.0.1:1935/{app}/{name}", "live", "sk_live_8f3a9c2e", "live/sk_live_8f3a9c2e", "s")
    assert url == "rtmp://127.0.0.1:1935/live/sk_live_8f3a9c2e"
    assert redact_url(url) == "rtmp://127.0.0.1:1935/live/sk_***"
    for name in ("a b", "a/b", "q?x", "nul\x00"):
        with pytest.raises(StreamRefused) as err:
            pull_url("rtmp://h/{app}/{name}", "live", name, "live/" + name, "s")
        assert err.value.reason == "unpullable"
    assert pull_url("http://h/hls/{name}.m3u8", "live", "a b/c", "", "s") == "http://h/hls/a%20b%2Fc.m3u8"


# -- origins ---------------------------------------------------------------------------------------------------


def test_origin_table_binding_and_caps() -> None:
    table = OriginTable(max_streams=3, max_streams_per_addr=2)
    real = Origin("nginx-rtmp", "live", "cam", "198.51.100.3", "7")
    assert table.admit("s1", real, replaceable=False) == "new"
    decoy = Origin("nginx-rtmp", "live", "cam", "203.0.113.9", "8")
    with pytest.raises(StreamRefused) as err:
        table.admit("s1", decoy, replaceable=False)
    assert err.value.reason == "conflict" and table["s1"] == real
    # MediaMTX: the gate knew the address, runOnReady knows the source id: one publisher, details merged.
    assert table.admit("s1", Origin("nginx-rtmp", "live", "cam", None, None), replaceable=False) == "same"
    with pytest.raises(StreamRefused):
        table.release("s1", publisher_addr="203.0.113.9", client_id="8")
    with pytest.raises(StreamRefused):
        table.release("s1", client_id="8")
    assert table.release("s1", client_id="7", publisher_addr="198.51.100.3") == real
    assert table.release("s1") == real and table.release("unknown") is None
    assert table.admit("s1", decoy, replaceable=True) == "replaced" and table["s1"] == decoy

    table.admit("s2", Origin("srs", "live", "a", "203.0.113.9"), replaceable=False)
    with pytest.raises(StreamRefused) as err:
        table.admit("s3", Origin("srs", "live", "b", "203.0.113.9"), replaceable=False)
    assert err.value.reason == "addr_cap"
    table.admit("s3", Origin("srs", "live", "b", "192.0.2.1"), replaceable=False)
    with pytest.raises(StreamRefused) as err:
        table.admit("s4", Origin("srs", "live", "c", "192.0.2.2"), replaceable=False)
    assert err.value.reason == "cap"


def test_finding_decoy_publish_and_publish_done_leave_the_real_stream_alone(
    bans: BanList, caplog: pytest.LogCaptureFixture
) -> None:
    """A decoy with a colliding name (old ids) or even the same name: its publish does not take the origin over
    and its publish_done does not end the real stream's monitoring."""
    caplog.set_level(logging.INFO)
    reg = OriginRegistry()
    real = NAMER.stream_id("nginx-rtmp", "live", "x-y")

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        async def post(form: dict[str, str]) -> int:
            r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=form, headers=FORM)
            return r.status

        assert await post(nginx_form("publish", "live", "x-y", "7")) == 200
        assert await post(nginx_form("publish", "live-x", "y", "9", "203.0.113.9")) == 200  # its own id
        assert await post(nginx_form("publish_done", "live-x", "y", "9", "203.0.113.9")) == 200
        assert real in reg.urls
        # The same name from another client (nginx refuses it as already publishing, after asking us):
        assert await post(nginx_form("publish", "live", "x-y", "11", "203.0.113.9")) == 409
        assert await post(nginx_form("publish_done", "live", "x-y", "11", "203.0.113.9")) == 200
        assert real in reg.urls and reg.origins[real].client_id == "7"
        assert reg.origins[real].publisher_addr == "198.51.100.3"
        counts = client.server.app[HOOKS_KEY].outcomes
        assert counts[("refused", "conflict")] == 1 and counts[("unpublish_ignored", "mismatch")] == 1
        assert await post(nginx_form("publish_done", "live", "x-y", "7")) == 200  # the real one ends
        assert real not in reg.urls

    run_app(reg, bans, scenario)
    assert "x-y" not in caplog.text.replace(real, "")


def test_finding_every_name_watched_under_its_own_id_or_refused(bans: BanList) -> None:
    """150 characters, `/ + # % ..`, spaces, non-ASCII: watched under distinct ids or refused with a 4xx, never
    allowed and unwatched."""
    reg = OriginRegistry()
    names = [LONG, LONG + "x", *SPECIAL, "a/b", "x y", "sp ace"]
    statuses: dict[str, int] = {}

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        for i, name in enumerate(names):
            r = await client.post("/hooks/nginx-rtmp", params=TOKEN, headers=FORM,
                                  data=nginx_form("publish", "live", name, str(i)))
            statuses[name] = r.status

    run_app(reg, bans, scenario)
    for name, status in statuses.items():
        sid = NAMER.stream_id("nginx-rtmp", "live", name)
        assert (status == 200) == (sid in reg.urls), name
        assert status in (200, 403), (name, status)
    assert {n for n, s in statuses.items() if s == 403} == {"a/b", "x y", "sp ace", "tab\there"}
    assert len(reg.urls) == len(names) - 4


@pytest.mark.parametrize("fail_open", [False, True])
def test_finding_unwatchable_publishes_fail_closed(bans: BanList, fail_open: bool) -> None:
    """Caps reached, registry trouble: 4xx by default, allowed with fail_open, always logged and counted."""
    reg = OriginRegistry(max_streams=2, max_per_addr=1)
    counted: list[tuple[str, str]] = []

    async def main() -> None:
        app = make_hook_app(reg, bans, HookSettings(secret=SECRET, fail_open=fail_open), namer=NAMER,
                            count=lambda o, r: counted.append((o, r)))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**RUNNER_KWARGS)
        async with TestClient(server) as client:
            statuses = []
            for i, addr in enumerate(["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.3"]):
                r = await client.post("/hooks/nginx-rtmp", params=TOKEN, headers=FORM,
                                      data=nginx_form("publish", "live", f"cam{i}", str(i), addr))
                statuses.append(r.status)
        ok = 200 if fail_open else 403
        assert statuses == [200, ok, 200, ok]

    asyncio.run(main())
    outcome = "allowed_unwatched" if fail_open else "refused"
    assert counted == [("watched", ""), (outcome, "addr_cap"), ("watched", ""), (outcome, "cap")]
    assert len(reg.urls) == 2


# -- the engine --------------------------------------------------------------------------------------------


class _FakeSupervisor:
    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self.removed: list[str] = []

    def add_stream(self, stream: StreamConfig) -> None:
        self.urls[stream.id] = redact_url(stream.url)

    def remove_stream(self, stream_id: str) -> None:
        self.removed.append(stream_id)
        self.urls.pop(stream_id, None)

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self.urls

    def dead_streams(self) -> list[str]:
        return []


def test_engine_binds_origins_and_records_no_raw_name(tmp_path: Path) -> None:
    from monitor.app.engine import Engine
    from monitor.config.models import build_config

    engine = Engine(build_config({"state_dir": str(tmp_path / "state"), "workers": 0,
                                  "hooks": {"max_streams": 2}}), [])
    try:
        assert stat.S_IMODE((tmp_path / "state" / "stream-ids.key").stat().st_mode) == 0o600
        fake = _FakeSupervisor()
        engine.supervisor = fake  # type: ignore[assignment]
        key = "sk_live_0123456789abcdef"
        sid = engine.namer.stream_id("nginx-rtmp", "live", key)
        url = f"rtmp://127.0.0.1:1935/live/{key}"
        engine.add_stream(sid, url, server="nginx-rtmp", app="live", name=key, publisher_addr="198.51.100.3",
                          client_id="7", keys=("url-key-1",))
        assert engine.origins[sid].keys == ("url-key-1",)  # terminate bans them with the name
        with pytest.raises(StreamRefused):  # another publisher while the stream is watched
            engine.add_stream(sid, url, server="nginx-rtmp", app="live", name=key, publisher_addr="203.0.113.9",
                              client_id="8")
        with pytest.raises(StreamRefused):  # its publish_done
            engine.remove_stream(sid, server="nginx-rtmp", app="live", name=key, publisher_addr="203.0.113.9",
                                 client_id="8")
        assert fake.has_stream(sid) and engine.origins[sid].client_id == "7"
        assert key not in fake.urls[sid]
        engine.add_stream("other", "rtmp://h/live/b", server="srs", app="live", name="b", publisher_addr=None)
        with pytest.raises(StreamRefused) as err:
            engine.add_stream("third", "rtmp://h/live/c", server="srs", app="live", name="c", publisher_addr=None)
        assert err.value.reason == "cap"
        engine.remove_stream(sid, server="nginx-rtmp", app="live", name=key, publisher_addr="198.51.100.3",
                             client_id="7")
        assert fake.removed == [sid]
        engine._evidence_writer.shutdown(wait=True)
        assert engine.evidence is not None
        notes = [r.data() for r in engine.evidence.records() if r.kind == "note"]
        assert notes and notes[0]["name"] == engine.namer.redacted_name("nginx-rtmp", "live", key)
        assert notes[0]["publisher_addr"] == "198.51.100.3" and notes[0]["client_id"] == "7"
        assert key not in str(notes)
    finally:
        engine._evidence_writer.shutdown(wait=True)
        if engine.evidence is not None:
            engine.evidence.close()
        engine.outbox.close()
        lock = getattr(engine, "state_lock", None)
        if lock is not None:
            lock.release()


# -- discovery ---------------------------------------------------------------------------------------------


class _FakeAPI:
    def __init__(self, batches: list[list[ServerStream] | Exception]) -> None:
        self.batches = batches

    async def list_streams(self) -> list[ServerStream]:
        batch = self.batches.pop(0) if len(self.batches) > 1 else self.batches[0]
        if isinstance(batch, Exception):
            raise batch
        return batch


def test_finding_discovery_survives_a_bad_entry(caplog: pytest.LogCaptureFixture) -> None:
    """One stream the registry cannot take (or cannot be pulled) is logged once and skipped; the others are
    watched, and later polls still run."""
    caplog.set_level(logging.INFO)

    class Picky(OriginRegistry):
        def add_stream(self, stream_id: str, url: str, **kw: Any) -> None:
            if kw["name"] == "boom":
                raise RuntimeError("supervisor queue full")
            super().add_stream(stream_id, url, **kw)

    reg = Picky()
    good = [ServerStream("live", "cam1", "1"), ServerStream("live", LONG, "2"), ServerStream("live", "boom", "3"),
            ServerStream("live", "sp ace", "4"), ServerStream("live-x", "y", "5"), ServerStream("live", "x-y", "6")]
    api = _FakeAPI([good, ServerAPIError("stat unreachable"), good, [good[0]], TypeError("surprise"), [good[0]]])
    disco = Discovery(reg, [DiscoveredServer("nginx-rtmp", api, "rtmp://127.0.0.1:1935/{app}/{name}")], 1.0,
                      NAMER)  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(6):
            await disco.poll_once()

    asyncio.run(main())
    ids = {NAMER.stream_id("nginx-rtmp", s.app, s.name): s.name for s in good}
    assert set(reg.urls) == {NAMER.stream_id("nginx-rtmp", "live", "cam1")}  # the last lists only cam1
    assert disco.polls == 4 and disco.failures == 2
    assert caplog.text.count("cannot watch it") == 1  # "boom", logged once over two polls
    assert caplog.text.count("not watched") == 1  # "sp ace" cannot be pulled over RTMP
    removed = [line for line in caplog.text.splitlines() if "no longer lists" in line]
    assert len(removed) == 3  # LONG, live-x/y and live/x-y, when the list shrank to cam1
    assert LONG not in caplog.text and all(name not in caplog.text for name in ("boom", "sp ace"))
    assert len(ids) == len(good)


def test_mediamtx_gate_then_ready_is_one_publisher(bans: BanList) -> None:
    """MediaMTX reports a publish twice (auth gate with the address, runOnReady with the source id): one
    stream, one origin; a not-ready that names another source is ignored."""
    reg = OriginRegistry()
    sid = NAMER.stream_id("mediamtx", "live", "cam")
    auth = {"ip": "192.0.2.44", "action": "publish", "path": "live/cam", "protocol": "rtmp", "id": "conn-A",
            "query": "key=k-1"}

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json=auth)
        assert r.status == 200
        r = await client.post("/hooks/mediamtx/ready", params=TOKEN, json={"path": "live/cam", "source_id": "B"})
        assert r.status == 200
        assert reg.origins[sid].publisher_addr == "192.0.2.44" and reg.origins[sid].client_id == "B"
        assert reg.origins[sid].keys == ("k-1",)  # in memory only: terminate bans them
        assert not client.server.app[HOOKS_KEY].gate  # confirmed: it will not expire
        r = await client.post("/hooks/mediamtx/not-ready", params=TOKEN, json={"path": "live/cam", "source_id": "C"})
        assert r.status == 200 and sid in reg.urls
        r = await client.post("/hooks/mediamtx/not-ready", params=TOKEN, json={"path": "live/cam", "source_id": "B"})
        assert r.status == 200 and sid not in reg.urls

    run_app(reg, bans, scenario)
