"""The moderation console (Textual) against an embedded broker, driven headless with Textual's pilot.

The test plays the monitor: it publishes retained incidents, alerts, stream states and node status/health with a
plain aiomqtt client (MQTT 3.1.1), and answers commands by re-publishing the incident with the new status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from monitor.config.models import BrokerConfig
from monitor.console import tui, widgets
from monitor.console.actions import build_command
from monitor.console.state import ConsoleState
from monitor.console.tui import ModerationConsole
from monitor.contracts.alerts import build_alert, utc_iso
from pipelines.base import Finding
from test_streams.broker import EmbeddedBroker

PREFIX = "livesafe"
UUID_RE_LEN = 36


def _incident(iid: str, *, node: str = "n1", stream: str = "cam1", severity: str = "high", status: str = "open",
              last_seen: float | None = None, samples: int = 3, best: int = 5, threshold: int = 31,
              entry: str = "e1", label: str | None = "known one", history: list[dict[str, Any]] | None = None,
              bank: str = "bank1") -> dict[str, Any]:
    last = time.time() if last_seen is None else last_seen
    return {
        "schema_version": 1, "type": "incident", "incident_id": iid, "node": node, "stream_id": stream,
        "stream_url": f"rtmp://h/live/{stream}", "bank": bank, "entry_id": entry, "entry_label": label,
        "severity": severity, "status": status, "first_seen": utc_iso(last - 60), "last_seen": utc_iso(last),
        "first_media_time_s": 1.0, "last_media_time_s": 61.0, "samples": samples, "best_distance": best,
        "threshold": threshold, "alert_ids": [], "history": history or [], "updated_at": utc_iso(time.time()),
    }


def _stream_state(stream: str, state: str, detail: str, at: float, *, node: str = "n1") -> dict[str, Any]:
    """As monitor/app/engine.py `_publish_state` publishes it."""
    return {"node": node, "stream_id": stream, "stream_url": f"rtmp://h/live/{stream}", "state": state,
            "detail": detail, "attempt": 0, "retry_in_s": None, "at": at, "sampling": None}


def _health(node: str, at: float, *, streams: dict[str, int], outbox_depth: int) -> dict[str, Any]:
    """As monitor/app/engine.py `_health` publishes it."""
    return {"node": node, "at": at, "streams": streams, "outbox_depth": outbox_depth, "outbox_oldest_age_s": 0.0,
            "outbox_writable": True, "outbox_error": None, "held_in_memory": 0, "outbox_write_errors": 0,
            "held_total": 0, "dropped": 0, "alerts_sent": 0, "samples": 12, "open_incidents": 2, "suppressed": {},
            "quarantined": [], "sampling": {"admitted": 12, "dropped_full": 0}}


def _alert(*, node: str = "n1", stream: str = "cam9", entry: str = "e9", incident_id: str | None = None,
           distance: int = 7) -> dict[str, Any]:
    f = Finding("known_content", stream, 3.0, time.time(), "bank1", entry, "pdq", distance, 31, 88, "cd" * 32,
                "label9")
    a = build_alert(f, node=node, stream_url=f"rtmp://h/live/{stream}", observed_at=time.time())
    if incident_id is not None:
        a["incident_id"] = incident_id
    return a


async def _pub(client: aiomqtt.Client, topic: str, body: Any, *, retain: bool = False) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    await client.publish(f"{PREFIX}/{topic}", payload, qos=1, retain=retain)


async def _pub_incident(client: aiomqtt.Client, inc: dict[str, Any]) -> None:
    await _pub(client, f"{inc['node']}/incidents/{inc['incident_id']}", inc, retain=True)


def _client(broker: EmbeddedBroker, name: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, identifier=f"{name}-{uuid.uuid4().hex[:6]}",
                          protocol=aiomqtt.ProtocolVersion.V311)


async def _until(pilot: Any, pred: Callable[[], bool], what: str, timeout_s: float = 8.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def _table(app: ModerationConsole, name: str = "incidents") -> Any:
    return getattr(app, f"{name}_table")


def _row(app: ModerationConsole, key: str, name: str = "incidents") -> dict[str, str]:
    table = _table(app, name)
    cols = [str(c.value) for c in table.columns]
    return dict(zip(cols, (str(v) for v in table.get_row(key)), strict=True))


def _keys(app: ModerationConsole, name: str = "incidents") -> list[str]:
    return [str(r.key.value) for r in _table(app, name).ordered_rows]


def _select(app: ModerationConsole, key: str) -> None:
    table = _table(app)
    table.move_cursor(row=table.get_row_index(key), animate=False)


class Commands:
    """A separate subscriber on +/+/commands (another MQTT client in the same event loop)."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.client = _client(broker, "cmds")
        self.got: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Commands:
        await self.client.__aenter__()
        await self.client.subscribe("+/+/commands", qos=1)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for msg in self.client.messages:
            assert isinstance(msg.payload, bytes)
            self.got.append((str(msg.topic), json.loads(msg.payload)))

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)


def _check_command(cmd: dict[str, Any], *, action: str, incident_id: str, stream_id: str, moderator: str,
                   reason: str | None) -> None:
    assert set(cmd) == {"schema_version", "type", "command_id", "action", "incident_id", "stream_id", "moderator",
                        "reason", "at"}
    assert cmd["schema_version"] == 1 and cmd["type"] == "command"
    assert str(uuid.UUID(cmd["command_id"])) == cmd["command_id"]
    assert (cmd["action"], cmd["incident_id"], cmd["stream_id"]) == (action, incident_id, stream_id)
    assert cmd["moderator"] == moderator and cmd["reason"] == reason
    assert cmd["at"].endswith("Z") and abs(time.time() - _parse(cmd["at"])) < 60


def _parse(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------------------------------------ no UI


def test_state_keeps_incidents_by_id_and_counts_malformed() -> None:
    st = ConsoleState(PREFIX)
    inc = _incident("i-1")
    st.handle(f"{PREFIX}/n1/incidents/i-1", json.dumps(inc).encode())
    st.handle(f"{PREFIX}/n1/incidents/i-1", json.dumps({**inc, "samples": 9, "status": "acknowledged"}).encode())
    assert list(st.incidents) == ["i-1"] and st.incidents["i-1"].samples == 9
    for topic, payload in [("n1/incidents/i-2", b"{oops"), ("n1/incidents/i-2", b"[1]"),
                           ("n1/incidents/i-2", json.dumps({**inc, "incident_id": "i-2", "status": "??"}).encode()),
                           ("n1/incidents/i-3", json.dumps(_incident("other")).encode()),
                           ("n1/alerts/cam", json.dumps({"type": "alert"}).encode()), ("n1/bogus", b"{}"),
                           ("n1/status", b'{"state": "asleep"}'), ("n1/streams/s", b'{"state": 5}')]:
        st.handle(f"{PREFIX}/{topic}", payload)
    assert st.malformed == 8 and list(st.incidents) == ["i-1"]
    st.handle(f"{PREFIX}/n1/incidents/i-1", b"")  # retained message cleared: the incident is gone
    assert not st.incidents and st.malformed == 8


def test_state_provisional_rows_give_way_to_the_incident() -> None:
    st = ConsoleState(PREFIX)
    a1, a2 = _alert(distance=9), _alert(distance=4)
    for a in (a1, a2, a1):  # a1 twice: a retry is dropped
        st.handle(f"{PREFIX}/n1/alerts/cam9", json.dumps(a).encode())
    (row,) = st.provisional.values()
    assert (row.samples, row.best_distance, row.status, row.incident_id) == (2, 4, "provisional", None)
    st.handle(f"{PREFIX}/n1/alerts/cam9", json.dumps(_alert(incident_id="i-9")).encode())
    assert set(st.provisional) == {"~n1/cam9/bank1/e9", "i-9"}
    inc = _incident("i-9", stream="cam9", entry="e9")
    st.handle(f"{PREFIX}/n1/incidents/i-9", json.dumps(inc).encode())
    assert not st.provisional and list(st.incidents) == ["i-9"]
    st.handle(f"{PREFIX}/n1/alerts/cam9", json.dumps(_alert()).encode())  # part of the open incident now
    assert not st.provisional and st.malformed == 0


def test_state_order_cap_and_closed() -> None:
    st = ConsoleState(PREFIX)
    now = time.time()
    for i, (sev, age, status) in enumerate([("low", 0, "open"), ("high", 50, "open"), ("medium", 5, "escalated"),
                                            ("high", 10, "acknowledged"), ("high", 1, "closed")]):
        st.handle(f"{PREFIX}/n1/incidents/i{i}",
                  json.dumps(_incident(f"i{i}", severity=sev, last_seen=now - age, status=status)).encode())
    rows, total = st.visible()
    assert [r.key for r in rows] == ["i3", "i1", "i2", "i0"] and total == 4
    rows, total = st.visible(show_closed=True, limit=3)  # the newest 3 of 5, then sorted
    assert [r.key for r in rows] == ["i4", "i2", "i0"] and total == 5


def test_build_command_fields() -> None:
    cmd = build_command("dismiss", incident_id="i", stream_id="s", moderator="ann", reason="why", at=0)
    assert cmd["at"] == "1970-01-01T00:00:00.000Z" and len(cmd["command_id"]) == UUID_RE_LEN
    _check_command({**cmd, "at": utc_iso(time.time())}, action="dismiss", incident_id="i", stream_id="s",
                   moderator="ann", reason="why")


# ------------------------------------------------------------------------------------------------ the app


async def _display_scenario() -> None:
    now = time.time()
    async with EmbeddedBroker() as broker:
        cfg = BrokerConfig(url=broker.url)  # "auto": falls back to 3.1.1 with amqtt
        async with _client(broker, "monitor") as mon:
            # Retained before the console starts: it must get them on subscribe.
            await _pub_incident(mon, _incident("inc-old", severity="high", last_seen=now - 100, samples=3))
            await _pub_incident(mon, _incident("inc-med", severity="medium", last_seen=now - 1, stream="cam2",
                                               label=None, entry="e2"))
            await _pub(mon, "n1/streams/cam1", _stream_state("cam1", "live", "1280x720", now), retain=True)
            await _pub(mon, "n1/status", {"node": "n1", "state": "online", "at": now}, retain=True)
            await _pub(mon, "n1/health", _health("n1", now, streams={"live": 1}, outbox_depth=4), retain=True)
            app = ModerationConsole(cfg, moderator="ann", refresh_s=0.05)
            async with app.run_test(size=(160, 40)) as pilot:
                await _until(pilot, lambda: len(_keys(app)) == 2, "two incident rows")
                assert app.connected
                assert _keys(app) == ["inc-old", "inc-med"]  # severity first, then last seen
                old = _row(app, "inc-old")
                assert old["severity"] == "high" and old["status"] == "open" and old["stream"] == "cam1"
                assert old["bank"] == "bank1" and old["entry"] == "known one" and old["distance"] == "5/31"
                assert old["samples"] == "3" and old["id"] == "inc-old"[:8] and old["node"] == "n1"
                assert old["last"] == time.strftime("%H:%M:%S", time.gmtime(now - 100))
                assert _row(app, "inc-med")["entry"] == "e2"  # no label: the entry id
                await _until(pilot, lambda: _keys(app, "streams") == ["n1/cam1"], "stream row")
                assert _row(app, "n1/cam1", "streams")["state"] == "live"
                assert _row(app, "n1/cam1", "streams")["detail"] == "1280x720"
                await _until(pilot, lambda: _keys(app, "nodes") == ["n1"], "node row")
                node = _row(app, "n1", "nodes")
                assert node["state"] == "online" and node["outbox"] == "4" and "ago" in node["health"]

                # An update of the same incident: the row changes in place and moves up (newer last seen).
                await _pub_incident(mon, _incident("inc-old", severity="high", last_seen=now, samples=8, best=2,
                                                   status="acknowledged"))
                await _until(pilot, lambda: _row(app, "inc-old")["samples"] == "8", "updated row")
                assert _keys(app) == ["inc-old", "inc-med"]
                assert _row(app, "inc-old")["status"] == "acknowledged" and _row(app, "inc-old")["distance"] == "2/31"

                # Alerts before any incident message: provisional rows.
                await _pub(mon, "n2/alerts/cam9", _alert(node="n2"))
                await _pub(mon, "n1/alerts/cam7", _alert(stream="cam7", incident_id="inc-new"))
                await _until(pilot, lambda: len(_keys(app)) == 4, "provisional rows")
                assert _row(app, "inc-new")["status"] == "provisional"
                assert _row(app, "~n2/cam9/bank1/e9")["status"] == "provisional"
                await _pub_incident(mon, _incident("inc-new", stream="cam7", entry="e9", severity="low"))
                await _until(pilot, lambda: _row(app, "inc-new")["status"] == "open", "incident replaces it")
                assert len(_keys(app)) == 4 and _keys(app)[-1] == "inc-new"

                # Malformed messages are counted and shown; the console keeps going.
                await _pub(mon, "n1/incidents/bad", b"{not json", retain=True)
                await _pub(mon, "n1/alerts/cam1", {"type": "alert", "stream_id": "cam1"})
                await _pub(mon, "n1/incidents/bad2", {**_incident("bad2"), "status": "sleeping"})
                await _until(pilot, lambda: app.state.malformed == 3, "malformed count")
                await pilot.pause(0.2)
                log_text = "\n".join(str(line) for line in app.log_pane.lines)
                assert "malformed message on livesafe/n1/incidents/bad: not JSON" in log_text
                assert "malformed 3" in str(app.status_line.render())

                # Closed incidents leave the table; `c` shows them again.
                await _pub_incident(mon, _incident("inc-med", severity="medium", stream="cam2", status="closed"))
                await _until(pilot, lambda: "inc-med" not in _keys(app), "closed incident leaves")
                await pilot.press("c")
                await _until(pilot, lambda: "inc-med" in _keys(app), "shown with the toggle")
                assert _row(app, "inc-med")["status"] == "closed"
                await pilot.press("c")
                await _until(pilot, lambda: "inc-med" not in _keys(app), "hidden again")
                assert app.is_running
            await _pub(mon, "n1/incidents/bad", b"", retain=True)


def test_console_shows_incidents_streams_nodes_and_survives_bad_messages() -> None:
    asyncio.run(_display_scenario())


async def _actions_scenario(log_path: Path) -> None:
    async with EmbeddedBroker() as broker, Commands(broker) as cmds, _client(broker, "monitor") as mon:
        cfg = BrokerConfig(url=broker.url, protocol="3.1.1")
        await _pub_incident(mon, _incident("inc-a", node="n1", stream="cam1", last_seen=time.time()))
        await _pub_incident(mon, _incident("inc-b", node="n2", stream="cam2", severity="medium"))
        app = ModerationConsole(cfg, moderator="ann.s", actions_log=log_path, refresh_s=0.05)
        async with app.run_test(size=(160, 40)) as pilot:
            await _until(pilot, lambda: _keys(app) == ["inc-a", "inc-b"], "two rows")

            # a: acknowledge the selected incident (the first row).
            await pilot.press("a")
            await _until(pilot, lambda: len(cmds.got) == 1, "acknowledge command")
            topic, ack = cmds.got[0]
            assert topic == "livesafe/n1/commands"
            _check_command(ack, action="acknowledge", incident_id="inc-a", stream_id="cam1", moderator="ann.s",
                           reason=None)
            await _until(pilot, lambda: "pending acknowledge" in _row(app, "inc-a")["status"], "pending mark")
            # The monitor answers with the new status: the pending mark goes.
            await _pub_incident(mon, _incident("inc-a", status="acknowledged", history=[
                {"action": "acknowledge", "moderator": "ann.s", "at": ack["at"], "reason": "", "result": "ok"}]))
            await _until(pilot, lambda: _row(app, "inc-a")["status"] == "acknowledged", "acknowledged")

            # d: dismiss inc-b as a false positive; the reason is typed into the modal. Escape cancels.
            _select(app, "inc-b")
            await pilot.press("d")
            await _until(pilot, lambda: type(app.screen).__name__ == "ReasonScreen", "reason modal")
            # The tables keep updating under a modal.
            await _pub_incident(mon, _incident("inc-b", node="n2", stream="cam2", severity="medium", samples=11))
            await _until(pilot, lambda: _row(app, "inc-b")["samples"] == "11", "update under the modal")
            await pilot.press("x", "escape")
            await _until(pilot, lambda: type(app.screen).__name__ != "ReasonScreen", "modal cancelled")
            await pilot.press("d")
            await _until(pilot, lambda: type(app.screen).__name__ == "ReasonScreen", "reason modal")
            await pilot.press("enter")  # empty: refused, the modal stays
            assert type(app.screen).__name__ == "ReasonScreen"
            await pilot.press(*"cartoon", "space", *"lookalike")
            await pilot.press("enter")
            await _until(pilot, lambda: len(cmds.got) == 2, "dismiss command")
            topic, dismiss = cmds.got[1]
            assert topic == "livesafe/n2/commands"
            _check_command(dismiss, action="dismiss", incident_id="inc-b", stream_id="cam2", moderator="ann.s",
                           reason="cartoon lookalike")
            assert "pending dismiss" in _row(app, "inc-b")["status"]

            # t: terminate needs a confirmation; `n` cancels, `y` confirms.
            _select(app, "inc-a")
            await pilot.press("t")
            await _until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", "confirm modal")
            await pilot.press("n")
            await pilot.pause(0.3)
            assert len(cmds.got) == 2 and type(app.screen).__name__ != "ConfirmScreen"
            await pilot.press("t")
            await _until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", "confirm modal again")
            await pilot.press("y")
            await _until(pilot, lambda: len(cmds.got) == 3, "terminate command")
            topic, term = cmds.got[2]
            assert topic == "livesafe/n1/commands"
            _check_command(term, action="terminate", incident_id="inc-a", stream_id="cam1", moderator="ann.s",
                           reason=None)
            assert len({c["command_id"] for _, c in cmds.got}) == 3
            await pilot.pause(0.2)

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    commands = [e["command"] for e in lines if e["event"] == "command"]
    assert commands == [ack, dismiss, term]  # exactly what went over MQTT
    assert all(e["moderator"] == "ann.s" and e["logged_at"].endswith("Z") for e in lines)
    published = [e["command_id"] for e in lines if e["event"] == "published"]
    assert published == [ack["command_id"], dismiss["command_id"], term["command_id"]]
    (confirmed,) = [e for e in lines if e["event"] == "confirmed"]
    assert confirmed["command_id"] == ack["command_id"] and confirmed["status"] == "acknowledged"
    assert confirmed["result"] == "ok"


def test_acknowledge_dismiss_terminate_publish_commands_and_log_them(tmp_path: Path) -> None:
    asyncio.run(_actions_scenario(tmp_path / "actions.jsonl"))


async def _two_consoles_scenario() -> None:
    async with EmbeddedBroker() as broker, Commands(broker) as cmds, _client(broker, "monitor") as mon:
        cfg = BrokerConfig(url=broker.url, protocol="3.1.1")
        await _pub_incident(mon, _incident("inc-x", node="n3", stream="cam3"))
        one = ModerationConsole(cfg, moderator="ann", refresh_s=0.05)
        two = ModerationConsole(cfg, moderator="bob", refresh_s=0.05)
        async with one.run_test(size=(160, 40)) as p1, two.run_test(size=(160, 40)) as p2:
            await _until(p1, lambda: _keys(one) == ["inc-x"], "row in console one")
            await _until(p2, lambda: _keys(two) == ["inc-x"], "row in console two")
            await p2.press("e")
            await _until(p2, lambda: len(cmds.got) == 1, "escalate command")
            topic, cmd = cmds.got[0]
            assert topic == "livesafe/n3/commands" and cmd["action"] == "escalate" and cmd["moderator"] == "bob"
            assert "pending escalate" in _row(two, "inc-x")["status"]
            assert _row(one, "inc-x")["status"] == "open"  # only the sender marks it pending
            # The monitor applies it and re-publishes the incident: both consoles show the same.
            await _pub_incident(mon, _incident("inc-x", node="n3", stream="cam3", status="escalated", history=[
                {"action": "escalate", "moderator": "bob", "at": cmd["at"], "reason": "", "result": "ok"}]))
            await _until(p1, lambda: _row(one, "inc-x")["status"] == "escalated", "console one updated")
            await _until(p2, lambda: _row(two, "inc-x")["status"] == "escalated", "console two updated")
            # ann dismisses it; when the monitor says dismissed, it leaves both tables.
            await p1.press("d")
            await _until(p1, lambda: type(one.screen).__name__ == "ReasonScreen", "reason modal")
            await p1.press(*"dup")
            await p1.press("enter")
            await _until(p1, lambda: len(cmds.got) == 2, "dismiss command")
            assert cmds.got[1][1]["moderator"] == "ann" and cmds.got[1][1]["reason"] == "dup"
            await _pub_incident(mon, _incident("inc-x", node="n3", stream="cam3", status="dismissed"))
            await _until(p1, lambda: _keys(one) == [], "gone from console one")
            await _until(p2, lambda: _keys(two) == [], "gone from console two")


def test_two_consoles_stay_consistent() -> None:
    asyncio.run(_two_consoles_scenario())


async def _reconnect_scenario() -> None:
    broker = await EmbeddedBroker().__aenter__()
    cfg = BrokerConfig(url=broker.url, protocol="3.1.1", connect_timeout_s=2)
    async with _client(broker, "monitor") as mon:
        await _pub_incident(mon, _incident("inc-r"))
    app = ModerationConsole(cfg, moderator="ann", refresh_s=0.05)
    async with app.run_test(size=(160, 40)) as pilot:
        await _until(pilot, lambda: _keys(app) == ["inc-r"], "row")
        await broker.__aexit__(None, None, None)  # the broker goes away
        await _until(pilot, lambda: "○ disconnected: lost the broker" in str(app.status_line.render()),
                     "the status line says so")
        assert not app.connected
        await pilot.press("a")  # queued while the broker is away
        await _until(pilot, lambda: "queued" in _row(app, "inc-r")["status"], "queued mark")
        # Come back just after a failed retry, so the subscriber below is there before the console is.
        failed = app.reconnects
        await _until(pilot, lambda: app.reconnects > failed, "a failed retry")
        async with EmbeddedBroker(broker.port) as again, Commands(again) as cmds:
            await _until(pilot, lambda: app.connected, "reconnected", timeout_s=10)
            await _until(pilot, lambda: len(cmds.got) == 1, "queued command sent after reconnect")
            assert cmds.got[0][1]["action"] == "acknowledge"
            await _until(pilot, lambda: "queued" not in _row(app, "inc-r")["status"], "sent: no longer queued")
            assert app.is_running


def test_reconnects_and_sends_queued_commands() -> None:
    asyncio.run(_reconnect_scenario())


def test_run_tui_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made: list[ModerationConsole] = []

    def fake_run(self: ModerationConsole) -> None:
        made.append(self)

    monkeypatch.setattr(ModerationConsole, "run", fake_run)
    root = logging.getLogger()
    before = root.handlers[:]
    cfg = BrokerConfig(url="mqtt://127.0.0.1:1", topic_prefix="p/q")
    assert tui.run_tui(cfg, moderator="ann", node_filter="n7", actions_log=tmp_path / "a.jsonl") == 0
    assert root.handlers == before
    (app,) = made
    assert (app.moderator, app.node_filter, app.actions_log) == ("ann", "n7", tmp_path / "a.jsonl")
    assert app._topics() == ["p/q/n7/alerts/+", "p/q/n7/incidents/+", "p/q/n7/streams/+", "p/q/n7/status",
                             "p/q/n7/health"]


# ------------------------------------------------------------------------------------------------ finding 5


async def _markup_scenario() -> list[str]:
    from textual.app import App
    from textual.widgets import Label

    shown: list[str] = []

    class Host(App[None]):
        pass

    app = Host()
    async with app.run_test(size=(120, 30)) as pilot:
        # Before the fix: a MarkupError ("closing tag '[/]' has nothing to close") from the dialog.
        prompt = "Terminate stream cam1 on node n1?\nincident 12345678 on stream cam1 ([/] [bold]x[/bold] [link=x])"
        app.push_screen(widgets.ConfirmScreen(prompt, "Terminate"))
        await pilot.pause()
        shown.append(str(app.screen.query_one(Label).render()))
        app.pop_screen()
        app.push_screen(widgets.ReasonScreen("Dismiss entry [/] as a false positive. Why?\x1b[2J"))
        await pilot.pause()
        shown.append(str(app.screen.query(Label).first().render()))
    return shown


def test_finding5_entry_labels_are_drawn_as_text_not_markup() -> None:
    confirm, reason = asyncio.run(_markup_scenario())
    assert "([/] [bold]x[/bold] [link=x])" in confirm
    assert "entry [/] as" in reason and "\x1b" not in reason and "\\x1b[2J" in reason

