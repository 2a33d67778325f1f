"""The web console's HTTP guard and routes, through aiohttp's test client (no broker: commands are captured)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from monitor.config.models import build_config
from monitor.web.actions import CommandSigner
from monitor.web.server import WebConsole, make_app
from tests.unit.test_web_queue import incident

PASSWORD = "a long enough password"
Scenario = Callable[[TestClient[Any, Any], WebConsole, list[tuple[str, dict[str, object]]]], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, evidence: dict[str, object] | None = None, **web: object) -> None:
    cfg = build_config({"state_dir": str(tmp_path / "state"), "evidence": evidence or {},
                        "web": {"login_max_failures": 3, **web}})
    sent: list[tuple[str, dict[str, object]]] = []
    console = WebConsole.build(cfg, lambda node, cmd: sent.append((node, cmd)))
    console.signer = CommandSigner(Ed25519PrivateKey.generate())
    for name, role in (("alice", "moderator"), ("bob", "moderator"), ("victor", "viewer"), ("lena", "lead")):
        console.users.add(name, PASSWORD, role)  # type: ignore[arg-type]
    console.queue.update(incident("i1", "2026-01-01T00:00:01Z"))

    async def go() -> None:
        async with TestClient(TestServer(make_app(console))) as client:
            await scenario(client, console, sent)
        console.audit.close()

    asyncio.run(go())


async def login(client: TestClient[Any, Any], user: str) -> dict[str, Any]:
    client.session.cookie_jar.clear()
    r = await client.post("/api/login", json={"user": user, "password": PASSWORD})
    assert r.status == 200, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def post(client: TestClient[Any, Any], me: dict[str, Any], path: str, body: object = None) -> Any:
    return await client.post(path, json=body, headers={"X-CSRF-Token": me["csrf"]})


def test_login_cookie_wrong_password_and_rate_limit(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], console: WebConsole, sent: Any) -> None:
        r = await client.post("/api/login", json={"user": "alice", "password": "wrong password"})
        assert r.status == 401 and "wrong user name or password" in (await r.json())["error"]
        me = await login(client, "alice")
        cookie = r2 = None
        r2 = await client.post("/api/login", json={"user": "alice", "password": PASSWORD})
        cookie = r2.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http on 127.0.0.1
        assert me["role"] == "moderator" and me["csrf"]
        for _ in range(3):
            await client.post("/api/login", json={"user": "bob", "password": "wrong password"})
        r = await client.post("/api/login", json={"user": "bob", "password": PASSWORD})
        assert r.status == 429 and "Retry-After" in r.headers
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")

    run(tmp_path, scenario)


def test_secure_cookie_behind_a_trusted_proxy(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], console: WebConsole, sent: Any) -> None:
        r = await client.post("/api/login", json={"user": "alice", "password": PASSWORD},
                              headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in r.headers["Set-Cookie"]

    run(tmp_path, scenario, trust_proxy=True)


def test_csrf_origin_and_expired_session_are_refused(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], console: WebConsole, sent: Any) -> None:
        me = await login(client, "alice")
        r = await client.post("/api/incidents/i1/claim")
        assert r.status == 403 and "CSRF" in (await r.json())["error"]
        r = await client.post("/api/incidents/i1/claim", headers={"X-CSRF-Token": "forged"})
        assert r.status == 403
        r = await client.post("/api/incidents/i1/claim", headers={"X-CSRF-Token": me["csrf"],
                                                                  "Origin": "https://evil.example"})
        assert r.status == 403 and "cross-origin" in (await r.json())["error"]
        token = client.session.cookie_jar.filter_cookies(client.make_url("/"))["lsm_session"].value
        console.sessions.get(token).created -= 10 * 86400  # type: ignore[union-attr]
        r = await post(client, me, "/api/incidents/i1/claim")
        assert r.status == 401 and "expired" in (await r.json())["error"]
        r = await client.get("/api/me")
        assert r.status == 401
        await login(client, "bob")
        assert (await client.get("/api/me")).status == 200
        console.users.update("bob", disabled=True)  # `monitor users disable bob`: his session ends at once
        assert (await client.get("/api/me")).status == 401

    run(tmp_path, scenario)


def test_claims_roles_actions_and_the_two_person_rule(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], console: WebConsole,
                       sent: list[tuple[str, dict[str, object]]]) -> None:
        viewer = await login(client, "victor")
        r = await post(client, viewer, "/api/incidents/i1/claim")
        assert r.status == 403 and "moderator" in (await r.json())["error"]
        r = await client.get("/api/incidents/i1")
        assert r.status == 200 and (await r.json())["incident"]["incident_id"] == "i1"
        assert (await client.get("/api/audit")).status == 403
        alice = await login(client, "alice")
        r = await post(client, alice, "/api/incidents/i1/action", {"action": "acknowledge"})
        assert r.status == 409 and "claim it first" in (await r.json())["error"]
        assert (await post(client, alice, "/api/incidents/i1/claim")).status == 200
        bob = await login(client, "bob")
        r = await post(client, bob, "/api/incidents/i1/claim")
        assert r.status == 409 and "claimed by alice" in (await r.json())["error"]
        alice = await login(client, "alice")
        r = await post(client, alice, "/api/incidents/i1/action", {"action": "dismiss"})
        assert r.status == 400  # a dismiss says why
        r = await post(client, alice, "/api/incidents/i1/action", {"action": "acknowledge"})
        assert r.status == 200
        node, env = sent[-1]
        inner = json.loads(str(env["signed"]))
        assert node == "node-1" and env["type"] == "signed_command"
        assert inner["command"]["moderator"] == "alice" and inner["command"]["action"] == "acknowledge"
        r = await post(client, alice, "/api/incidents/i1/action", {"action": "terminate", "reason": "known"})
        assert r.status == 202  # terminate.ban with no ban_hours: permanent, needs a second person
        approval = (await r.json())["pending_approval"]
        assert len(sent) == 1
        r = await post(client, alice, f"/api/approvals/{approval}/approve")
        assert r.status == 403
        lena = await login(client, "lena")
        r = await post(client, lena, f"/api/approvals/{approval}/approve")
        assert r.status == 200
        inner = json.loads(str(sent[-1][1]["signed"]))
        assert inner["command"]["action"] == "terminate" and inner["command"]["moderator"] == "alice"
        assert inner["approved_by"] == "lena"
        audit = (await (await client.get("/api/audit")).json())["entries"]
        events = [e["audit"] for e in audit]
        assert {"login", "claim", "action", "ban_requested", "ban_approved", "incident_view"} <= set(events)

    run(tmp_path, scenario)


def test_pages_are_served_without_a_session(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any], console: WebConsole, sent: Any) -> None:
        r = await client.get("/")
        assert r.status == 200 and "<title>Moderation console</title>" in await r.text()
        assert (await client.get("/static/app.js")).status == 200
        assert (await client.get("/static/../users.py")).status == 404
        assert (await client.get("/api/events")).status == 401

    run(tmp_path, scenario)


def test_stored_sample_is_served_audited_and_reported_as_viewed(tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    from monitor.evidence.store import EvidenceLog

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    (tmp_path / "state").mkdir(mode=0o700)
    with EvidenceLog(tmp_path / "state" / "evidence.sqlite", store_images=True) as log:
        log.append("match", stream_id="s1", body={
            "kind": "classification", "bank": "b1", "entry_id": "e1", "sample_hash": "cd" * 32, "score": 0.9,
            "signal_type": "pdq", "image_png_b64": base64.b64encode(buf.getvalue()).decode()})
        log.append("incident", stream_id="s1", incident_id="i1", body={"status": "open"})

    async def scenario(client: TestClient[Any, Any], console: WebConsole, sent: Any) -> None:
        victor = await login(client, "victor")
        assert victor["blur_px"] == 24 and victor["store_images"] is True
        detail = await (await client.get("/api/incidents/i1")).json()
        assert detail["has_image"] is True and "image_png_b64" not in json.dumps(detail)
        r = await client.get("/api/incidents/i1/image")
        shown = Image.open(io.BytesIO(await r.read()))
        assert r.status == 200 and r.content_type == "image/png" and shown.mode == "L"  # greyscale (and blurred)
        r = await client.get("/api/incidents/i1/image?revealed=1")
        assert r.status == 200 and r.content_type == "image/png" and await r.read() == buf.getvalue()
        r = await post(client, victor, "/api/me/blur", {"blur_px": 40})
        assert (await r.json())["blur_px"] == 40 and console.users.get("victor").blur_px == 40  # type: ignore[union-attr]
        lena = await login(client, "lena")
        views = [e for e in (await (await client.get("/api/audit")).json())["entries"] if e["audit"] == "image_view"]
        assert [(v["user"], v["revealed"]) for v in views] == [("victor", True), ("victor", False)]
        assert views[1]["blur_px"] == 24
        report = await (await client.get("/api/incidents/i1/report.json")).json()
        assert report["report"]["fileDetails"][0]["fileViewedByEsp"] is True
        r = await client.get("/api/incidents/i1/report.xml")
        assert r.status == 200 and "<fileViewedByEsp>true</fileViewedByEsp>" in await r.text()
        assert lena["role"] == "lead"

    run(tmp_path, scenario, evidence={"store_images": True})
