"""Log output: readable lines with escaping (the default) or one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from monitor.common.safetext import EscapingFormatter, printable


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; stream and incident ids as fields when known."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": printable(record.getMessage()),  # bidi overrides too, which JSON would keep as they are
        }
        for key in ("stream_id", "incident_id"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # Escaping: a moderator's name, a bank label or a stream name never forges a line or a terminal escape.
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # Third-party chatter (amqtt logs every client) is kept to warnings. paho (logger "mqtt") logs an ERROR for
    # the socket of a client we closed on purpose; our own messages say what a connection problem means.
    for noisy in ("amqtt", "transitions", "libav"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
