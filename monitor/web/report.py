"""An incident as a CyberTipline-shaped report (NCMEC's reporting API), JSON and XML, built on the evidence
export (monitor/evidence/export.py `export_incident`). Export only: nothing here opens a connection.

The shape follows the API's report: `incidentSummary` (incidentType, incidentDateTime), `internetDetails` (the
stream as a web page with the live-streaming annotation), `reporter`, `personOrUserReported` (espIdentifier,
espService, screenName, ipCaptureEvent), one `fileDetails` per matched sample (its hash, fileViewedByEsp,
publiclyAvailable, industry classification, annotations) and the evidence chain's excerpt (records, hashes, the
verification). The operator completes the reporter's contact and reviews it before filing it with NCMEC.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["INCIDENT_TYPE", "cybertip_report", "report_xml"]

INCIDENT_TYPE: Final = "Child Pornography (possession, manufacture, and distribution)"
JsonObj = dict[str, object]


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _obj(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def cybertip_report(export: Mapping[str, object], *, viewed_by: Iterable[str] = (), esp_service: str = "livestream",
                    reporter: Mapping[str, object] | None = None) -> JsonObj:
    """The report of one incident from its evidence export; viewed_by: who looked at the sample's image."""
    stream = _obj(export.get("stream"))
    urls = [str(u) for u in _list(stream.get("stream_urls"))]
    ids = [str(s) for s in _list(stream.get("stream_ids"))]
    addrs = [str(a) for a in _list(stream.get("publisher_addresses"))]
    viewed = sorted(set(viewed_by))
    files: list[JsonObj] = []
    for m in (_obj(x) for x in _list(export.get("matches"))):
        files.append({
            "fileName": f"sample-{m.get('seq')}",
            "hash": {"type": str(m.get("signal_type") or "pdq"), "value": m.get("sample_hash")},
            "fileViewedByEsp": bool(viewed),
            "publiclyAvailable": True,  # it was live on the stream
            "industryClassification": m.get("entry_label") or None,
            "annotations": {"liveStreaming": True},
            "originalFileName": None,
            "details": {"bank": m.get("bank"), "entryId": m.get("entry_id"), "distance": m.get("distance"),
                        "threshold": m.get("threshold"), "mediaTimeS": m.get("media_time_s"),
                        "observedAt": m.get("observed_at"), "evidenceSeq": m.get("seq")},
        })
    first_seen = export.get("first_seen_utc")
    evidence = _obj(export.get("evidence"))
    return {
        "report": {
            "incidentSummary": {"incidentType": INCIDENT_TYPE, "incidentDateTime": first_seen,
                                "incidentDateTimeDescription": "first match of the live stream"},
            "internetDetails": [{"webPageIncident": {"url": u, "additionalInfo": "live stream"},
                                 "annotations": {"liveStreaming": True}} for u in urls],
            "reporter": dict(reporter or {"reportingPerson": None, "contactPerson": None}),
            "personOrUserReported": {
                "espIdentifier": ids[0] if ids else None,
                "espService": esp_service,
                "screenName": ids[0] if ids else None,
                "ipCaptureEvent": [{"ipAddress": a, "eventName": "Upload", "dateTime": first_seen} for a in addrs],
            },
            "fileDetails": files,
            "additionalInfo": f"incident {export.get('incident_id')}; matched samples are not attached "
                              "(images are kept only under evidence.store_images)",
        },
        "evidenceChain": {
            "incidentId": export.get("incident_id"),
            "moderatorActions": _list(export.get("moderator_actions")),
            "terminations": _list(export.get("terminations")),
            "verification": evidence.get("verification"),
            "firstRecord": evidence.get("first_record"),
            "lastRecord": evidence.get("last_record"),
            "signing": evidence.get("signing"),
        },
        "submitted": False,
    }


def _add(parent: ET.Element, name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        el = ET.SubElement(parent, name)
        for k, v in value.items():
            _add(el, str(k), v)
    elif isinstance(value, list):
        for item in value:
            _add(parent, name, item)
    else:
        ET.SubElement(parent, name).text = str(value).lower() if isinstance(value, bool) else str(value)


def report_xml(report: Mapping[str, object]) -> str:
    """The report's `report` part as the API's XML (<report> root; lists as repeated elements)."""
    root = ET.Element("report")
    for k, v in _obj(report.get("report")).items():
        if k == "fileDetails":
            continue  # files are their own submissions in the API: kept as <fileDetails> below for review
        _add(root, k, v)
    for f in _list(_obj(report.get("report")).get("fileDetails")):
        _add(root, "fileDetails", f)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
