"""`monitor console` on a terminal: a moderation console (Textual) that people can work a shift in.

It subscribes to everything the monitor publishes (see `monitor.contracts.topics` for the contract) and shows:

* open incidents, one row per incident_id, sorted by severity then last seen, updated in place from the retained
  incident messages (the monitor is the source of truth, so several consoles stay consistent). Alerts that arrive
  before or without an incident message show as provisional rows;
* per-stream state and per-node status/health;
* a log pane: connection changes, malformed messages (counted, never fatal), commands sent and confirmed.

Actions on the selected incident publish a command on `{prefix}/{node}/commands` (QoS 1); the row shows
"pending" until the monitor re-publishes the incident with the new status. Commands wait in a queue while the
broker is away and go out after the reconnect; each is also appended to a local JSON-lines file when one is given.

The MQTT side (`ConsoleState`) is plain Python so it can be tested without a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt
from rich.cells import cell_len
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, Label, Log, Static
from textual.widgets.data_table import CellDoesNotExist

from monitor.common.errors import BrokerError
from monitor.common.safetext import describe_char, forbidden_char, printable
from monitor.config.models import BrokerConfig
from monitor.console.printer import AlertValidator
from monitor.contracts import topics
from monitor.contracts.alerts import utc_iso
from monitor.delivery.mqtt import make_client, negotiate_protocol

log = logging.getLogger(__name__)

ACTIONS = ("acknowledge", "escalate", "dismiss", "terminate")
STATUSES = ("open", "acknowledged", "escalated", "dismissed", "terminated", "closed")
FINAL_STATUSES = frozenset({"dismissed", "terminated", "closed"})
EXPECTED_STATUS = {"acknowledge": "acknowledged", "escalate": "escalated", "dismiss": "dismissed",
                   "terminate": "terminated"}
# Which actions make sense from which status (the monitor decides; this only spares a useless command).
ALLOWED_FROM = {
    "acknowledge": frozenset({"open", "provisional"}),
    "escalate": frozenset({"open", "acknowledged", "provisional"}),
    "dismiss": frozenset({"open", "acknowledged", "escalated", "provisional"}),
    "terminate": frozenset({"open", "acknowledged", "escalated", "provisional"}),
}
SEVERITY_RANK = {"high": 0, "medium": 1, "low": 3}  # unknown severity (provisional rows) ranks 2
SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan"}
STATUS_STYLE = {"open": "bold", "acknowledged": "green", "escalated": "bold magenta", "provisional": "dim italic",
                "dismissed": "dim", "terminated": "dim red", "closed": "dim"}

MAX_ROWS = 500  # newest open incidents shown; the status line says how many more there are
KEEP_FINAL = 2000  # closed/dismissed/terminated incidents remembered (for the "show closed" toggle)
PENDING_OVERDUE_S = 30.0  # a command the monitor has not answered by then is flagged in the row and the log
SEEN_ALERTS = 20000  # alert_ids remembered for dropping duplicates (delivery is at least once)


# --------------------------------------------------------------------------------------------- helpers


def _ts(value: Any) -> float:
    """Seconds since the epoch from an ISO 8601 string or a number; 0.0 when unknown."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return 0.0
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    return 0.0


def _clock(ts: float, now: float | None = None) -> str:
    """HH:MM:SS (UTC) today, MM-DD HH:MM on other days, "-" when unknown."""
    if ts <= 0:
        return "-"
    dt = datetime.fromtimestamp(ts, UTC)
    today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
    return dt.strftime("%H:%M:%S") if dt.date() == today else dt.strftime("%m-%d %H:%M")


def _age(ts: float, now: float) -> str:
    if ts <= 0:
        return ""
    s = max(0.0, now - ts)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.0f}h ago"


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    return None


def build_command(action: str, *, incident_id: str, stream_id: str, moderator: str,
                  reason: str | None = None, at: float | None = None) -> dict[str, Any]:
    """A command of the contract in `monitor.contracts.topics` with a fresh command_id and a UTC ISO 8601 `at`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return {
        "schema_version": 1,
        "type": "command",
        "command_id": str(uuid.uuid4()),
        "action": action,
        "incident_id": incident_id,
        "stream_id": stream_id,
        "moderator": moderator,
        "reason": reason,
        "at": utc_iso(time.time() if at is None else at),
    }


# --------------------------------------------------------------------------------------------- state


@dataclass
class Pending:
    """A command this console sent and the monitor has not answered yet."""

    action: str
    command_id: str
    sent_at: float
    history_len: int
    published: bool = False
    overdue: bool = False  # no answer from the monitor within PENDING_OVERDUE_S


@dataclass
class IncidentRow:
    key: str  # incident_id, or "~node/stream/bank/entry" for a provisional row from an alert without one
    node: str
    incident_id: str | None
    stream_id: str
    bank: str
    entry_id: str
    entry_label: str | None
    severity: str
    status: str  # one of STATUSES, or "provisional"
    first_seen: float
    last_seen: float
    samples: int
    best_distance: int | None
    threshold: int | None
    history_len: int = 0
    alert_ids: set[str] = field(default_factory=set)

    @property
    def provisional(self) -> bool:
        return self.status == "provisional"

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def triple(self) -> tuple[str, str, str, str]:
        return (self.node, self.stream_id, self.bank, self.entry_id)


@dataclass
class StreamRow:
    node: str
    stream_id: str
    state: str
    detail: str
    attempt: int | None
    updated: float


@dataclass
class NodeRow:
    node: str
    state: str = "?"  # online / offline from the retained status; "?" until one arrives
    status_at: float = 0.0
    health_at: float = 0.0
    outbox_depth: int | None = None
    streams: dict[str, int] = field(default_factory=dict)


@dataclass
class Confirmation:
    pending: Pending
    incident_id: str
    status: str
    result: str | None


class ConsoleState:
    """Everything the console knows, fed by MQTT messages; no UI. The monitor's retained messages win."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.incidents: dict[str, IncidentRow] = {}
        self.provisional: dict[str, IncidentRow] = {}
        self.streams: dict[tuple[str, str], StreamRow] = {}
        self.nodes: dict[str, NodeRow] = {}
        self.pending: dict[str, Pending] = {}
        self.malformed = 0
        self.messages = 0
        self.alerts = 0
        self.log_lines: deque[str] = deque(maxlen=1000)
        self.confirmations: list[Confirmation] = []
        self._validator = AlertValidator()
        self._seen_alerts: set[str] = set()
        self._seen_order: deque[str] = deque()
        # Bumped on every change, per area, so the UI redraws only what changed and at most a few times a second.
        self.incidents_version = 0
        self.streams_version = 0
        self.nodes_version = 0

    # ----------------------------------------------------------------------------- intake

    def handle(self, topic: str, payload: bytes) -> None:
        """One MQTT message. Never raises: a bad message is counted and logged."""
        self.messages += 1
        try:
            self._dispatch(topic, payload)
        except _Malformed as exc:
            self._bad(topic, str(exc))
        except Exception as exc:  # a bug or an unforeseen payload must not take the console down
            self._bad(topic, f"{type(exc).__name__}: {exc}")

    def _bad(self, topic: str, why: str) -> None:
        self.malformed += 1
        self.log_lines.append(f"! malformed message on {topic}: {why}")

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self.prefix + "/"):
            raise _Malformed("outside the topic prefix")
        parts = topic[len(self.prefix) + 1:].split("/")
        if len(parts) == 2 and parts[1] in ("status", "health"):
            body = _json_object(payload)
            if body is None:  # a cleared retained message
                if parts[1] == "status":
                    self.nodes.pop(parts[0], None)
                elif parts[0] in self.nodes:
                    self.nodes[parts[0]].health_at, self.nodes[parts[0]].outbox_depth = 0.0, None
                self.nodes_version += 1
                return
            if parts[1] == "status":
                self._node_status(parts[0], body)
            else:
                self._node_health(parts[0], body)
        elif len(parts) == 3 and parts[1] == "alerts":
            body = _json_object(payload)
            if body is None:
                raise _Malformed("empty payload")
            self._alert(parts[0], parts[2], body)
        elif len(parts) == 3 and parts[1] == "incidents":
            body = _json_object(payload)
            if body is None:  # the monitor cleared the retained incident
                self._forget_incident(parts[2])
                return
            self._incident(parts[0], parts[2], body)
        elif len(parts) == 3 and parts[1] == "streams":
            body = _json_object(payload)
            if body is None:
                if self.streams.pop((parts[0], parts[2]), None) is not None:
                    self.streams_version += 1
                return
            self._stream(parts[0], parts[2], body)
        else:
            raise _Malformed("unexpected topic")

    def _node_status(self, node: str, body: dict[str, Any]) -> None:
        state = body.get("state")
        if state not in ("online", "offline"):
            raise _Malformed(f"node status state {state!r} is not online/offline")
        row = self.nodes.setdefault(node, NodeRow(node))
        if row.state != state and row.state != "?":
            self.log_lines.append(f"node {node} is {state}")
        row.state = state
        row.status_at = _ts(body.get("at"))
        self.nodes_version += 1

    def _node_health(self, node: str, body: dict[str, Any]) -> None:
        row = self.nodes.setdefault(node, NodeRow(node))
        row.health_at = _ts(body.get("at")) or time.time()
        row.outbox_depth = _opt_int(body.get("outbox_depth"))
        streams = body.get("streams")
        row.streams = ({str(k): n for k, v in streams.items() if (n := _opt_int(v)) is not None}
                       if isinstance(streams, dict) else {})
        self.nodes_version += 1

    def _stream(self, node: str, stream_id: str, body: dict[str, Any]) -> None:
        sid = body.get("stream_id", stream_id)
        state = body.get("state")
        if not isinstance(sid, str) or not isinstance(state, str):
            raise _Malformed("stream state needs string stream_id and state")
        detail = body.get("detail")
        self.streams[(node, sid)] = StreamRow(node, sid, state, "" if detail is None else str(detail),
                                              _opt_int(body.get("attempt")), time.time())
        self.streams_version += 1

    def _alert(self, node: str, stream_id: str, body: dict[str, Any]) -> None:
        incident_id = body.get("incident_id")
        if incident_id is not None and (not isinstance(incident_id, str) or not incident_id):
            raise _Malformed("incident_id must be a non-empty string")
        # The published alert schema predates incidents: check it without the incident_id it may now carry.
        problem = self._validator.problem({k: v for k, v in body.items() if k != "incident_id"})
        if problem is not None:
            raise _Malformed(problem)
        alert_id: str = body["alert_id"]
        if alert_id in self._seen_alerts:
            return
        self._seen_alerts.add(alert_id)
        self._seen_order.append(alert_id)
        if len(self._seen_order) > SEEN_ALERTS:
            self._seen_alerts.discard(self._seen_order.popleft())
        self.alerts += 1
        node = body["node"]
        triple = (node, body["stream_id"], body["bank"], body["entry_id"])
        if incident_id is not None and incident_id in self.incidents:
            return  # the incident message is the truth; it will carry this sample
        if incident_id is None and any(r.triple == triple and not r.final for r in self.incidents.values()):
            return
        key = incident_id or "~" + "/".join(triple)
        seen = _ts(body["observed_at"])
        row = self.provisional.get(key)
        if row is None:
            row = IncidentRow(key=key, node=node, incident_id=incident_id, stream_id=body["stream_id"],
                              bank=body["bank"], entry_id=body["entry_id"], entry_label=body.get("entry_label"),
                              severity="?", status="provisional", first_seen=seen, last_seen=seen, samples=0,
                              best_distance=body["distance"], threshold=body["threshold"])
            self.provisional[key] = row
            self.log_lines.append(f"alert: stream {row.stream_id} bank {row.bank} entry "
                                  f"{row.entry_label or row.entry_id} distance {body['distance']}/{body['threshold']}"
                                  f" (no incident yet)")
        row.samples += 1
        row.alert_ids.add(alert_id)
        row.first_seen = min(row.first_seen, seen)
        row.last_seen = max(row.last_seen, seen)
        if row.best_distance is None or body["distance"] < row.best_distance:
            row.best_distance = body["distance"]
        self.incidents_version += 1

    def _incident(self, node: str, topic_id: str, body: dict[str, Any]) -> None:
        if body.get("type") != "incident":
            raise _Malformed("type is not 'incident'")
        iid = body.get("incident_id")
        if not isinstance(iid, str) or not iid:
            raise _Malformed("incident_id must be a non-empty string")
        if iid != topic_id:
            raise _Malformed(f"incident_id {iid!r} differs from the topic's {topic_id!r}")
        status = body.get("status")
        if status not in STATUSES:
            raise _Malformed(f"status {status!r} is not one of {', '.join(STATUSES)}")
        stream_id = body.get("stream_id")
        if not isinstance(stream_id, str) or not stream_id:
            raise _Malformed("stream_id must be a non-empty string")
        history = body.get("history")
        history = history if isinstance(history, list) else []
        label = body.get("entry_label")
        severity = body.get("severity")
        row = IncidentRow(
            key=iid, node=str(body.get("node") or node), incident_id=iid, stream_id=stream_id,
            bank=str(body.get("bank") or ""), entry_id=str(body.get("entry_id") or ""),
            entry_label=label if isinstance(label, str) else None,
            severity=severity if isinstance(severity, str) and severity else "?", status=status,
            first_seen=_ts(body.get("first_seen")), last_seen=_ts(body.get("last_seen")),
            samples=_opt_int(body.get("samples")) or 0, best_distance=_opt_int(body.get("best_distance")),
            threshold=_opt_int(body.get("threshold")), history_len=len(history),
        )
        old = self.incidents.get(iid)
        if old is not None and old.status != status:
            self.log_lines.append(f"incident {iid[:8]} ({stream_id}) is {status}{_last_by(history)}")
        elif old is None and not row.final:
            self.log_lines.append(f"incident {iid[:8]}: stream {stream_id} bank {row.bank} entry "
                                  f"{row.entry_label or row.entry_id} ({row.severity}, {status})")
        self.incidents[iid] = row
        # The monitor's incident replaces any provisional row made from its alerts.
        self.provisional.pop(iid, None)
        self.provisional.pop("~" + "/".join(row.triple), None)
        self._check_pending(row, history)
        self.incidents_version += 1
        if len(self.incidents) > KEEP_FINAL * 2:
            self._prune_final()

    def _check_pending(self, row: IncidentRow, history: list[Any]) -> None:
        p = self.pending.get(row.key)
        if p is None:
            return
        answered = [h for h in history[p.history_len:] if isinstance(h, dict) and h.get("action") == p.action]
        if row.status == EXPECTED_STATUS[p.action] or answered or (row.final and p.action not in ("dismiss",
                                                                                                   "terminate")):
            del self.pending[row.key]
            result = answered[-1].get("result") if answered else None
            self.confirmations.append(Confirmation(p, row.key, row.status,
                                                   None if result is None else str(result)))

    def _forget_incident(self, incident_id: str) -> None:
        gone = [self.incidents.pop(incident_id, None), self.provisional.pop(incident_id, None)]
        if any(r is not None for r in gone):
            self.incidents_version += 1
        self.pending.pop(incident_id, None)

    def _prune_final(self) -> None:
        final = sorted((r for r in self.incidents.values() if r.final), key=lambda r: r.last_seen)
        for r in final[:max(0, len(final) - KEEP_FINAL)]:
            del self.incidents[r.key]

    # ----------------------------------------------------------------------------- views

    def row(self, key: str) -> IncidentRow | None:
        return self.incidents.get(key) or self.provisional.get(key)

    def mark_pending(self, key: str, action: str, command_id: str) -> None:
        row = self.row(key)
        self.pending[key] = Pending(action, command_id, time.time(), row.history_len if row else 0)
        self.incidents_version += 1

    def visible(self, *, show_closed: bool = False, limit: int = MAX_ROWS) -> tuple[list[IncidentRow], int]:
        """Rows to show, in display order, and how many qualified in all (the newest `limit` are kept)."""
        rows = [r for r in self.incidents.values() if show_closed or not r.final]
        rows += self.provisional.values()
        total = len(rows)
        if total > limit:
            rows.sort(key=lambda r: r.last_seen, reverse=True)
            rows = rows[:limit]
        rows.sort(key=lambda r: (SEVERITY_RANK.get(r.severity, 2), -r.last_seen, r.key))
        return rows, total

    def open_count(self) -> int:
        return sum(1 for r in self.incidents.values() if not r.final)


class _Malformed(Exception):
    pass


def _json_object(payload: bytes) -> dict[str, Any] | None:
    """The payload as a JSON object; None for an empty payload (a cleared retained message)."""
    if not payload:
        return None
    try:
        body = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Malformed(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise _Malformed(f"expected a JSON object, got {type(body).__name__}")
    return body


def _last_by(history: list[Any]) -> str:
    if history and isinstance(history[-1], dict) and history[-1].get("moderator"):
        h = history[-1]
        reason = f": {h['reason']}" if h.get("reason") else ""
        return f" ({h.get('action')} by {h['moderator']}{reason})"
    return ""


# --------------------------------------------------------------------------------------------- table cells


class _KeyCell(Text):
    """A cell that knows its row key, so the table can be put in our order with DataTable.sort."""

    def __init__(self, text: str, row_key: str, style: str = "") -> None:
        super().__init__(text, style=style)
        self.row_key = row_key


Cells = tuple[tuple[str, str], ...]  # (text, style) per column


def _sync_table(table: DataTable[Text], rows: Sequence[tuple[str, Cells]], key_column: str) -> None:
    """Make `table` show `rows` in this order: update changed cells in place, add and remove by key.

    The selected row stays selected (by key) through re-sorting, so a key press acts on what the moderator sees.
    """
    columns = [str(c.value) for c in table.columns]
    widths = {str(k.value): c for k, c in table.columns.items()}
    key_index = columns.index(key_column)
    selected: str | None = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    shown: dict[str, Cells] = getattr(table, "_lsm_cells", {})
    wanted = dict(rows)
    for key in [k for k in shown if k not in wanted]:
        table.remove_row(key)
        del shown[key]

    def cell(key: str, i: int, text: str, style: str) -> Text:
        text = printable(text)  # Text objects: no markup; escapes and line breaks from messages written out
        return _KeyCell(text, key, style) if i == key_index else Text(text, style=style)

    for key, cells in rows:
        old = shown.get(key)
        if old is None:
            table.add_row(*(cell(key, i, t, s) for i, (t, s) in enumerate(cells)), key=key)
        elif old != cells:
            for i, (new, was) in enumerate(zip(cells, old, strict=True)):
                if new != was:
                    # Widening is cheap; shrinking would re-measure the whole column for every cell (slow with
                    # hundreds of updates), so columns only ever grow.
                    wider = cell_len(new[0]) > widths[columns[i]].content_width
                    table.update_cell(key, columns[i], cell(key, i, *new), update_width=wider)
        shown[key] = cells
    table._lsm_cells = shown  # type: ignore[attr-defined]
    order = [k for k, _ in rows]
    if [r.key.value for r in table.ordered_rows] != order:
        rank = {k: i for i, k in enumerate(order)}
        table.sort(key_column, key=lambda c: rank.get(getattr(c, "row_key", ""), len(rank)))
    if selected is not None and selected in wanted:
        index = table.get_row_index(selected)
        if index != table.cursor_row:
            table.move_cursor(row=index, animate=False)


INCIDENT_COLUMNS = (("severity", "Sev"), ("status", "Status"), ("stream", "Stream"), ("node", "Node"),
                    ("bank", "Bank"), ("entry", "Entry"), ("distance", "Best/Thr"), ("first", "First seen"),
                    ("last", "Last seen"), ("samples", "Samples"), ("id", "Incident"))
STREAM_COLUMNS = (("node", "Node"), ("stream", "Stream"), ("state", "State"), ("detail", "Detail"))
NODE_COLUMNS = (("node", "Node"), ("state", "Status"), ("health", "Last health"), ("outbox", "Outbox"),
                ("streams", "Streams"))


def incident_cells(row: IncidentRow, pending: Pending | None, now: float) -> Cells:
    dist = "-" if row.best_distance is None else str(row.best_distance)
    thr = "-" if row.threshold is None else str(row.threshold)
    status = row.status
    status_style = STATUS_STYLE.get(row.status, "")
    if pending is not None:
        how = "" if pending.published else ", queued"
        if pending.overdue:
            how += ", no answer yet"
        status = f"{row.status} (pending {pending.action}{how})"
        status_style = "reverse"
    return (
        (row.severity, SEVERITY_STYLE.get(row.severity, "dim")),
        (status, status_style),
        (row.stream_id, ""),
        (row.node, "dim"),
        (row.bank, ""),
        (row.entry_label or row.entry_id, ""),
        (f"{dist}/{thr}", ""),
        (_clock(row.first_seen, now), ""),
        (_clock(row.last_seen, now), ""),
        (str(row.samples), ""),
        (row.incident_id[:8] if row.incident_id else "-", "dim"),
    )


def stream_cells(s: StreamRow) -> tuple[str, Cells]:
    cells: Cells = ((s.node, "dim"), (s.stream_id, ""), (s.state, _state_style(s.state)), (s.detail, "dim"))
    return f"{s.node}/{s.stream_id}", cells


def node_cells(n: NodeRow, now: float) -> tuple[str, Cells]:
    health = f"{_clock(n.health_at, now)} {_age(n.health_at, now)}".strip() or "-"
    streams = ", ".join(f"{k} {v}" for k, v in sorted(n.streams.items()))
    cells: Cells = ((n.node, ""), (n.state, _state_style(n.state)), (health, ""),
                    ("-" if n.outbox_depth is None else str(n.outbox_depth), ""), (streams, "dim"))
    return n.node, cells


def _state_style(state: str) -> str:
    if state in ("online", "live", "running", "playing", "connected"):
        return "green"
    if state in ("offline", "failed", "error", "gone", "terminated"):
        return "bold red"
    return "yellow"


# --------------------------------------------------------------------------------------------- modals


class ReasonScreen(ModalScreen[str | None]):
    """Asks why an incident is a false positive. Enter submits (a reason is required), Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ReasonScreen { align: center middle; }
    ReasonScreen > Vertical { width: 80; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    ReasonScreen Label { width: 100%; }
    ReasonScreen #reason-error { color: $error; height: auto; }
    """

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(printable(self.prompt), markup=False)  # entry labels come from bank files: no markup
            yield Input(placeholder="reason (required), Enter to send, Escape to cancel", id="reason")
            yield Label("", id="reason-error", markup=False)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        reason = event.value.strip()
        if not reason:
            self.query_one("#reason-error", Label).update("a reason is required")
            return
        bad = forbidden_char(reason)
        if bad is not None:  # the monitor would refuse the command: say so here, where it can be fixed
            self.query_one("#reason-error", Label).update(
                f"the reason holds {describe_char(bad[1])} at position {bad[0]}: remove it")
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no. `y` or the red button confirms; `n`, Escape or the other button cancels (focused by default)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "confirm", "Yes"),
        Binding("n,escape", "cancel", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 80; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    ConfirmScreen Label { width: 100%; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; }
    ConfirmScreen Button { margin-right: 2; }
    """

    def __init__(self, prompt: str, confirm_label: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(printable(self.prompt), markup=False)  # `[/]` in an entry label is text, not markup
            with Horizontal():
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


# --------------------------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class _Outgoing:
    key: str
    topic: str
    command: dict[str, Any]


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
        self.connected = False
        self.connection_text = "connecting…"
        self.reconnects = 0
        self.show_closed = False
        self.commands_sent = 0
        self._outbox: deque[_Outgoing] = deque()
        self._wake = asyncio.Event()
        self._drawn: dict[str, int] = {}
        self._total_rows = 0
        self._last_clock = 0.0
        self._status_text = ""

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
        for key, p in st.pending.items():
            if not p.overdue and p.published and now - p.sent_at > PENDING_OVERDUE_S:
                p.overdue = True
                st.incidents_version += 1
                self.log_line(f"! no answer from the monitor to {p.action} on incident {key[:8]} "
                              f"after {PENDING_OVERDUE_S:.0f} s")
        if self._drawn.get("incidents") != st.incidents_version:
            self._drawn["incidents"] = st.incidents_version
            self._draw_incidents(now)
        if self._drawn.get("streams") != st.streams_version:
            self._drawn["streams"] = st.streams_version
            streams = sorted(st.streams.values(), key=lambda s: (s.node, s.stream_id))[:self.max_rows]
            _sync_table(self.streams_table, [stream_cells(s) for s in streams], "stream")
        if self._drawn.get("nodes") != st.nodes_version or now - self._last_clock >= 1.0:  # ages tick
            self._drawn["nodes"] = st.nodes_version
            self._last_clock = now
            nodes = sorted(st.nodes.values(), key=lambda n: n.node)
            _sync_table(self.nodes_table, [node_cells(n, now) for n in nodes], "node")
        self._drain_events()
        self._draw_status()

    def _draw_incidents(self, now: float) -> None:
        rows, total = self.state.visible(show_closed=self.show_closed, limit=self.max_rows)
        self._total_rows = total
        table = self.incidents_table
        _sync_table(table, [(r.key, incident_cells(r, self.state.pending.get(r.key), now)) for r in rows], "id")
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
        p = self.cfg.topic_prefix
        if self.node_filter:
            n = self.node_filter
            return [topics.alerts(p, n, "+"), topics.incident(p, n, "+"), topics.stream_state(p, n, "+"),
                    topics.node_status(p, n), topics.node_health(p, n)]
        return [topics.all_alerts(p), topics.all_incidents(p), topics.all_stream_states(p),
                topics.all_node_status(p), topics.all_node_health(p)]

    async def _mqtt_main(self) -> None:
        """Connect, subscribe, receive and send until the app exits; reconnect with backoff."""
        delay = 0.5
        protocol: aiomqtt.ProtocolVersion | None = None
        while True:
            why = ""
            try:
                if protocol is None:
                    self.connection_text = f"connecting to {self.cfg.url}…"
                    protocol = await negotiate_protocol(self.cfg, self.client_id)
                async with make_client(self.cfg, self.client_id, protocol) as client:
                    for topic in self._topics():
                        await client.subscribe(topic, qos=1)
                    delay = 0.5
                    self.connected = True
                    version = "5" if protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1"
                    self.connection_text = f"connected to {self.cfg.url} (MQTT {version})"
                    self.log_line(self.connection_text)
                    await self._serve(client)
                why = "connection closed"
            except BrokerError as exc:
                why = str(exc)
            except aiomqtt.MqttError as exc:
                why = f"lost the broker ({exc})"
            except Exception as exc:  # never let the connection loop die: show it and try again
                log.exception("console MQTT loop")
                why = f"unexpected error {type(exc).__name__}: {exc}"
            self.connected = False
            self.reconnects += 1
            wait = delay * random.uniform(0.75, 1.0)
            self.connection_text = f"disconnected: {why}; retrying in {wait:.1f} s"
            self.log_line(f"! {self.connection_text}")
            await asyncio.sleep(wait)
            delay = min(delay * 2, 15.0)

    async def _serve(self, client: aiomqtt.Client) -> None:
        receiver = asyncio.ensure_future(self._receive(client))
        sender = asyncio.ensure_future(self._send(client))
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.gather(receiver, sender, return_exceptions=True)
        for task in done:
            task.result()  # re-raise MqttError

    async def _receive(self, client: aiomqtt.Client) -> None:
        n = 0
        async for msg in client.messages:
            n += 1
            if n % 200 == 0:  # a burst (all retained incidents at once) must not freeze the screen
                await asyncio.sleep(0)
            payload = msg.payload
            if isinstance(payload, bytes | bytearray):
                data = bytes(payload)
            elif payload is None:
                data = b""
            else:
                data = str(payload).encode()
            self.state.handle(str(msg.topic), data)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            while self._outbox:
                out = self._outbox[0]
                payload = json.dumps(out.command, separators=(",", ":")).encode()
                await client.publish(out.topic, payload, qos=1)  # waits for PUBACK; MqttError keeps it queued
                self._outbox.popleft()
                self.commands_sent += 1
                p = self.state.pending.get(out.key)
                if p is not None and p.command_id == out.command["command_id"]:
                    p.published = True
                    self.state.incidents_version += 1
                self.log_line(f"→ sent {out.command['action']} for incident {out.command['incident_id'][:8]} "
                              f"on {out.topic}")
                self._record({"event": "published", "command_id": out.command["command_id"], "topic": out.topic})
            self._wake.clear()
            await self._wake.wait()

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

    def send_command(self, row: IncidentRow, action: str, reason: str | None = None) -> dict[str, Any]:
        """Queue a command for the incident's node, record it locally and mark the row pending."""
        assert row.incident_id is not None
        command = build_command(action, incident_id=row.incident_id, stream_id=row.stream_id,
                                moderator=self.moderator, reason=reason)
        topic = topics.commands(self.cfg.topic_prefix, row.node)
        self._record({"event": "command", "topic": topic, "command": command})
        self._outbox.append(_Outgoing(row.key, topic, command))
        self._wake.set()
        self.state.mark_pending(row.key, action, command["command_id"])
        self.log_line(f"{action} incident {row.incident_id[:8]} (stream {row.stream_id})"
                      + (f": {reason}" if reason else "") + ("" if self.connected else " — queued until reconnect"))
        self._refresh_ui()
        return command

    def _record(self, entry: dict[str, Any]) -> None:
        """Append one line to the local actions log (append-only JSON lines), if one was given."""
        if self.actions_log is None:
            return
        line = json.dumps({"logged_at": utc_iso(time.time()), "moderator": self.moderator, **entry},
                          separators=(",", ":"))
        try:
            self.actions_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.actions_log, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
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
