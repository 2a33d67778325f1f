"""The CyberTipline-shaped report of an incident (monitor/web/report.py) from a real evidence log's export."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from monitor.evidence.export import export_incident
from monitor.evidence.store import EvidenceLog
from monitor.web.report import INCIDENT_TYPE, cybertip_report, report_xml


def make_log(path: Path) -> None:
    with EvidenceLog(path) as log:
        for t in (10.0, 12.0):
            log.append("match", stream_id="cam-7", incident_id="inc-1", body={
                "media_time_s": t, "received_at": 1767225600.0 + t, "bank": "known", "entry_id": "e-42",
                "entry_label": "A1", "signal_type": "pdq", "sample_hash": "ab" * 32, "distance": 4,
                "threshold": 31, "quality": 90, "stream_url": "rtmp://user:secret@10.0.0.5/live/cam-7",
                "publisher_addr": "198.51.100.7"})
        log.append("action", stream_id="cam-7", incident_id="inc-1", body={
            "moderator": "alice", "action": "acknowledge", "verified": True, "acted_at": "2026-01-01T00:00:20Z"})


def test_report_has_the_api_sections_and_no_secrets(tmp_path: Path) -> None:
    make_log(tmp_path / "evidence.sqlite")
    report = cybertip_report(export_incident(tmp_path / "evidence.sqlite", "inc-1"), viewed_by=["alice"])
    r = report["report"]
    assert isinstance(r, dict)
    assert r["incidentSummary"]["incidentType"] == INCIDENT_TYPE
    assert r["incidentSummary"]["incidentDateTime"].startswith("2026-01-01T00:00:10")
    assert r["internetDetails"][0]["annotations"] == {"liveStreaming": True}
    assert "secret" not in str(report)
    person = r["personOrUserReported"]
    assert person["espIdentifier"] == "cam-7" and person["screenName"] == "cam-7"
    assert person["ipCaptureEvent"][0]["ipAddress"] == "198.51.100.7"
    files = r["fileDetails"]
    assert len(files) == 2 and files[0]["hash"] == {"type": "pdq", "value": "ab" * 32}
    assert files[0]["fileViewedByEsp"] is True and files[0]["annotations"] == {"liveStreaming": True}
    chain = report["evidenceChain"]
    assert isinstance(chain, dict) and chain["verification"]["ok"] is True
    assert chain["moderatorActions"][0]["moderator"] == "alice"
    assert report["submitted"] is False


def test_report_xml_parses_with_repeated_elements(tmp_path: Path) -> None:
    make_log(tmp_path / "evidence.sqlite")
    report = cybertip_report(export_incident(tmp_path / "evidence.sqlite", "inc-1"))
    root = ET.fromstring(report_xml(report).split("\n", 1)[1])
    assert root.tag == "report"
    assert root.findtext("incidentSummary/incidentType") == INCIDENT_TYPE
    assert root.findtext("internetDetails/annotations/liveStreaming") == "true"
    assert len(root.findall("fileDetails")) == 2
    assert root.findtext("fileDetails/fileViewedByEsp") == "false"
    assert root.findtext("personOrUserReported/ipCaptureEvent/ipAddress") == "198.51.100.7"
