"""The review queue: oldest first, filters, claims (one moderator per incident), the two-person rule."""

from __future__ import annotations

import pytest

from monitor.contracts.messages import Incident
from monitor.web.queue import QueueError, ReviewQueue


def incident(incident_id: str, first_seen: str, *, status: str = "open", bank: str = "b1", severity: str = "high",
             stream: str = "s1", node: str = "node-1") -> Incident:
    return Incident.model_validate({
        "schema_version": 1, "type": "incident", "incident_id": incident_id, "node": node, "stream_id": stream,
        "stream_url": "rtmp://127.0.0.1/live/x", "bank": bank, "entry_id": "e1", "entry_label": None,
        "severity": severity, "status": status, "first_seen": first_seen, "last_seen": first_seen,
        "first_media_time_s": 0.0, "last_media_time_s": 1.0, "samples": 1, "best_distance": 3, "threshold": 31,
        "alert_ids": ["a"], "history": [], "updated_at": first_seen})


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_open_incidents_oldest_first_and_filtered() -> None:
    q = ReviewQueue()
    q.update(incident("i2", "2026-01-01T00:00:02Z", bank="b2"))
    q.update(incident("i1", "2026-01-01T00:00:01Z", severity="low"))
    q.update(incident("i3", "2026-01-01T00:00:00Z", status="dismissed"))
    q.update(incident("i4", "2026-01-01T00:00:03Z", stream="s2", node="node-2"))
    assert [i.incident_id for i in q.open_incidents()] == ["i1", "i2", "i4"]
    assert [i.incident_id for i in q.open_incidents(bank="b2")] == ["i2"]
    assert [i.incident_id for i in q.open_incidents(severity="low")] == ["i1"]
    assert [i.incident_id for i in q.open_incidents(stream="s2")] == ["i4"]
    assert [i.incident_id for i in q.open_incidents(node="node-2")] == ["i4"]


def test_two_moderators_never_hold_one_incident() -> None:
    clock = Clock()
    q = ReviewQueue(claim_ttl_s=60, clock=clock)
    q.update(incident("i1", "2026-01-01T00:00:01Z"))
    q.claim("i1", "alice")
    q.claim("i1", "alice")  # claiming again renews
    with pytest.raises(QueueError, match="claimed by alice"):
        q.claim("i1", "bob")
    with pytest.raises(QueueError, match="claimed by alice"):
        q.require_holder("i1", "bob")
    with pytest.raises(QueueError) as exc:
        q.release("i1", "bob", "moderator")
    assert exc.value.status == 403
    q.require_holder("i1", "alice")
    q.release("i1", "carol", "lead")  # a lead may take a claim back
    q.claim("i1", "bob")
    clock.t += 61  # lapses without activity
    q.claim("i1", "alice")
    assert q.claims() == {"i1": "alice"}
    q.update(incident("i1", "2026-01-01T00:00:01Z", status="dismissed"))
    assert q.claims() == {}
    with pytest.raises(QueueError, match="dismissed"):
        q.claim("i1", "alice")
    with pytest.raises(QueueError) as missing:
        q.claim("nope", "alice")
    assert missing.value.status == 404


def test_permanent_ban_needs_a_second_person() -> None:
    q = ReviewQueue()
    q.update(incident("i1", "2026-01-01T00:00:01Z"))
    a = q.request_approval("i1", "alice", "known material")
    with pytest.raises(QueueError, match="already waits"):
        q.request_approval("i1", "bob", "")
    with pytest.raises(QueueError, match="someone else"):
        q.approve(a.approval_id, "alice", "moderator")
    with pytest.raises(QueueError, match="viewer"):
        q.approve(a.approval_id, "victor", "viewer")
    assert q.approve(a.approval_id, "bob", "moderator") == a
    assert q.approvals == {}
    b = q.request_approval("i1", "alice", "")
    assert q.approve(b.approval_id, "lena", "lead").requested_by == "alice"
    c = q.request_approval("i1", "alice", "")
    with pytest.raises(QueueError, match="requester or a lead"):
        q.reject(c.approval_id, "bob", "moderator")
    q.reject(c.approval_id, "alice", "moderator")
    d = q.request_approval("i1", "alice", "")
    q.update(incident("i1", "2026-01-01T00:00:01Z", status="terminated"))  # final: nothing left to approve
    assert d.approval_id not in q.approvals
