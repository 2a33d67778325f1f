"""`monitor console` on a terminal: a moderation console (Textual) that people can work a shift in.

It subscribes to everything the monitor publishes (topics in monitor/contracts/topics.py, messages in
monitor/contracts/) and shows:

* open incidents, one row per incident_id, sorted by severity then last seen, updated in place from the retained
  incident messages (the monitor is the source of truth, so several consoles stay consistent). Alerts that arrive
  before or without an incident message show as provisional rows;
* per-stream state and per-node status/health;
* a log pane: connection changes, malformed messages (counted, never fatal), commands sent and confirmed.

Actions on the selected incident publish a command on `{prefix}/{node}/commands` (QoS 1); the row shows
"pending" until the monitor re-publishes the incident with the new status. Commands wait in a queue while the
broker is away and go out after the reconnect; each is also appended to a local JSON-lines file when one is given.

This module draws and binds keys. What the console knows is monitor/console/state.py (plain Python, tested
without a terminal), what it sends monitor/console/actions.py, the cells and modals monitor/console/widgets.py;
the connection is monitor/delivery/connection.py's `MqttConnection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Log, Static
from textual.widgets.data_table import CellDoesNotExist

from monitor.common.backoff import Backoff
from monitor.common.errors import BrokerError
from monitor.common.safetext import describe_char, forbidden_char, printable
from monitor.config.models import BrokerConfig
from monitor.console.actions import ActionsLog, CommandQueue, Outgoing, build_command
from monitor.console.state import ALLOWED_FROM, MAX_ROWS, ConsoleState, IncidentRow, subscriptions
from monitor.console.widgets import (
    INCIDENT_COLUMNS,
    NODE_COLUMNS,
    STREAM_COLUMNS,
    ConfirmScreen,
    ReasonScreen,
    incident_cells,
    node_cells,
    stream_cells,
    sync_table,
)
from monitor.contracts import topics
from monitor.delivery.connection import CONSOLE_RECONNECT_MAX_S, RECONNECT_INITIAL_S, MqttConnection, protocol_name

log = logging.getLogger(__name__)


class ModerationConsole(App[int]):
    """The moderation console. See the module docstring."""

    TITLE = "livestream safety monitor"
    CSS = """
    #status { height: 1; background: $boost; padding: 0 1; }
    #status.down { background: $error; color: $text; }
    #incidents { height: 1fr; border: round $primary; }
    #bottom { height: 14; }
    #streams { width: 1fr; height: 100%; border: round $secondary; }
    #nodes { width: 1fr; height: 100%; border: round $secondary; }
    #log { width: 1fr; height: 100%; border: round $secondary; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "act('acknowledge')", "Acknowledge"),
        Binding("e", "act('escalate')", "Escalate"),
        Binding("d", "act('dismiss')", "Dismiss (false positive)"),
        Binding("t", "act('terminate')", "Terminate stream"),
        Binding("c", "toggle_closed", "Show closed"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, cfg: BrokerConfig, *, moderator: str, node_filter: str | None = None,
                 actions_log: Path | None = None, max_rows: int = MAX_ROWS, refresh_s: float = 0.25) -> None:
        super().__init__()
        if not moderator.strip():
            raise ValueError("moderator name must not be empty")
        bad = forbidden_char(moderator)
        if bad is not None:
            raise ValueError(f"moderator name holds {describe_char(bad[1])} at position {bad[0]}")
        self.cfg = cfg
        self.moderator = moderator
        self.node_filter = node_filter
        self.actions_log = actions_log
        self.max_rows = max_rows
        self.refresh_s = refresh_s
        self.state = ConsoleState(cfg.topic_prefix)
        self.client_id = f"console-{uuid.uuid4().hex[:12]}"
        self.connection = MqttConnection(
            cfg, self.client_id, subscriptions=self._topics(), on_message=self.state.handle,
            on_connected=self._on_connected, on_lost=self._on_lost,
            backoff=Backoff(RECONNECT_INITIAL_S, CONSOLE_RECONNECT_MAX_S))
        self.connected = False
        self.connection_text = "connecting…"
        self.show_closed = False
        self.commands_sent = 0
        self._outbox = CommandQueue()
        self._actions = ActionsLog(actions_log, moderator)
        self._drawn: dict[str, int] = {}
        self._total_rows = 0
        self._last_clock = 0.0
        self._status_text = ""

    @property
    def reconnects(self) -> int:
        """Connections lost or refused so far."""
        return self.connection.reconnects

    # ----------------------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        # Kept as attributes: App.query_one looks only at the top screen, which is a modal at times.
        self.status_line = Static(self.connection_text, id="status", markup=False)
        self.incidents_table: DataTable[Text] = DataTable(id="incidents", cursor_type="row", zebra_stripes=True)
        self.streams_table: DataTable[Text] = DataTable(id="streams", cursor_type="none")
        self.nodes_table: DataTable[Text] = DataTable(id="nodes", cursor_type="none")
        self.log_pane = Log(id="log", max_lines=2000)
        yield self.status_line
        yield self.incidents_table
        with Horizontal(id="bottom"):
            yield self.streams_table
            yield self.nodes_table
            yield self.log_pane
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"moderator {self.moderator}" + (f" · node {self.node_filter}" if self.node_filter else "")
        for table, columns, title in ((self.incidents_table, INCIDENT_COLUMNS, "open incidents"),
                                      (self.streams_table, STREAM_COLUMNS, "streams"),
                                      (self.nodes_table, NODE_COLUMNS, "nodes")):
            table.border_title = title
            for key, label in columns:
                table.add_column(label, key=key)
        self.log_pane.border_title = "log"
        self.incidents_table.focus()
        self.set_interval(self.refresh_s, self._refresh_ui)
        self.run_worker(self._mqtt_main(), name="mqtt", group="mqtt", exit_on_error=False)
        self._refresh_ui()

    # ----------------------------------------------------------------------------- UI refresh (batched)

    def _refresh_ui(self) -> None:
        if not self.incidents_table.is_attached:  # shutting down
            return
        now = time.time()
        st = self.state
        st.flag_overdue(now)
        if self._drawn.get("incidents") != st.incidents_version:
            self._drawn["incidents"] = st.incidents_version
            self._draw_incidents(now)
        if self._drawn.get("streams") != st.streams_version:
            self._drawn["streams"] = st.streams_version
            streams = sorted(st.streams.values(), key=lambda s: (s.node, s.stream_id))[:self.max_rows]
            sync_table(self.streams_table, [stream_cells(s) for s in streams], "stream")
        if self._drawn.get("nodes") != st.nodes_version or now - self._last_clock >= 1.0:  # ages tick
            self._drawn["nodes"] = st.nodes_version
            self._last_clock = now
            nodes = sorted(st.nodes.values(), key=lambda n: n.node)
            sync_table(self.nodes_table, [node_cells(n, now) for n in nodes], "node")
        self._drain_events()
        self._draw_status()

    def _draw_incidents(self, now: float) -> None:
        rows, total = self.state.visible(show_closed=self.show_closed, limit=self.max_rows)
        self._total_rows = total
        table = self.incidents_table
        sync_table(table, [(r.key, incident_cells(r, self.state.pending.get(r.key), now)) for r in rows], "id")
        shown = f"{len(rows)} of {total}" if total > len(rows) else str(total)
        table.border_title = f"{'incidents (with closed)' if self.show_closed else 'open incidents'}: {shown}"

    def _drain_events(self) -> None:
        st = self.state
        lines: list[str] = []
        while st.log_lines:
            lines.append(printable(st.log_lines.popleft()))  # text from messages: one inert line each
        for c in st.confirmations:
            lines.append(f"✓ {c.pending.action} on incident {c.incident_id[:8]} confirmed by the monitor: "
                         f"{c.status}{'' if c.result is None else f' ({c.result})'}")
            self._record({"event": "confirmed", "command_id": c.pending.command_id, "incident_id": c.incident_id,
                          "action": c.pending.action, "status": c.status, "result": c.result})
        st.confirmations.clear()
        if lines:
            if len(lines) > 200:  # a flood of bad messages: show the latest, say how many were skipped
                lines = [f"… {len(lines) - 200} more lines not shown", *lines[-200:]]
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            self.log_pane.write_lines(f"{stamp} {line}" for line in lines)

    def _draw_status(self) -> None:
        st = self.state
        queued = len(self._outbox)
        parts = [
            ("● " if self.connected else "○ ") + self.connection_text,
            f"open {st.open_count()}" + (f" (showing {self.max_rows})" if self._total_rows > self.max_rows else ""),
            f"pending {len(st.pending)}",
        ]
        if queued:
            parts.append(f"{queued} command(s) waiting for the broker")
        parts.append(f"malformed {st.malformed}")
        parts.append(f"moderator {self.moderator}")
        text = " · ".join(parts)
        if text != self._status_text:  # redraw only on change
            self._status_text = text
            self.status_line.update(text)
            self.status_line.set_class(not self.connected, "down")

    def log_line(self, line: str) -> None:
        self.state.log_lines.append(line)

    # ----------------------------------------------------------------------------- MQTT

    def _topics(self) -> list[str]:
        return subscriptions(self.cfg.topic_prefix, self.node_filter)

    async def _mqtt_main(self) -> None:
        """Receive and send until the app exits; the connection reconnects with backoff on its own."""
        self.connection_text = f"connecting to {self.cfg.url}…"
        await self.connection.run(asyncio.Event(), session=self._send)

    def _on_connected(self) -> None:
        self.connected = True
        self.connection_text = f"connected to {self.cfg.url} (MQTT {protocol_name(self.connection.protocol)})"
        self.log_line(self.connection_text)

    def _on_lost(self, exc: Exception, wait_s: float) -> None:
        if isinstance(exc, BrokerError):
            why = str(exc)
        elif isinstance(exc, aiomqtt.MqttError):
            why = f"lost the broker ({exc})"
        else:  # a bug: show it and try again, the connection loop never dies
            log.error("console MQTT loop", exc_info=exc)
            why = f"unexpected error {type(exc).__name__}: {exc}"
        self.connected = False
        self.connection_text = f"disconnected: {why}; retrying in {wait_s:.1f} s"
        self.log_line(f"! {self.connection_text}")

    async def _send(self, client: aiomqtt.Client) -> None:
        """While connected: publish the queued commands in order; one stays queued until the broker takes it."""
        while True:
            while (out := self._outbox.head()) is not None:
                payload = json.dumps(out.command, separators=(",", ":")).encode()
                await client.publish(out.topic, payload, qos=1)  # waits for PUBACK; MqttError keeps it queued
                self._outbox.done()
                self.commands_sent += 1
                self.state.mark_published(out.key, out.command_id)
                self.log_line(f"→ sent {out.command['action']} for incident {out.command['incident_id'][:8]} "
                              f"on {out.topic}")
                self._record({"event": "published", "command_id": out.command_id, "topic": out.topic})
            self._outbox.wake.clear()
            await self._outbox.wake.wait()

    # ----------------------------------------------------------------------------- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ("act", "toggle_closed") and isinstance(self.screen, ModalScreen))

    def selected(self) -> IncidentRow | None:
        table = self.incidents_table
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None
        return self.state.row(key) if key is not None else None

    def action_act(self, action: str) -> None:
        row = self.selected()
        if row is None:
            self.notify("no incident selected", severity="warning")
            return
        if row.incident_id is None:
            self.notify("the monitor has not opened an incident for this alert yet", severity="warning")
            return
        if row.status not in ALLOWED_FROM[action]:
            self.notify(f"cannot {action} an incident that is {row.status}", severity="warning", markup=False)
            return
        what = f"incident {row.incident_id[:8]} on stream {row.stream_id} ({row.entry_label or row.entry_id})"
        if action == "dismiss":
            def dismissed(reason: str | None) -> None:
                if reason:
                    self.send_command(row, "dismiss", reason)
            self.push_screen(ReasonScreen(f"Dismiss {what} as a false positive. Why?"), dismissed)
        elif action == "terminate":
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self.send_command(row, "terminate")
            self.push_screen(ConfirmScreen(f"Terminate stream {row.stream_id} on node {row.node}?\n{what}",
                                           "Terminate"), confirmed)
        else:
            self.send_command(row, action)

    def send_command(self, row: IncidentRow, action: str, reason: str | None = None) -> dict[str, Any] | None:
        """Queue a command for the incident's node, record it locally and mark the row pending. None (and a
        notification) when the command breaks its contract, so the monitor would refuse it."""
        assert row.incident_id is not None
        try:
            command = build_command(action, incident_id=row.incident_id, stream_id=row.stream_id,
                                    moderator=self.moderator, reason=reason)
        except ValueError as exc:
            self.notify(f"not sent: {exc}", severity="error", markup=False)
            return None
        topic = topics.commands(self.cfg.topic_prefix, row.node)
        self._record({"event": "command", "topic": topic, "command": command})
        self._outbox.put(Outgoing(row.key, topic, command))
        self.state.mark_pending(row.key, action, command["command_id"])
        self.log_line(f"{action} incident {row.incident_id[:8]} (stream {row.stream_id})"
                      + (f": {reason}" if reason else "") + ("" if self.connected else " — queued until reconnect"))
        self._refresh_ui()
        return command

    def _record(self, entry: dict[str, Any]) -> None:
        """Append one line to the local actions log, if one was given; say so when it cannot be written."""
        try:
            self._actions.append(entry)
        except OSError as exc:
            self.log_line(f"! cannot write the actions log {self.actions_log}: {exc}")
            self.notify(f"cannot write the actions log: {exc}", severity="error", markup=False)

    def action_toggle_closed(self) -> None:
        self.show_closed = not self.show_closed
        self.state.incidents_version += 1
        self._refresh_ui()


class _PaneHandler(logging.Handler):
    """Sends log records to the console's log pane while the TUI owns the terminal."""

    def __init__(self, app: ModerationConsole) -> None:
        super().__init__(logging.WARNING)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.app.log_line(f"{record.levelname.lower()}: {record.getMessage()}")


def run_tui(cfg: BrokerConfig, *, moderator: str, node_filter: str | None = None,
            actions_log: Path | None = None) -> int:
    """Run the moderation console on this terminal until the moderator quits. Returns the exit status (0)."""
    app = ModerationConsole(cfg, moderator=moderator, node_filter=node_filter, actions_log=actions_log)
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = _PaneHandler(app)
    root.handlers = [handler]  # stderr output would scribble over the screen
    try:
        result = app.run()
    finally:
        root.handlers = saved
    return 0 if result is None else result
