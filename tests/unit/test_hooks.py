"""Publish hooks: the documented requests of nginx-rtmp, SRS and MediaMTX get the replies those servers
expect, banned keys and addresses are refused, the secret is enforced both ways, and no client input gives
a 5xx. Stream ids come from a fixed StreamNamer (NAMER) so the tests can name them; tests/unit/test_stream_identity.py
covers the ids themselves, tests/unit/test_hook_auth.py authentication and limits."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.servers import mediamtx_hook
from monitor.servers.bans import BanList
from monitor.servers.hooks import (
    HOOKS_KEY,
    RUNNER_KWARGS,
    HookSettings,
    StreamNamer,
    make_hook_app,
    sign_request,
    start_hook_server,
)

SECRET = "hook-secret-0123456789abcdef"
TOKEN = {"token": SECRET}
KEY = "live_8f3a9c2e71b4d605"

# What nginx-rtmp 1.2.2 posts for `ffmpeg ... -f flv rtmp://127.0.0.1:1935/live/cam1?key=<KEY>`: its own
# fields first, then the publisher's URL arguments.
NGINX_PUBLISH = (
    "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27.100)&swfurl=&tcurl=rtmp://127.0.0.1:1935/live"
    f"&pageurl=&addr=203.0.113.7&clientid=12&call=publish&name=cam1&type=live&key={KEY}"
)
NGINX_DONE = (
    "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27.100)&swfurl=&tcurl=rtmp://127.0.0.1:1935/live"
    "&pageurl=&addr=203.0.113.7&clientid=12&call=publish_done&name=cam1"
)
NGINX_UPDATE = (
    "app=live&flashver=FMLE/3.0&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=203.0.113.7"
    f"&clientid=12&call=update&time=30&timestamp=29980&name=cam1&key={KEY}"
)
NGINX_PLAY = (
    "app=live&flashver=LNX%209,0,124,2&swfurl=&tcurl=rtmp://127.0.0.1:1935/live&pageurl=&addr=127.0.0.1"
    "&clientid=13&call=play&name=cam1&start=-2&duration=0&reset=0"
)
SRS_PUBLISH: dict[str, Any] = {
    "server_id": "vid-0xk989d",
    "service_id": "ez1k6n0",
    "action": "on_publish",
    "client_id": "341w361a",
    "ip": "198.51.100.4",
    "vhost": "__defaultVhost__",
    "app": "live",
    "tcUrl": "rtmp://127.0.0.1:1935/live",
    "stream": "livestream",
    "param": f"?key={KEY}",
    "stream_url": "/live/livestream",
    "stream_id": "vid-124q9y3",
}
MTX_AUTH: dict[str, Any] = {
    "user": "",
    "password": "",
    "token": "",
    "ip": "192.0.2.44",
    "action": "publish",
    "path": "live/cam1",
    "protocol": "rtmp",
    "id": None,
    "query": f"key={KEY}",
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NAMER = StreamNamer(b"test stream id key, 32 bytes...")


def sid(server: str, app: str, name: str) -> str:
    return NAMER.stream_id(server, app, name)


CAM1 = sid("nginx-rtmp", "live", "cam1")


class Registry:
    """Records calls; can be told to fail like a broken supervisor would."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.added: list[tuple[str, str, dict[str, Any]]] = []
        self.removed: list[str] = []
        self._lock = threading.Lock()

    def add_stream(
        self, stream_id: str, url: str, *, server: str, app: str, name: str, publisher_addr: str | None,
        client_id: str | None = None, keys: tuple[str, ...] = (),
    ) -> None:
        with self._lock:
            self.added.append(
                (
                    stream_id,
                    url,
                    {"server": server, "app": app, "name": name, "publisher_addr": publisher_addr},
                )
            )
        if self.fail:
            raise RuntimeError("supervisor queue full")

    def remove_stream(self, stream_id: str, **origin: Any) -> None:
        with self._lock:
            self.removed.append(stream_id)
        if self.fail:
            raise RuntimeError("supervisor queue full")


def make_settings(**kw: Any) -> HookSettings:
    return HookSettings(secret=SECRET, **kw)


def sign(body: bytes, route: str = "/hooks/mediamtx/auth", secret: str = SECRET, query: str = "") -> dict[str, str]:
    return sign_request(secret, "POST", route, body, query=query)


Scenario = Callable[[TestClient[web.Request, web.Application]], Awaitable[None]]


def run_app(registry: Registry, bans: BanList, scenario: Scenario, **kw: Any) -> None:
    async def main() -> None:
        app = make_hook_app(registry, bans, make_settings(**kw), namer=NAMER)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**RUNNER_KWARGS)  # aiohttp's access log would print the token
        async with TestClient(server) as client:
            await scenario(client)

    asyncio.run(main())


@pytest.fixture
def bans(tmp_path: Path) -> BanList:
    return BanList(tmp_path / "bans.json")


# -- nginx-rtmp ----------------------------------------------------------------------------------------------


def test_nginx_publish_registers_and_done_removes(bans: BanList, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_PUBLISH, headers=FORM)
        assert r.status == 200
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_PLAY, headers=FORM)
        assert r.status == 200
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_UPDATE, headers=FORM)
        assert r.status == 200
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_DONE, headers=FORM)
        assert r.status == 200

    run_app(reg, bans, scenario)
    assert reg.added == [
        (
            CAM1,
            "rtmp://127.0.0.1:1935/live/cam1",
            {"server": "nginx-rtmp", "app": "live", "name": "cam1", "publisher_addr": "203.0.113.7"},
        )
    ]
    assert NAMER.digest("nginx-rtmp", "live", "cam1") == CAM1.removeprefix("nginx-rtmp-live-c-")
    assert reg.removed == [CAM1]
    assert KEY not in caplog.text and SECRET not in caplog.text
    assert NAMER.mask(KEY) in caplog.text and CAM1 in caplog.text


@pytest.mark.parametrize(
    ("kind", "value", "body"),
    [
        ("key", KEY, NGINX_PUBLISH),  # the key URL argument
        ("key", "cam1", NGINX_PUBLISH),  # the stream name (often the key itself)
        ("addr", "203.0.113.0/24", NGINX_PUBLISH),
        # The publisher appends its own addr/name arguments: nginx's come first and are the ones used.
        ("addr", "203.0.113.7", NGINX_PUBLISH + "&addr=10.9.9.9&name=other&key=innocent"),
        ("key", KEY, NGINX_PUBLISH.replace(f"key={KEY}", f"key=innocent&key={KEY}")),
    ],
)
def test_nginx_publish_refused_when_banned(
    bans: BanList, caplog: pytest.LogCaptureFixture, kind: Any, value: str, body: str
) -> None:
    caplog.set_level(logging.INFO)
    bans.add(kind, value, reason="matched known content", author="ops")
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=body, headers=FORM)
        assert r.status == 403
        assert await r.text() == "banned: matched known content"
        # A ban added mid-stream drops the publisher at its next on_update (notify_update_strict on).
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_UPDATE, headers=FORM)
        assert r.status == 403

    run_app(reg, bans, scenario)
    assert reg.added == []
    assert KEY not in caplog.text
    assert f"{CAM1} publish refused" in caplog.text


def test_nginx_update_ban_check_can_be_turned_off(bans: BanList) -> None:
    bans.add("key", "cam1", reason="x")

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_UPDATE, headers=FORM)
        assert r.status == 200
        no_name = NGINX_UPDATE.replace("&name=cam1", "")
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=no_name, headers=FORM)
        assert r.status == 200

    run_app(Registry(), bans, scenario, nginx_update_checks_bans=False)


def test_registry_failure_refuses_publish_unless_fail_open(
    bans: BanList, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: a publish the monitor cannot watch is refused (nginx-rtmp and MediaMTX: 4xx; SRS: its
    refusal code), logged and counted; `fail_open` allows it, logged and counted as allowed_unwatched."""
    for fail_open, status, srs_code in ((False, 403, 403), (True, 200, 0)):
        reg = Registry(fail=True)
        caplog.clear()

        async def scenario(
            client: TestClient[web.Request, web.Application],
            fail_open: bool = fail_open,
            status: int = status,
            srs_code: int = srs_code,
        ) -> None:
            r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_PUBLISH, headers=FORM)
            assert r.status == status
            r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_DONE, headers=FORM)
            assert r.status == 200
            r = await client.post("/hooks/srs", params=TOKEN, json=SRS_PUBLISH)
            assert r.status == 200 and (await r.json())["code"] == srs_code
            r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json=MTX_AUTH)
            assert r.status == status
            counts = client.server.app[HOOKS_KEY].outcomes
            outcome = "allowed_unwatched" if fail_open else "refused"
            assert counts == {(outcome, "error"): 3}, counts

        run_app(reg, bans, scenario, fail_open=fail_open)
        assert len(reg.added) == 3 and reg.removed == [CAM1]
        assert "registry add_stream failed" in caplog.text and "supervisor queue full" in caplog.text
        assert ("NOT watched" in caplog.text) == fail_open


# -- SRS -----------------------------------------------------------------------------------------------------


def test_srs_publish_unpublish_and_refusal(bans: BanList) -> None:
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/srs", params=TOKEN, json=SRS_PUBLISH)
        assert r.status == 200 and await r.json() == {"code": 0}
        r = await client.post("/hooks/srs", params=TOKEN, json={**SRS_PUBLISH, "action": "on_unpublish"})
        assert r.status == 200 and await r.json() == {"code": 0}
        r = await client.post("/hooks/srs", params=TOKEN, json={**SRS_PUBLISH, "action": "on_play"})
        assert r.status == 200 and await r.json() == {"code": 0}

        bans.add("key", KEY, reason="csam hash match")
        r = await client.post("/hooks/srs", params=TOKEN, json=SRS_PUBLISH)
        assert r.status == 200  # SRS wants 200 and a non-zero code
        assert await r.json() == {"code": 403, "msg": "banned: csam hash match"}
        bans.remove("key", KEY)
        bans.add("addr", "198.51.100.4", reason="abuse")
        r = await client.post("/hooks/srs", params=TOKEN, json=SRS_PUBLISH)
        assert (await r.json())["code"] == 403

    run_app(reg, bans, scenario)
    assert reg.added == [
        (
            sid("srs", "live", "livestream"),
            "rtmp://127.0.0.1:1935/live/livestream",
            {"server": "srs", "app": "live", "name": "livestream", "publisher_addr": "198.51.100.4"},
        )
    ]
    assert reg.removed == [sid("srs", "live", "livestream")]


# -- MediaMTX ------------------------------------------------------------------------------------------------


def test_mediamtx_auth(bans: BanList) -> None:
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json=MTX_AUTH)
        assert r.status == 200
        for action in ("read", "playback", "api", "metrics", "pprof"):
            r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json={**MTX_AUTH, "action": action})
            assert r.status == 200
        r = await client.post(
            "/hooks/mediamtx/auth", params=TOKEN, json={**MTX_AUTH, "action": "api", "path": ""}
        )
        assert r.status == 200

        bans.add("key", KEY, reason="repeat offender")
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json=MTX_AUTH)
        assert r.status == 403 and "repeat offender" in await r.text()
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json={**MTX_AUTH, "action": "read"})
        assert r.status == 200  # viewers are not gated
        bans.remove("key", KEY)
        bans.add("addr", "192.0.2.44", reason="abuse")
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json=MTX_AUTH)
        assert r.status == 403
        bans.remove("addr", "192.0.2.44")
        bans.add("key", "live/cam1", reason="path ban")
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json=MTX_AUTH)
        assert r.status == 403

    run_app(reg, bans, scenario)
    assert reg.added == [
        (
            sid("mediamtx", "live", "cam1"),
            "rtsp://127.0.0.1:8554/live/cam1",
            {"server": "mediamtx", "app": "live", "name": "cam1", "publisher_addr": "192.0.2.44"},
        )
    ]


def test_mediamtx_auth_without_registration(bans: BanList) -> None:
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json=MTX_AUTH)
        assert r.status == 200

    run_app(reg, bans, scenario, mediamtx_register_on_auth=False)
    assert reg.added == []


def test_pull_url_templates_and_stream_ids(bans: BanList) -> None:
    reg = Registry()
    templates = {
        "nginx-rtmp": "http://127.0.0.1:8080/hls/{name}.m3u8",
        "mediamtx": "srt://h:8890?streamid=read:{path}",
    }

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        body = NGINX_PUBLISH.replace("name=cam1", "name=caf%C3%A9%20%2F..%2Fx")
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=body, headers=FORM)
        assert r.status == 200
        r = await client.post("/hooks/mediamtx/auth", params=TOKEN, json={**MTX_AUTH, "path": "top"})
        assert r.status == 200
        r = await client.post("/hooks/srs", params=TOKEN, json=SRS_PUBLISH)  # default template kept
        assert r.status == 200

    run_app(reg, bans, scenario, pull_url_templates=templates)
    odd = "café /../x"
    assert [(a[0], a[1]) for a in reg.added] == [
        (sid("nginx-rtmp", "live", odd), "http://127.0.0.1:8080/hls/caf%C3%A9%20%2F..%2Fx.m3u8"),
        (sid("mediamtx", "", "top"), "srt://h:8890?streamid=read:top"),
        (sid("srs", "live", "livestream"), "rtmp://127.0.0.1:1935/live/livestream"),
    ]
    # The pull URL keeps the raw name (that is how the stream is read); the id shows 2 characters of it.
    assert reg.added[0][0] == "nginx-rtmp-live-ca-" + NAMER.digest("nginx-rtmp", "live", odd)
    assert reg.added[1][0] == "mediamtx---" + NAMER.digest("mediamtx", "", "top")


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="16 characters"):
        HookSettings(secret="short")
    with pytest.raises(ValueError, match="unknown field"):
        HookSettings(secret=SECRET, pull_url_templates={"srs": "rtmp://h/{vhost}/{name}"})
    with pytest.raises(ValueError, match="pull URL template"):
        HookSettings(secret=SECRET, pull_url_templates={"srs": "rtmp://h/{name"})
    with pytest.raises(ValueError):
        HookSettings(secret=SECRET, pull_url_templates={"wowza": "rtmp://h/{name}"})
    s = make_settings()
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())
    assert s.host == "127.0.0.1" and s.max_body_bytes == 16 * 1024


# -- secret, limits, malformed input -------------------------------------------------------------------------


def test_secret_checked_both_ways(bans: BanList) -> None:
    reg = Registry()
    body = json.dumps(MTX_AUTH).encode()
    jtype = {"Content-Type": "application/json"}

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        async def status(params: dict[str, str] | None, headers: dict[str, str], data: bytes = body) -> int:
            r = await client.post(
                "/hooks/mediamtx/auth", params=params, data=data, headers={**jtype, **headers}
            )
            return r.status

        assert await status(None, {}) == 401
        assert await status({"token": "wrong"}, {}) == 401
        assert await status({"token": SECRET + "x"}, {}) == 401
        assert await status({"token": "sécret"}, {}) == 401
        assert await status({"token": SECRET}, {}) == 200
        # Either proof is enough (the signature covers the query string as sent).
        assert await status({"token": "wrong"}, sign(body, query="token=wrong")) == 200
        assert await status({"token": "wrong"}, sign(body)) == 401
        assert await status(None, sign(body)) == 200
        upper = sign(body)
        upper["X-Hook-Signature"] = upper["X-Hook-Signature"].upper()
        assert await status(None, upper) == 200
        assert await status(None, sign(body + b" ")) == 401  # signature of another body
        assert await status(None, sign(body, secret="another-secret-1234567")) == 401
        assert await status(None, {"X-Hook-Signature": "sha1=" + "0" * 40}) == 401
        assert await status(None, {"X-Hook-Signature": "sha256=zz"}) == 401
        # The publisher's own `token` argument inside the nginx form body is not the hook URL's.
        r = await client.post("/hooks/nginx-rtmp", data=NGINX_PUBLISH + f"&token={SECRET}", headers=FORM)
        assert r.status == 401

    run_app(reg, bans, scenario)
    assert len(reg.added) == 4


def test_body_size_limit(bans: BanList) -> None:
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        big = json.dumps({**MTX_AUTH, "pad": "x" * 17000}).encode()
        r = await client.post(
            "/hooks/mediamtx/auth", params=TOKEN, data=big, headers={"Content-Type": "application/json"}
        )
        assert r.status == 413

        async def chunks() -> Any:
            for _ in range(20):
                yield b"a=" + b"x" * 1000 + b"&"

        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=chunks(), headers=FORM)
        assert r.status == 413
        fits = NGINX_PUBLISH + "&pad=" + "x" * (16 * 1024 - len(NGINX_PUBLISH) - 5)
        assert len(fits) == 16 * 1024
        r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=fits, headers=FORM)
        assert r.status == 200

    run_app(reg, bans, scenario)
    assert len(reg.added) == 1


def test_rate_limit_applies_to_failed_callers_only(bans: BanList, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        statuses = []
        for _ in range(5):
            r = await client.post("/hooks/srs", json=SRS_PUBLISH)  # no secret
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
        assert statuses == [401, 401, 401, 429, 429]
        # The authenticated server is never throttled, whoever else floods from its address.
        for _ in range(5):
            r = await client.post("/hooks/nginx-rtmp", params=TOKEN, data=NGINX_PLAY, headers=FORM)
            assert r.status == 200

    run_app(Registry(), bans, scenario, rate_limit_per_s=0.01, rate_limit_burst=3)
    assert "127.0.0.1: rate limited" in caplog.text


MALFORMED: list[tuple[str, bytes, str, str]] = [
    ("/hooks/nginx-rtmp", NGINX_PUBLISH.encode(), "application/json", "content type"),
    ("/hooks/nginx-rtmp", NGINX_PUBLISH.encode(), "", "content type"),
    ("/hooks/nginx-rtmp", b"app=live&call=publish&name=%ff", FORM["Content-Type"], "UTF-8"),
    ("/hooks/nginx-rtmp", b"app=live&call=publish&name=\xff", FORM["Content-Type"], "UTF-8"),
    ("/hooks/nginx-rtmp", b"app=live&call=publish", FORM["Content-Type"], "'name'"),
    ("/hooks/nginx-rtmp", b"app=live&call=publish&name=", FORM["Content-Type"], "'name'"),
    ("/hooks/nginx-rtmp", b"name=x&call=publish", FORM["Content-Type"], "'app'"),
    ("/hooks/nginx-rtmp", b"app=live&name=x", FORM["Content-Type"], "'call'"),
    ("/hooks/nginx-rtmp", b"&".join([b"a=1"] * 300), FORM["Content-Type"], "malformed"),
    ("/hooks/srs", b"{", "application/json", "JSON"),
    ("/hooks/srs", b"[1, 2]", "application/json", "JSON object"),
    ("/hooks/srs", b"[" * 5000 + b"]" * 5000, "application/json", "JSON"),
    ("/hooks/srs", json.dumps({**SRS_PUBLISH, "stream": 5}).encode(), "application/json", "'stream'"),
    ("/hooks/srs", json.dumps({**SRS_PUBLISH, "ip": ["x"]}).encode(), "application/json", "'ip'"),
    (
        "/hooks/srs",
        json.dumps({"action": "on_publish", "app": "live"}).encode(),
        "application/json",
        "'stream'",
    ),
    ("/hooks/srs", json.dumps(SRS_PUBLISH).encode(), "text/plain", "content type"),
    ("/hooks/srs", b'{"action": "on_publish", "app": "\xff"}', "application/json", "UTF-8"),
    ("/hooks/mediamtx/auth", json.dumps({**MTX_AUTH, "path": ""}).encode(), "application/json", "'path'"),
    ("/hooks/mediamtx/auth", json.dumps({"path": "x"}).encode(), "application/json", "'action'"),
    (
        "/hooks/mediamtx/auth",
        json.dumps({**MTX_AUTH, "query": "key=%ff"}).encode(),
        "application/json",
        "query",
    ),
    ("/hooks/mediamtx/ready", json.dumps({"query": ""}).encode(), "application/json", "'path'"),
    (
        "/hooks/mediamtx/ready",
        json.dumps({"path": "a", "source_id": 3}).encode(),
        "application/json",
        "source_id",
    ),
    ("/hooks/mediamtx/not-ready", b"null", "application/json", "JSON object"),
    ("/hooks/mediamtx/not-ready", b"path=x", FORM["Content-Type"], "content type"),
]


def test_malformed_requests_are_400(bans: BanList, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        for path, body, ctype, reason in MALFORMED:
            headers = {"Content-Type": ctype} if ctype else {}
            r = await client.post(
                path, params=TOKEN, data=body, headers=headers, skip_auto_headers=["Content-Type"]
            )
            text = await r.text()
            assert (r.status, path, reason in text) == (400, path, True), text
        gz = gzip.compress(json.dumps(SRS_PUBLISH).encode())
        r = await client.post(
            "/hooks/srs",
            params=TOKEN,
            data=gz,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status == 400
        r = await client.get("/hooks/srs", params=TOKEN)
        assert r.status == 405

    reg = Registry()
    run_app(reg, bans, scenario)
    assert reg.added == [] and reg.removed == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "bad request" in r.getMessage()]
    assert len(warnings) == len(MALFORMED)
    assert all("127.0.0.1" in r.getMessage() for r in warnings)


# -- real server: access log, the MediaMTX command -----------------------------------------------------------


@contextmanager
def serve(registry: Registry, bans: BanList, **kw: Any) -> Iterator[str]:
    """The hook server on a free 127.0.0.1 port, its event loop in a thread (so sync clients can call it)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["runner"] = loop.run_until_complete(
                start_hook_server(registry, bans, make_settings(**kw), port=0, namer=NAMER)
            )
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    thread = threading.Thread(target=run, name="hook-server", daemon=True)
    thread.start()
    assert ready.wait(10)
    if "error" in box:
        raise box["error"]
    host, port = box["runner"].addresses[0][:2]
    assert host == "127.0.0.1"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_access_log_hides_the_token(bans: BanList, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with serve(Registry(), bans) as base:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
        conn.request("POST", "/hooks/nginx-rtmp?" + urlencode(TOKEN), body=NGINX_PLAY, headers=FORM)
        assert conn.getresponse().status == 200
        conn.close()
    access = [r.getMessage() for r in caplog.records if r.name == "monitor.servers.hooks.access"]
    assert access and "POST /hooks/nginx-rtmp -> 200" in access[0]
    assert SECRET not in caplog.text


def test_mediamtx_command_end_to_end(
    bans: BanList, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    reg = Registry()
    env = {
        "MONITOR_HOOK_SECRET": SECRET,
        "MTX_PATH": "live/cam9",
        "MTX_QUERY": f"key={KEY}",
        "MTX_SOURCE_TYPE": "rtmpConn",
        "MTX_SOURCE_ID": "6b3f1a5e-1d2c-4f7a-9a0b-3c8d2e1f4a55",
        "http_proxy": "http://127.0.0.1:9",  # must be ignored
    }
    with serve(reg, bans) as base:
        assert mediamtx_hook.main(["ready", "--url", base], env=env) == 0
        assert mediamtx_hook.main(["not-ready"], env={**env, "MONITOR_HOOK_URL": base + "/"}) == 0
        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET + "\n")
        no_env_secret = {k: v for k, v in env.items() if k != "MONITOR_HOOK_SECRET"}
        assert (
            mediamtx_hook.main(["ready", "--url", base, "--secret-file", str(secret_file)], env=no_env_secret)
            == 0
        )
        capsys.readouterr()

        assert (
            mediamtx_hook.main(["ready", "--url", base], env={**env, "MONITOR_HOOK_SECRET": "wrong" * 4}) == 1
        )
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "HTTP 401" in err and SECRET not in err

        bans.add("key", KEY, reason="known content")
        assert mediamtx_hook.main(["ready", "--url", base], env=env) == 1
        assert "HTTP 403" in capsys.readouterr().err
    cam9 = sid("mediamtx", "live", "cam9")
    assert [a[0] for a in reg.added] == [cam9, cam9]
    assert reg.added[0][2]["publisher_addr"] is None
    assert reg.removed == [cam9]

    # Monitor down, misconfiguration: exit 1, one line.
    for args, e, msg in [
        (["ready", "--url", base], env, "cannot reach"),
        (["ready", "--url", "file:///etc/passwd"], env, "http://"),
        (["ready", "--url", base], no_env_secret, "no hook secret"),
        (["ready", "--url", base, "--secret-file", str(tmp_path / "nope")], env, "cannot read secret file"),
        (["ready", "--url", base], {k: v for k, v in env.items() if k != "MTX_PATH"}, "MTX_PATH"),
    ]:
        assert mediamtx_hook.main(args, env=e) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert mediamtx_hook.main(["sideways"], env=env) == 2


# -- fuzz ----------------------------------------------------------------------------------------------------

FORM_TYPE = FORM["Content-Type"]
# Documented bodies per route: the fuzz mutates these (so it gets past the checks) as well as sending noise.
SHAPES: dict[str, tuple[str, list[tuple[str, str]] | dict[str, Any]]] = {
    "/hooks/nginx-rtmp": (FORM_TYPE, parse_qsl(NGINX_PUBLISH, keep_blank_values=True)),
    "/hooks/srs": ("application/json", SRS_PUBLISH),
    "/hooks/mediamtx/auth": ("application/json", MTX_AUTH),
    "/hooks/mediamtx/ready": (
        "application/json",
        {"path": "live/cam1", "query": f"key={KEY}", "source_type": "rtmpConn", "source_id": "x"},
    ),
    "/hooks/mediamtx/not-ready": ("application/json", {"path": "live/cam1", "query": "", "source_type": ""}),
}
FIELDS = sorted({*SRS_PUBLISH, *MTX_AUTH, "call", "name", "addr", "key", "source_type", "source_id"})
VALUES = [
    "publish", "on_publish", "on_unpublish", "on_play", "publish_done", "update", "play", "read", "api",
    "live", "cam1", "live/cam1", "/", "a/b/c", KEY, f"key={KEY}", f"?key={KEY}", "?key=", "203.0.113.7",
    "::ffff:203.0.113.7", "not-an-ip", "%ff", "",
]  # fmt: skip
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
texts = st.sampled_from(VALUES) | st.text(max_size=30)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(FIELDS) | st.text(max_size=8)
noise = st.one_of(
    st.dictionaries(field_names, json_values, max_size=10).map(lambda d: json.dumps(d).encode()),
    st.lists(st.tuples(field_names, texts), max_size=12).map(lambda pairs: urlencode(pairs).encode()),
    st.binary(max_size=300),
    st.just(b"x" * 17000),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            FORM_TYPE,
            "application/json; charset=utf-8",
            f"{FORM_TYPE}; charset=UTF-8",
            "text/plain",
            "multipart/form-data; boundary=zz",
            None,
        ]
    ),
    header_text,
)


@st.composite
def shaped(draw: st.DrawFn, route: str) -> tuple[bytes, str | None]:
    """The route's documented body with fields dropped, replaced or added."""
    ctype, base = SHAPES[route]
    if isinstance(base, dict):
        doc = {k: v for k, v in base.items() if draw(st.integers(0, 5)) != 0}
        doc.update(
            draw(st.dictionaries(st.sampled_from(sorted(base)) | field_names, json_values, max_size=3))
        )
        body = json.dumps(doc).encode()
    else:
        pairs = [(k, v) for k, v in base if draw(st.integers(0, 6)) != 0]
        for i in draw(st.lists(st.integers(0, 20), max_size=3)):
            if i < len(pairs):
                pairs[i] = (pairs[i][0], draw(texts))
        pairs += draw(st.lists(st.tuples(field_names, texts), max_size=3))
        body = urlencode(pairs).encode()
    return body, draw(st.sampled_from([ctype] * 6) | content_types)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    route = draw(st.sampled_from(sorted(SHAPES)))
    body, ctype = draw(shaped(route)) if draw(st.integers(0, 3)) else (draw(noise), draw(content_types))
    return route, body, ctype


auth_modes = st.sampled_from(["token"] * 3 + ["signature"] * 3 + ["none", "bad-token", "bad-signature"])
extra_headers: st.SearchStrategy[dict[str, str]] = st.just({}) | st.dictionaries(
    st.sampled_from(
        ["Content-Encoding", "X-Forwarded-For", "Accept", "Expect", "X-Hook-Signature", "Cookie"]
    ),
    header_text | st.sampled_from(["gzip", "deflate", "br", "identity", "sha256=", "100-continue"]),
    max_size=3,
)
queries = st.lists(
    st.tuples(st.sampled_from(["token", "key", "x", "name"]) | st.text(max_size=5), st.text(max_size=10)),
    max_size=3,
)


def test_fuzz_never_5xx(tmp_path: Path) -> None:
    bans = BanList(tmp_path / "bans.json")
    bans.add("key", KEY, reason="fuzz")
    bans.add("addr", "203.0.113.0/24", reason="fuzz")
    errors: list[logging.LogRecord] = []
    seen: dict[int, int] = {}

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record)

    handler = Collect()
    logging.getLogger().addHandler(handler)
    try:
        with serve(Registry(), bans, rate_limit_per_s=1e6, rate_limit_burst=1_000_000) as base:
            hostport = base.removeprefix("http://")

            @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(request=requests(), auth=auth_modes, headers=extra_headers, query=queries)
            def fuzz(
                request: tuple[str, bytes, str | None],
                auth: str,
                headers: dict[str, str],
                query: list[tuple[str, str]],
            ) -> None:
                route, body, ctype = request
                hdrs = dict(headers)
                params = list(query)
                if ctype is not None:
                    hdrs["Content-Type"] = ctype
                if auth == "token":
                    params.append(("token", SECRET))
                elif auth == "bad-token":
                    params.append(("token", SECRET[:-1]))
                query_string = urlencode(params)
                if auth == "signature":
                    hdrs.update(sign(body, route, query=query_string))
                elif auth == "bad-signature":
                    hdrs.update(sign(body + b"!", route, query=query_string))
                hdrs["Content-Length"] = str(len(body))
                url = route + ("?" + urlencode(params) if params else "")
                conn = http.client.HTTPConnection(hostport, timeout=10)
                try:
                    conn.putrequest("POST", url, skip_accept_encoding=True)
                    for k, v in hdrs.items():
                        conn.putheader(k, v)
                    conn.endheaders(body)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                assert status < 500, (route, body[:200], hdrs, url)
                seen[status] = seen.get(status, 0) + 1

            fuzz()
    finally:
        logging.getLogger().removeHandler(handler)
    assert not errors, [r.getMessage() for r in errors[:5]]
    assert {200, 400, 401, 403} <= set(seen), seen  # the strategies reach past every check
