"""The console against an embedded broker: alerts shown, duplicates and malformed messages dropped."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiomqtt
import pytest

from monitor.config.models import BrokerConfig
from monitor.console.printer import format_alert, run_console
from monitor.contracts.alerts import build_alert
from pipelines.base import Finding
from test_streams.broker import EmbeddedBroker


def _alert(stream: str = "cam") -> dict[str, object]:
    f = Finding("known_content", stream, 3.0, time.time(), "b", "9", "pdq", 5, 31, 88, "cd" * 32, "nine")
    return build_alert(f, node="n", stream_url="rtmp://h/live/cam", observed_at=time.time())


async def _scenario(as_json: bool) -> tuple[str, int, str]:
    async with EmbeddedBroker() as broker:
        cfg = BrokerConfig(url=broker.url)
        out = io.StringIO()
        task = asyncio.create_task(run_console(cfg, as_json=as_json, out=out, max_alerts=2))
        await asyncio.sleep(1.0)
        a1, a2 = _alert(), _alert("cam2")
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V311) as c:
            await c.publish("livesafe/n/alerts/cam", json.dumps(a1), qos=1)
            await c.publish("livesafe/n/alerts/cam", json.dumps(a1), qos=1)  # a retry: same alert_id
            await c.publish("livesafe/n/alerts/cam", b"{not json", qos=1)
            await c.publish("livesafe/n/alerts/cam", json.dumps({"type": "alert"}), qos=1)
            await c.publish("livesafe/n/alerts/cam2", json.dumps(a2), qos=1)
        shown = await asyncio.wait_for(task, 10)
        return out.getvalue(), shown, str(a1["alert_id"])


def test_console_json_mode_prints_one_alert_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    text, shown, first_id = asyncio.run(_scenario(as_json=True))
    lines = text.strip().splitlines()
    assert shown == 2 and len(lines) == 2
    assert json.loads(lines[0])["alert_id"] == first_id
    assert json.loads(lines[1])["stream_id"] == "cam2"
    err = capsys.readouterr().err
    assert "ignored a malformed message on livesafe/n/alerts/cam: not JSON" in err
    assert "'alert_id' is a required property" in err or "is a required property" in err


def test_console_human_mode() -> None:
    text, shown, _ = asyncio.run(_scenario(as_json=False))
    assert shown == 2
    assert "ALERT  stream cam at 3.00 s  bank b entry 9 (nine)  distance 5/31" in text


def test_format_alert_is_one_block() -> None:
    assert format_alert(_alert()).count("\n") == 1
