"""What the moderation console knows, fed by MQTT messages parsed into their contracts; no UI.

`ConsoleState.handle(topic, payload)` takes every message the console subscribes to, checks it against its model
in `monitor/contracts/` (a message that does not fit is counted and logged, never fatal) and keeps:

* incidents, one row per incident_id, replaced by every retained incident message (the monitor is the source of
  truth, so several consoles stay consistent); alerts that arrive before or without an incident message make
  provisional rows, which the incident replaces;
* the state of each stream, and each node's status and health;
* the commands this console sent and the monitor has not answered yet (`pending`), and the answers
  (`confirmations`);
* lines for the console's log pane (`log_lines`).

The TUI (monitor/console/tui.py) draws it; the `*_version` counters say which area changed since it last drew.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from monitor.contracts import topics
from monitor.contracts.alerts import Alert
from monitor.contracts.base import ContractError, check
from monitor.contracts.messages import FINAL_STATUSES, Health, HistoryEntry, Incident, NodeStatus, StreamStatus

__all__ = [
    "ALLOWED_FROM", "Confirmation", "ConsoleState", "IncidentRow", "NodeRow", "Pending", "StreamRow", "iso_seconds",
    "subscriptions",
]

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

MAX_ROWS = 500  # newest open incidents shown; the status line says how many more there are
KEEP_FINAL = 2000  # closed/dismissed/terminated incidents remembered (for the "show closed" toggle)
PENDING_OVERDUE_S = 30.0  # a command the monitor has not answered by then is flagged in the row and the log
SEEN_ALERTS = 20000  # alert_ids remembered for dropping duplicates (delivery is at least once)


def iso_seconds(value: str) -> float:
    """Seconds since the epoch of a contract's ISO 8601 time (validated by the model, so it parses)."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


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
    severity: str  # low / medium / high, "?" for a provisional row
    status: str  # an incident status, or "provisional"
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
    """Everything the console knows; the monitor's retained messages win."""

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
        except ContractError as exc:
            self._bad(topic, str(exc))
        except Exception as exc:  # a bug or an unforeseen payload must not take the console down
            self._bad(topic, f"{type(exc).__name__}: {exc}")

    def _bad(self, topic: str, why: str) -> None:
        self.malformed += 1
        self.log_lines.append(f"! malformed message on {topic}: {why}")

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self.prefix + "/"):
            raise ContractError("outside the topic prefix")
        node, *rest = topic[len(self.prefix) + 1:].split("/")
        if rest == ["status"] or rest == ["health"]:
            if not payload:  # a cleared retained message
                self._clear_node(node, rest[0])
            elif rest == ["status"]:
                self._node_status(node, check(NodeStatus, payload))
            else:
                self._node_health(node, check(Health, payload))
        elif len(rest) == 2 and rest[0] == "alerts":
            if not payload:
                raise ContractError("empty payload")
            self._alert(check(Alert, payload))
        elif len(rest) == 2 and rest[0] == "incidents":
            if not payload:  # the monitor cleared the retained incident
                self._forget_incident(rest[1])
            else:
                self._incident(rest[1], check(Incident, payload))
        elif len(rest) == 2 and rest[0] == "streams":
            if not payload:
                if self.streams.pop((node, rest[1]), None) is not None:
                    self.streams_version += 1
            else:
                self._stream(node, check(StreamStatus, payload))
        else:
            raise ContractError("unexpected topic")

    def _clear_node(self, node: str, what: str) -> None:
        if what == "status":
            self.nodes.pop(node, None)
        elif node in self.nodes:
            self.nodes[node].health_at, self.nodes[node].outbox_depth = 0.0, None
        self.nodes_version += 1

    def _node_status(self, node: str, msg: NodeStatus) -> None:
        row = self.nodes.setdefault(node, NodeRow(node))
        if row.state != msg.state and row.state != "?":
            self.log_lines.append(f"node {node} is {msg.state}")
        row.state = msg.state
        row.status_at = msg.at
        self.nodes_version += 1

    def _node_health(self, node: str, msg: Health) -> None:
        row = self.nodes.setdefault(node, NodeRow(node))
        row.health_at = msg.at or time.time()
        row.outbox_depth = msg.outbox_depth
        row.streams = {state: n for state, n in msg.streams.items()}
        self.nodes_version += 1

    def _stream(self, node: str, msg: StreamStatus) -> None:
        self.streams[(node, msg.stream_id)] = StreamRow(node, msg.stream_id, msg.state, msg.detail, msg.attempt,
                                                        time.time())
        self.streams_version += 1

    def _alert(self, a: Alert) -> None:
        if a.incident_id == "":
            raise ContractError("alert: incident_id must not be empty")
        if a.alert_id in self._seen_alerts:
            return
        self._seen_alerts.add(a.alert_id)
        self._seen_order.append(a.alert_id)
        if len(self._seen_order) > SEEN_ALERTS:
            self._seen_alerts.discard(self._seen_order.popleft())
        self.alerts += 1
        triple = (a.node, a.stream_id, a.bank, a.entry_id)
        if a.incident_id is not None and a.incident_id in self.incidents:
            return  # the incident message is the truth; it will carry this sample
        if a.incident_id is None and any(r.triple == triple and not r.final for r in self.incidents.values()):
            return
        key = a.incident_id or "~" + "/".join(triple)
        seen = iso_seconds(a.observed_at)
        row = self.provisional.get(key)
        if row is None:
            row = IncidentRow(key=key, node=a.node, incident_id=a.incident_id, stream_id=a.stream_id, bank=a.bank,
                              entry_id=a.entry_id, entry_label=a.entry_label, severity="?", status="provisional",
                              first_seen=seen, last_seen=seen, samples=0, best_distance=a.distance,
                              threshold=a.threshold)
            self.provisional[key] = row
            what = (f"score {a.score}/{a.score_threshold}" if a.kind == "classification"
                    else f"distance {a.distance}/{a.threshold}")
            self.log_lines.append(f"alert: stream {row.stream_id} bank {row.bank} entry "
                                  f"{row.entry_label or row.entry_id} {what} (no incident yet)")
        row.samples += 1
        row.alert_ids.add(a.alert_id)
        row.first_seen = min(row.first_seen, seen)
        row.last_seen = max(row.last_seen, seen)
        if a.distance is not None and (row.best_distance is None or a.distance < row.best_distance):
            row.best_distance = a.distance
        self.incidents_version += 1

    def _incident(self, topic_id: str, inc: Incident) -> None:
        iid = inc.incident_id
        if iid != topic_id:
            raise ContractError(f"incident: incident_id {iid!r} differs from the topic's {topic_id!r}")
        row = IncidentRow(
            key=iid, node=inc.node, incident_id=iid, stream_id=inc.stream_id, bank=inc.bank, entry_id=inc.entry_id,
            entry_label=inc.entry_label, severity=inc.severity, status=inc.status,
            first_seen=iso_seconds(inc.first_seen), last_seen=iso_seconds(inc.last_seen), samples=inc.samples,
            best_distance=inc.best_distance, threshold=inc.threshold, history_len=len(inc.history),
        )
        old = self.incidents.get(iid)
        if old is not None and old.status != inc.status:
            self.log_lines.append(f"incident {iid[:8]} ({inc.stream_id}) is {inc.status}{_last_by(inc.history)}")
        elif old is None and not row.final:
            self.log_lines.append(f"incident {iid[:8]}: stream {inc.stream_id} bank {row.bank} entry "
                                  f"{row.entry_label or row.entry_id} ({row.severity}, {inc.status})")
        self.incidents[iid] = row
        # The monitor's incident replaces any provisional row made from its alerts.
        self.provisional.pop(iid, None)
        self.provisional.pop("~" + "/".join(row.triple), None)
        self._check_pending(row, inc.history)
        self.incidents_version += 1
        if len(self.incidents) > KEEP_FINAL * 2:
            self._prune_final()

    def _check_pending(self, row: IncidentRow, history: list[HistoryEntry]) -> None:
        p = self.pending.get(row.key)
        if p is None:
            return
        answered = [h for h in history[p.history_len:] if h.action == p.action]
        if row.status == EXPECTED_STATUS[p.action] or answered or (row.final and p.action not in ("dismiss",
                                                                                                   "terminate")):
            del self.pending[row.key]
            self.confirmations.append(Confirmation(p, row.key, row.status, answered[-1].result if answered else None))

    def _forget_incident(self, incident_id: str) -> None:
        gone = [self.incidents.pop(incident_id, None), self.provisional.pop(incident_id, None)]
        if any(r is not None for r in gone):
            self.incidents_version += 1
        self.pending.pop(incident_id, None)

    def _prune_final(self) -> None:
        final = sorted((r for r in self.incidents.values() if r.final), key=lambda r: r.last_seen)
        for r in final[:max(0, len(final) - KEEP_FINAL)]:
            del self.incidents[r.key]

    # ----------------------------------------------------------------------------- commands

    def mark_pending(self, key: str, action: str, command_id: str) -> None:
        row = self.row(key)
        self.pending[key] = Pending(action, command_id, time.time(), row.history_len if row else 0)
        self.incidents_version += 1

    def mark_published(self, key: str, command_id: str) -> None:
        """The broker took the command (PUBACK): the row's pending mark is no longer 'queued'."""
        p = self.pending.get(key)
        if p is not None and p.command_id == command_id:
            p.published = True
            self.incidents_version += 1

    def flag_overdue(self, now: float) -> None:
        """Commands the monitor has not answered within PENDING_OVERDUE_S of being sent: flag the row, say so."""
        for key, p in self.pending.items():
            if not p.overdue and p.published and now - p.sent_at > PENDING_OVERDUE_S:
                p.overdue = True
                self.incidents_version += 1
                self.log_lines.append(f"! no answer from the monitor to {p.action} on incident {key[:8]} "
                                      f"after {PENDING_OVERDUE_S:.0f} s")

    # ----------------------------------------------------------------------------- views

    def row(self, key: str) -> IncidentRow | None:
        return self.incidents.get(key) or self.provisional.get(key)

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


def subscriptions(prefix: str, node: str | None = None) -> list[str]:
    """The topics a console subscribes to: everything of every node, or of one."""
    if node:
        return [topics.alerts(prefix, node, "+"), topics.incident(prefix, node, "+"),
                topics.stream_state(prefix, node, "+"), topics.node_status(prefix, node),
                topics.node_health(prefix, node)]
    return [topics.all_alerts(prefix), topics.all_incidents(prefix), topics.all_stream_states(prefix),
            topics.all_node_status(prefix), topics.all_node_health(prefix)]


def _last_by(history: list[HistoryEntry]) -> str:
    if history and history[-1].moderator:
        h = history[-1]
        reason = f": {h.reason}" if h.reason else ""
        return f" ({h.action} by {h.moderator}{reason})"
    return ""
