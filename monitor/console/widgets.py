"""What the moderation console draws: table cells from the console's state, the tables kept in sync, the modals.

No MQTT and no state of its own: monitor/console/tui.py calls these with rows from monitor/console/state.py.
Text that came in a message is drawn as text (Rich `Text`, no markup) with escapes and line breaks written out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label

from monitor.common.safetext import describe_char, forbidden_char, printable
from monitor.console.state import IncidentRow, NodeRow, Pending, StreamRow

SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan"}
STATUS_STYLE = {"open": "bold", "acknowledged": "green", "escalated": "bold magenta", "provisional": "dim italic",
                "dismissed": "dim", "terminated": "dim red", "closed": "dim"}


def clock(ts: float, now: float | None = None) -> str:
    """HH:MM:SS (UTC) today, MM-DD HH:MM on other days, "-" when unknown."""
    if ts <= 0:
        return "-"
    dt = datetime.fromtimestamp(ts, UTC)
    today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
    return dt.strftime("%H:%M:%S") if dt.date() == today else dt.strftime("%m-%d %H:%M")


def age(ts: float, now: float) -> str:
    if ts <= 0:
        return ""
    s = max(0.0, now - ts)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.0f}h ago"




# --------------------------------------------------------------------------------------------- table cells


class _KeyCell(Text):
    """A cell that knows its row key, so the table can be put in our order with DataTable.sort."""

    def __init__(self, text: str, row_key: str, style: str = "") -> None:
        super().__init__(text, style=style)
        self.row_key = row_key


Cells = tuple[tuple[str, str], ...]  # (text, style) per column


def sync_table(table: DataTable[Text], rows: Sequence[tuple[str, Cells]], key_column: str) -> None:
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
        (clock(row.first_seen, now), ""),
        (clock(row.last_seen, now), ""),
        (str(row.samples), ""),
        (row.incident_id[:8] if row.incident_id else "-", "dim"),
    )


def stream_cells(s: StreamRow) -> tuple[str, Cells]:
    cells: Cells = ((s.node, "dim"), (s.stream_id, ""), (s.state, _state_style(s.state)), (s.detail, "dim"))
    return f"{s.node}/{s.stream_id}", cells


def node_cells(n: NodeRow, now: float) -> tuple[str, Cells]:
    health = f"{clock(n.health_at, now)} {age(n.health_at, now)}".strip() or "-"
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

