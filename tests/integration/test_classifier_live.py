"""The classifier on real parts: ffmpeg -> nginx-rtmp -> monitor (worker processes, ONNX Runtime) -> Mosquitto.

A stream shows the colour-bar test card for 6 s: one classification incident and one MQTT alert with label, score
and model id. A stream that never shows it: none.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import paho.mqtt.publish as mqtt_publish
import pytest
from PIL import Image

from monitor.contracts.alerts import alert_schema
from monitor_tools.classifier_models import TESTCARD_LABELS, build_testcard_model, colour_bar_card
from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd
from tests.conftest import REPO, MonitorProcess, MqttCollector, run_cli

SHOW = (8.0, 14.0)
DURATION_S = 24.0


def classifier_entry(model: Path) -> dict[str, object]:
    return {"kind": "onnx_classifier", "name": "testcard", "model": str(model), "input_size": [64, 64],
            "labels": [{"name": "testcard", "threshold": 0.6, "severity": "medium"},
                       {"name": "other", "threshold": None}],
            "sampling": {"every_k": 2}, "incidents": {"confirm_k": 2, "confirm_n": 3, "window_s": 10}}


def test_testsrc2_scores_under_the_threshold_for_ten_minutes(tmp_path: Path) -> None:
    """The publishers' background (ffmpeg testsrc2), 600 s at one frame a second, never nears the threshold."""
    from monitor.config.models import MatchingConfig, build_config
    from monitor.runtime.analyses import make_analyses
    from pipelines.classifier import ClassifierPipeline
    from test_streams.infra import missing_tools

    if "ffmpeg" in missing_tools():
        pytest.skip("needs ffmpeg")
    model = build_testcard_model(tmp_path / "testcard.onnx")
    (clf,) = make_analyses(build_config({"analyses": [classifier_entry(model)]}).analyses, [], MatchingConfig())
    assert isinstance(clf, ClassifierPipeline)
    raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=512x288:rate=1",
                          "-t", "600", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True,
                         check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 288, 512, 3)
    assert len(frames) == 600
    scores = [row[0] for i in range(0, 600, 50) for row in clf.scorer.score(list(frames[i:i + 50])) if row is not None]
    assert max(scores) < 0.1, max(scores)
    clf.stop()


@pytest.mark.realinfra
@pytest.mark.slow
def test_test_card_for_six_seconds_gives_one_classification_incident_and_alert(
    mosquitto: Mosquitto, nginx_rtmp: NginxRtmp, tmp_path: Path,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    model = build_testcard_model(tmp_path / "testcard.onnx")
    card = tmp_path / "card.png"
    Image.fromarray(colour_bar_card()).save(card)
    collector = collector_factory(mosquitto.port)
    publishers = [
        subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("card"), duration_s=DURATION_S, known_png=card,
                                            show=SHOW)),
        subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("clean"), duration_s=DURATION_S)),
    ]
    state = tmp_path / "state"
    mon = monitor_factory({
        "node": "clf", "broker": {"url": mosquitto.url, "topic_prefix": "t"}, "workers": 2, "state_dir": str(state),
        "streams": [{"id": "card", "url": nginx_rtmp.rtmp_url("card")},
                    {"id": "clean", "url": nginx_rtmp.rtmp_url("clean")}],
        "analyses": [{"kind": "known_content"}, classifier_entry(model)],
        "ingest": {"backoff_initial_s": 0.3, "backoff_max_s": 2.0},
    })
    try:
        first = collector.wait_for(lambda m: m.topic == "t/clf/alerts/card", DURATION_S + 20)
        assert first, mon.log()
        incident_id = first[0].json()["incident_id"]
        # A moderator dismisses it: the same command as for matches; a feedback record for the vendor follows.
        mqtt_publish.single("t/clf/commands", json.dumps({
            "schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()), "action": "dismiss",
            "incident_id": incident_id, "stream_id": "card", "moderator": "carol", "reason": "a test card"}),
            qos=1, hostname="127.0.0.1", port=mosquitto.port)
        assert collector.wait_for(lambda m: m.topic == f"t/clf/incidents/{incident_id}"
                                  and m.json()["status"] == "dismissed", 10), mon.log()
        for p in publishers:
            assert p.wait(DURATION_S + 30) == 0, "ffmpeg publisher failed"
    finally:
        for p in publishers:
            p.kill()
        mon.stop()
    log = mon.log()
    assert "Traceback" not in log, log
    validator = jsonschema.Draft202012Validator(alert_schema(), format_checker=jsonschema.FormatChecker())
    alerts = [m.json() for m in collector.matching(lambda m: "/alerts/" in m.topic)]
    for a in alerts:
        validator.validate(a)
    assert [a["stream_id"] for a in alerts] == ["card"], (alerts, log)
    a = alerts[0]
    assert (a["kind"], a["label"], a["bank"], a["pipeline"], a["severity"]) == (
        "classification", "testcard", "testcard", "testcard", "medium")
    assert a["score"] >= 0.6 and a["score_threshold"] == 0.6
    assert a["model_id"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert SHOW[0] - 0.1 <= a["media_time_s"] <= SHOW[1] + 2.5, a
    incidents = {m.json()["incident_id"]: m.json() for m in collector.matching(lambda m: "/incidents/" in m.topic)}
    assert len(incidents) == 1, incidents
    inc = next(iter(incidents.values()))
    assert inc["kind"] == "classification" and inc["label"] == "testcard" and inc["stream_id"] == "card"
    assert inc["alert_ids"] == [a["alert_id"]] and inc["samples"] >= 2
    assert TESTCARD_LABELS == ("testcard", "other")

    (line,) = (state / "classifier-feedback.jsonl").read_text().splitlines()
    feedback = json.loads(line)
    assert {k: feedback[k] for k in ("incident_id", "analysis", "label", "decision", "moderator", "model_id")} == {
        "incident_id": a["incident_id"], "analysis": "testcard", "label": "testcard", "decision": "false_positive",
        "moderator": "carol", "model_id": a["model_id"]}
    assert feedback["score"] >= a["score"] and len(feedback["sample_hash"]) == 64
    assert "image" not in line  # evidence.store_images is off
    assert not (state / "negative-proposals.jsonl").exists()  # a label is no bank entry
    evidence = state / "evidence.sqlite"
    verify = run_cli("evidence", "verify", str(evidence))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report_path = tmp_path / "report.json"
    assert run_cli("evidence", "export", str(evidence), a["incident_id"], "--out", str(report_path)).returncode == 0
    report = report_path.read_text()
    assert a["model_id"] in report and "carol" in report and a["sample_hash"] in report


@pytest.mark.realinfra
@pytest.mark.slow
def test_bench_clean_mode_reports_what_a_natural_stream_gave(tmp_path: Path) -> None:
    """`monitor bench classify --clean-minutes N`, shortened: natural pictures through nginx-rtmp to `monitor run`
    with the demonstration classifier at its defaults; the figures come from the monitor's own /metrics."""
    from monitor_tools.bench.classify_live import clean_run
    from tests.conftest import require_tools

    require_tools()  # skipped without nginx-rtmp, Mosquitto and ffmpeg, except on CI
    out = clean_run(tmp_path, 0.25)
    assert "skipped" not in out, out
    assert out["samples_classified"] >= 1 and out["samples_analysed"] >= out["samples_classified"], out
    assert out["inferences"]["failed"] == 0 and set(out["max_score"]) == {"testcard", "other"}
    assert out["max_score"]["testcard"] < out["threshold"]
    assert out["incidents_zero"] and out["classification_alerts"] == out["classification_incidents"] == 0


@pytest.mark.realinfra
@pytest.mark.slow
def test_a_service_answering_after_two_seconds_leaves_hash_alerts_on_time(
    mosquitto: Mosquitto, bank_csv: Path, tmp_path: Path, monitor_factory: Callable[..., MonitorProcess],
) -> None:
    """`monitor run` (a worker process) with the hash matcher and a classification service that answers every
    sample after 2 s: the known pictures' alerts reach a subscriber within a second of their keyframe packet
    being read, while the service's calls take 2 s each (its own metrics say so)."""
    from monitor_tools.bench.classify_live import AlertSubscriber, scrape
    from test_streams.infra import free_port
    from tests.unit.test_classifier_service import make_cert, serve

    cert, key = make_cert(tmp_path, "service")
    service = serve(cert, key)
    svc = next(service)
    svc.delay_s = 2.0
    sub = AlertSubscriber(mosquitto.port, "t")
    port, mport = free_port(), free_port()
    gen = subprocess.Popen([sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
                            "--duration", "22", "--show", "0:4:8", "--show", "1:12:16"], cwd=REPO)
    time.sleep(0.5)
    mon = monitor_factory({
        "node": "slow", "broker": {"url": mosquitto.url, "topic_prefix": "t"}, "workers": 1,
        "streams": [{"id": "cam", "url": f"tcp://127.0.0.1:{port}"}],
        "banks": [{"name": "known", "path": str(bank_csv)}],
        "analyses": [{"kind": "known_content"}, {
            "kind": "service_classifier", "name": "vendor", "url": svc.url, "model_id": "vendor-slow",
            "ca_file": str(cert), "timeout_s": 5, "max_concurrency": 2, "scores_field": "result.scores",
            "label_map": {"bars": "bright"}, "labels": [{"name": "bright", "threshold": 0.99}],
            "sampling": {"every_k": 1}}],
        "metrics": {"enabled": True, "port": mport},
    })
    try:
        assert gen.wait(40) == 0
        time.sleep(6.0)  # the worker reports its classifier's figures every 5 s
        got = scrape(mport)
    finally:
        gen.kill()
        mon.stop()
        sub.close()
        next(service, None)
    with sub.lock:
        arrivals = [(t, m) for t, topic, m in sub.messages if "/alerts/" in topic]
    matches = [(t, m) for t, m in arrivals if m["kind"] == "match"]
    assert len(matches) == 2 and len({m["entry_id"] for _, m in matches}) == 2, (arrivals, mon.log())
    late = [(t - _unix(m["received_at"]), m["entry_id"]) for t, m in matches]
    assert all(lat < 1.0 for lat, _ in late), late
    calls = got[("monitor_classifier_inference_seconds_count", (("analysis", "vendor"),))]
    took = got[("monitor_classifier_inference_seconds_sum", (("analysis", "vendor"),))]
    assert calls >= 2 and took / calls >= 1.9, (calls, took)  # every call waited for the slow answer
    assert svc.requests >= 2 and "Traceback" not in mon.log()


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
