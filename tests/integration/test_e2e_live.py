"""The slice on real parts: ffmpeg -> nginx-rtmp (RTMP and HLS) -> monitor -> Mosquitto -> a subscriber."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from monitor.contracts.alerts import alert_schema
from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd
from tests.conftest import Collected, MonitorProcess, MqttCollector

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]

SHOW = (8.0, 14.0)  # the known image is on screen between these stream times
GOP_S = 2.0
DURATION_S = 26.0


def test_known_image_over_rtmp_and_hls_alerts_on_the_right_stream_only(
    mosquitto: Mosquitto,
    nginx_rtmp: NginxRtmp,
    known_pngs: list[Path],
    bank_csv: Path,
    collector_factory: Callable[..., MqttCollector],
    monitor_factory: Callable[..., MonitorProcess],
) -> None:
    collector = collector_factory(mosquitto.port)
    publishers = [
        subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("known"), duration_s=DURATION_S,
                                            known_png=known_pngs[1], show=SHOW, gop_s=GOP_S)),
        subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("clean"), duration_s=DURATION_S, gop_s=GOP_S)),
    ]
    mon = monitor_factory({
        "node": "e2e",
        "broker": {"url": mosquitto.url, "topic_prefix": "test"},
        "streams": [
            {"id": "known-rtmp", "url": nginx_rtmp.rtmp_url("known")},
            {"id": "known-hls", "url": nginx_rtmp.hls_url("known")},
            {"id": "clean-rtmp", "url": nginx_rtmp.rtmp_url("clean")},
        ],
        "banks": [{"name": "known", "path": str(bank_csv)}],
        "ingest": {"backoff_initial_s": 0.3, "backoff_max_s": 2.0},
    })
    try:
        for p in publishers:
            assert p.wait(DURATION_S + 30) == 0, "ffmpeg publisher failed"
        # HLS lags by a fragment or two; give the last alerts time to arrive.
        collector.wait_for(lambda m: m.topic == "test/e2e/alerts/known-hls", 15)
    finally:
        for p in publishers:
            p.kill()
        code = mon.stop()
    log = mon.log()
    assert code == 0, log
    assert "Traceback" not in log

    alerts = collector.matching(lambda m: "/alerts/" in m.topic)
    validator = jsonschema.Draft202012Validator(alert_schema(), format_checker=jsonschema.FormatChecker())
    for a in alerts:
        validator.validate(a.json())

    def alerts_for(stream: str) -> list[Collected]:
        return [a for a in alerts if a.json()["stream_id"] == stream]

    for stream in ("known-rtmp", "known-hls"):
        got = alerts_for(stream)
        assert got, f"no alert for {stream}; log:\n{log}"
        for a in got:
            body = a.json()
            assert a.topic == f"test/e2e/alerts/{stream}"
            assert body["entry_id"] == "2"  # the second line of the bank: known-1.png
            assert body["entry_label"] == "known-1.png"
            assert body["bank"] == "known" and body["node"] == "e2e" and body["signal_type"] == "pdq"
            assert SHOW[0] - 0.05 <= body["media_time_s"] <= SHOW[1] + GOP_S, body
            assert body["distance"] <= body["threshold"] == 31
            assert body["quality"] >= 50
    assert alerts_for("clean-rtmp") == []

    # Retained node status and stream states were published.
    states = [m.json()["state"] for m in collector.matching(lambda m: m.topic == "test/e2e/streams/known-rtmp")]
    assert "live" in states
    status = [m.json()["state"] for m in collector.matching(lambda m: m.topic == "test/e2e/status")]
    assert status[0] == "online" and status[-1] == "offline"
