"""Issue 19, hardening of the hook endpoint. Each test is named after the finding it shows fixed: an
unauthenticated flood from a local process throttled the streaming server's genuine publishes (and wrote a log
line per request); a signed MediaMTX `ready` body replayed to `/not-ready` stopped monitoring; `?token=` worked
from anywhere; a MediaMTX auth-gate registration never followed by `ready` was watched forever."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from monitor.config.models import HooksConfig
from monitor.servers.bans import BanList
from monitor.servers.hooks import (
    AUTH_KEY,
    HOOKS_KEY,
    NONCE_HEADER,
    RUNNER_KWARGS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HookSettings,
    StreamNamer,
    make_hook_app,
    route_token,
    sign_request,
)
from monitor.servers.hooks.auth import ReplayCache

SECRET = "hook-secret-0123456789abcdef"
NAMER = StreamNamer(b"auth tests: 32 bytes of key ....")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
NGINX_PUBLISH = "app=live&addr=203.0.113.7&clientid=12&call=publish&name=cam1&type=live"
READY = json.dumps({"path": "live/cam9", "query": "", "source_type": "rtmpConn", "source_id": "c9"}).encode()


class Registry:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[str] = []

    def add_stream(self, stream_id: str, url: str, **kw: Any) -> None:
        self.added.append(stream_id)

    def remove_stream(self, stream_id: str, **kw: Any) -> None:
        self.removed.append(stream_id)


Scenario = Callable[[TestClient[web.Request, web.Application]], Awaitable[None]]


def run_app(registry: Registry, tmp_path: Path, scenario: Scenario, **kw: Any) -> None:
    async def main() -> None:
        app = make_hook_app(registry, BanList(tmp_path / "bans.json"), HookSettings(secret=SECRET, **kw),
                            namer=NAMER)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**RUNNER_KWARGS)
        async with TestClient(server) as client:
            await scenario(client)

    asyncio.run(main())


# -- rate limiting after authentication ----------------------------------------------------------------------


def test_finding_unauthenticated_flood_does_not_throttle_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any local process sending ~20 unauthenticated requests a second made nginx-rtmp's genuine publishes
    fail with 429 (one bucket per peer address, before the secret check). Now only failed callers are limited,
    and their log lines too."""
    caplog.set_level(logging.INFO)
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        statuses = []
        for _ in range(150):  # the default limit is 20/s with a burst of 40
            r = await client.post("/hooks/nginx-rtmp", params={"token": "guess"}, data=NGINX_PUBLISH, headers=FORM)
            statuses.append(r.status)
        assert set(statuses) == {401, 429} and statuses.count(401) <= 45
        for _ in range(60):  # the server, from the same address, in the middle of the flood
            r = await client.post("/hooks/nginx-rtmp", params={"token": SECRET}, data=NGINX_PUBLISH, headers=FORM)
            assert r.status == 200
            r = await client.post("/hooks/nginx-rtmp", data=NGINX_PUBLISH, headers=FORM)
            assert r.status in (401, 429)  # the failed caller's bucket refills at 20/s
        app = client.server.app
        assert app[AUTH_KEY].rejected["rate_limited"] >= 150
        assert not app[HOOKS_KEY].outcomes.get(("refused", "rate_limited"))

    run_app(reg, tmp_path, scenario)
    assert len(reg.added) == 60
    refused_lines = [r for r in caplog.records if r.name == "monitor.servers.hooks" and r.levelno == logging.WARNING]
    assert len(refused_lines) <= 10  # 210 refusals, at most 10 lines a minute


# -- signatures over method, route, time and body, once ------------------------------------------------------


def test_finding_signed_ready_cannot_be_replayed_to_not_ready(tmp_path: Path) -> None:
    """The HMAC covered the body only: a captured signed `ready` body replayed to `/not-ready` (any number of
    times) stopped monitoring. Now the route, method, time and a nonce are signed and a nonce is used once."""
    reg = Registry()

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        captured = sign_request(SECRET, "POST", "/hooks/mediamtx/ready", READY)
        r = await client.post("/hooks/mediamtx/ready", data=READY, headers={**JSON, **captured})
        assert r.status == 200
        for _ in range(3):
            r = await client.post("/hooks/mediamtx/not-ready", data=READY, headers={**JSON, **captured})
            assert r.status == 401
        r = await client.post("/hooks/mediamtx/ready", data=READY, headers={**JSON, **captured})
        assert r.status == 401 and "replayed" in await r.text()
        # The old body-only signature is not accepted any more.
        import hashlib
        import hmac

        old = "sha256=" + hmac.new(SECRET.encode(), READY, hashlib.sha256).hexdigest()
        r = await client.post("/hooks/mediamtx/not-ready", data=READY, headers={**JSON, SIGNATURE_HEADER: old})
        assert r.status == 401
        # A signature for GET, or with another query string, does not pass for this request either.
        for other in (sign_request(SECRET, "GET", "/hooks/mediamtx/not-ready", READY),
                      sign_request(SECRET, "POST", "/hooks/mediamtx/not-ready", READY, query="x=1")):
            r = await client.post("/hooks/mediamtx/not-ready", data=READY, headers={**JSON, **other})
            assert r.status == 401
        genuine = sign_request(SECRET, "POST", "/hooks/mediamtx/not-ready", READY)
        r = await client.post("/hooks/mediamtx/not-ready", data=READY, headers={**JSON, **genuine})
        assert r.status == 200

    run_app(reg, tmp_path, scenario)
    assert len(reg.added) == 1 and len(reg.removed) == 1


def test_signature_time_window(tmp_path: Path) -> None:
    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        now = int(time.time())
        for offset, status in ((-120, 401), (120, 401), (-50, 200), (40, 200)):
            headers = sign_request(SECRET, "POST", "/hooks/mediamtx/ready", READY, timestamp=now + offset)
            r = await client.post("/hooks/mediamtx/ready", data=READY, headers={**JSON, **headers})
            assert r.status == status, offset
        for bad in ({TIMESTAMP_HEADER: "soon"}, {NONCE_HEADER: "short"}, {NONCE_HEADER: "a b" * 10}):
            headers = {**sign_request(SECRET, "POST", "/hooks/mediamtx/ready", READY), **bad}
            r = await client.post("/hooks/mediamtx/ready", data=READY, headers={**JSON, **headers})
            assert r.status == 401

    run_app(Registry(), tmp_path, scenario, signature_window_s=60)


def test_replay_cache_is_bounded_and_never_lets_a_replay_through() -> None:
    cache = ReplayCache(16)
    now = time.time()
    accepted = [f"nonce-{i:04d}-xxxxxxxx" for i in range(100)]
    for i, nonce in enumerate(accepted):
        assert cache.check_and_add(nonce, int(now) - 100 + i, now, 300) is None
        assert len(cache) <= 16
    for i, nonce in enumerate(accepted):  # every one of them, forgotten or not, is refused again
        assert cache.check_and_add(nonce, int(now) - 100 + i, now, 300) is not None
    assert cache.check_and_add("a-fresh-nonce-000000", int(now), now, 300) is None


# -- ?token= -------------------------------------------------------------------------------------------------


def _mocked(path: str, remote: str) -> web.Request:
    return make_mocked_request("POST", path).clone(remote=remote)


def test_finding_token_only_from_loopback_and_per_route(tmp_path: Path) -> None:
    """The `?token=` secret sits in a URL (nginx-rtmp cannot sign): it is accepted from loopback peers only
    unless `token_peers: any`; a route's own token works on that route only and cannot sign."""
    hooks = make_hook_app(Registry(), BanList(tmp_path / "b.json"), HookSettings(secret=SECRET),
                          namer=NAMER)[AUTH_KEY]
    nginx_token = route_token(SECRET, "/hooks/nginx-rtmp")
    assert hooks.token_ok(_mocked(f"/hooks/nginx-rtmp?token={SECRET}", "127.0.0.1"))
    assert hooks.token_ok(_mocked(f"/hooks/nginx-rtmp?token={nginx_token}", "::1"))
    assert not hooks.token_ok(_mocked(f"/hooks/nginx-rtmp?token={SECRET}", "203.0.113.5"))
    assert not hooks.token_ok(_mocked(f"/hooks/mediamtx/not-ready?token={nginx_token}", "127.0.0.1"))
    anywhere = make_hook_app(Registry(), BanList(tmp_path / "b.json"), HookSettings(secret=SECRET, token_peers="any"),
                             namer=NAMER)[AUTH_KEY]
    assert anywhere.token_ok(_mocked(f"/hooks/nginx-rtmp?token={SECRET}", "203.0.113.5"))
    nobody = make_hook_app(Registry(), BanList(tmp_path / "b.json"), HookSettings(secret=SECRET, token_peers="none"),
                           namer=NAMER)[AUTH_KEY]
    assert not nobody.token_ok(_mocked(f"/hooks/nginx-rtmp?token={SECRET}", "127.0.0.1"))
    # The route token is no signing key.
    forged = sign_request(nginx_token, "POST", "/hooks/mediamtx/not-ready", READY)
    req = make_mocked_request("POST", "/hooks/mediamtx/not-ready", headers=forged)
    assert hooks.signature_problem(req, READY) is not None


# -- MediaMTX gate registrations, caps -----------------------------------------------------------------------


def test_finding_mediamtx_gate_registration_expires_without_ready(tmp_path: Path) -> None:
    """A publish allowed at MediaMTX's auth gate and never `ready` left a pull thread retrying forever."""
    reg = Registry()
    auth = {"ip": "192.0.2.44", "action": "publish", "path": "live/ghost", "protocol": "rtmp", "id": None,
            "query": ""}

    async def scenario(client: TestClient[web.Request, web.Application]) -> None:
        r = await client.post("/hooks/mediamtx/auth", params={"token": SECRET}, json=auth)
        assert r.status == 200
        r = await client.post("/hooks/mediamtx/auth", params={"token": SECRET}, json={**auth, "path": "live/cam9"})
        assert r.status == 200
        ready = sign_request(SECRET, "POST", "/hooks/mediamtx/ready", READY)
        r = await client.post("/hooks/mediamtx/ready", data=READY, headers={**JSON, **ready})
        assert r.status == 200
        await asyncio.sleep(2.0)  # timeout 0.5 s, swept every second
        assert client.server.app[HOOKS_KEY].outcomes[("gate_expired", "")] == 1

    run_app(reg, tmp_path, scenario, mediamtx_ready_timeout_s=0.5)
    ghost = NAMER.stream_id("mediamtx", "live", "ghost")
    assert reg.removed == [ghost]  # live/cam9 became ready and stays


def test_route_token_command(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.servers.hooks.command import main

    monkeypatch.setenv("MONITOR_HOOK_SECRET", SECRET)
    assert main(["token", "/hooks/nginx-rtmp"]) == 0
    assert capsys.readouterr().out.strip() == route_token(SECRET, "/hooks/nginx-rtmp")
    (tmp_path / "s").write_text("too short\n")
    assert main(["token", "/hooks/srs", "--secret-file", str(tmp_path / "s")]) == 2
    assert SECRET not in capsys.readouterr().err


def test_caps_have_defaults() -> None:
    cfg = HooksConfig()
    assert (cfg.max_streams, cfg.max_streams_per_addr, cfg.fail_open, cfg.token_peers) == (500, 50, False,
                                                                                            "loopback")
