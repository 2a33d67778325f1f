"""`monitor console`: a subscriber that shows alerts and stream states as they arrive.

Human mode prints one readable block per alert; `--json` prints each alert as one JSON line for scripts.
Payloads that are not valid alerts are reported and skipped: a bad message never stops the console.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import aiomqtt
import jsonschema

from monitor.common.backoff import Backoff
from monitor.common.safetext import printable
from monitor.config.models import BrokerConfig
from monitor.contracts import topics
from monitor.contracts.alerts import alert_schema
from monitor.delivery.connection import (
    CONSOLE_RECONNECT_MAX_S,
    RECONNECT_INITIAL_S,
    MqttConnection,
    negotiate_protocol,
)

log = logging.getLogger(__name__)


def _clock(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%H:%M:%S")
    except ValueError:
        return iso


def format_alert(a: dict[str, Any]) -> str:
    """Two lines for a terminal; text from the message is escaped (a label cannot send terminal escapes)."""
    label = f" ({printable(str(a['entry_label']))})" if a.get("entry_label") else ""
    what = (f"classifier {a['bank']} label {a['label']}  score {a['score']}/{a['score_threshold']}"
            if a.get("kind") == "classification" else
            f"bank {a['bank']} entry {a['entry_id']}{label}  distance {a['distance']}/{a['threshold']}  "
            f"quality {a['quality']}")
    first = (
        f"{_clock(a['observed_at'])}  ALERT  stream {a['stream_id']} at {a['media_time_s']:.2f} s  "
        f"{what}  node {a['node']}"
    )
    return f"{printable(first)}\n          {printable(str(a['stream_url']))}  alert {printable(str(a['alert_id']))}"


def format_state(s: dict[str, Any]) -> str:
    detail = f"  {s['detail']}" if s.get("detail") else ""
    return printable(f"          stream {s.get('stream_id')} is {s.get('state')}{detail}")


class AlertValidator:
    def __init__(self) -> None:
        self._validator = jsonschema.Draft202012Validator(alert_schema())

    def problem(self, body: Any) -> str | None:
        err = jsonschema.exceptions.best_match(self._validator.iter_errors(body))
        if err is None:
            return None
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        return f"{where}: {err.message}"


def parse_alert(payload: bytes, validator: AlertValidator) -> tuple[dict[str, Any] | None, str | None]:
    try:
        body = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"not JSON ({exc})"
    problem = validator.problem(body)
    if problem is not None:
        return None, problem
    return body, None


async def run_console(cfg: BrokerConfig, *, as_json: bool, out: TextIO = sys.stdout,
                      max_alerts: int | None = None, stop: asyncio.Event | None = None,
                      on_alert: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Subscribe and print until stopped, or until `max_alerts` alerts were shown. Returns alerts shown."""
    stop = stop or asyncio.Event()
    client_id = f"console-{id(out):x}"
    protocol = await negotiate_protocol(cfg, client_id)  # BrokerError if refused
    validator = AlertValidator()
    seen: set[str] = set()  # alert_ids: delivery is at least once, so duplicates are dropped here
    shown = 0
    prefix = cfg.topic_prefix
    alerts = topics.all_alerts(prefix)

    def on_message(topic: str, payload: bytes) -> None:
        nonlocal shown
        if aiomqtt.Topic(topic).matches(alerts):
            alert, problem = parse_alert(payload, validator)
            if alert is None:
                print(printable(f"! ignored a malformed message on {topic}: {problem}"), file=sys.stderr)
                return
            if alert["alert_id"] in seen:
                return
            seen.add(alert["alert_id"])
            shown += 1
            print(json.dumps(alert, sort_keys=True) if as_json else format_alert(alert), file=out, flush=True)
            if on_alert is not None:
                on_alert(alert)
            if max_alerts is not None and shown >= max_alerts:
                conn.close()
        elif not as_json:
            try:
                state = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return
            if isinstance(state, dict):
                print(format_state(state), file=out, flush=True)

    def on_lost(exc: Exception, wait_s: float) -> None:
        if not isinstance(exc, aiomqtt.MqttError):
            raise exc  # not the broker: a bug, or on_alert failed; it ends the console
        print(f"! lost the broker ({exc}); reconnecting in {wait_s:.1f} s", file=sys.stderr)

    conn = MqttConnection(cfg, client_id, protocol=protocol,
                          subscriptions=[alerts] if as_json else [alerts, topics.all_stream_states(prefix)],
                          on_message=on_message, on_lost=on_lost,
                          backoff=Backoff(RECONNECT_INITIAL_S, CONSOLE_RECONNECT_MAX_S))
    await conn.run(stop)
    return shown
