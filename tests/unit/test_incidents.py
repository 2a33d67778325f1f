from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.incidents import (
    CommandError,
    Event,
    Incident,
    IncidentBook,
    IncidentPolicy,
    IncidentUpdate,
    NewIncident,
    Quarantined,
    QuarantineLifted,
    Suppressed,
)
from pipelines.base import Finding

T0 = 1_700_000_000.0
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
INCIDENT_KEYS = {
    "schema_version", "type", "incident_id", "node", "stream_id", "stream_url", "bank", "entry_id", "entry_label",
    "severity", "status", "first_seen", "last_seen", "first_media_time_s", "last_media_time_s", "samples",
    "best_distance", "threshold", "alert_ids", "history", "updated_at",
}


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def finding(stream: str = "s1", t: float = 0.0, distance: int = 4, bank: str = "b1", entry: str = "e1") -> Finding:
    return Finding("known_content", stream, t, T0, bank, entry, "pdq", distance, 31, 90, "ab" * 32, "label", ("x",))


def make_book(**policy: Any) -> tuple[IncidentBook, Clock]:
    # Findings carry threshold 31; a strong band up to 16 leaves 17..31 as weak matches to confirm (as with a
    # bank whose threshold is above the policy's strong_distance, default 31).
    policy.setdefault("strong_distance", 16)
    clock = Clock()
    return IncidentBook(IncidentPolicy(**policy), {"b1": "medium", "b2": "low"}, clock), clock


def sample(book: IncidentBook, stream: str, t: float, *found: Finding) -> list[Event]:
    return book.on_sample(stream, t, list(found))


def new_incident(events: list[Event]) -> Incident:
    news = [e for e in events if isinstance(e, NewIncident)]
    assert len(news) == 1, events
    return news[0].incident


def command(incident: Incident, action: str, **changes: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()), "action": action,
        "incident_id": incident.incident_id, "stream_id": incident.stream_id, "moderator": "alice",
        "reason": "looked at it", "at": "2024-01-01T00:00:00.000Z",
    }
    cmd.update(changes)
    return cmd


# -- matching ------------------------------------------------------------------------------------------------


def test_strong_match_alerts_at_once() -> None:
    book, _ = make_book()
    events = sample(book, "s1", 5.0, finding(t=5.0, distance=16))
    assert len(events) == 1 and isinstance(events[0], NewIncident)
    ev = events[0]
    inc = ev.incident
    assert uuid.UUID(inc.incident_id).version == 4 and inc.alert_ids == (ev.alert_id,)
    assert (inc.status, inc.severity, inc.samples, inc.best_distance, inc.threshold) == ("open", "medium", 1, 16, 31)
    assert book.open_incidents() == [inc] and book.get(inc.incident_id) == inc
    other = new_incident(sample(book, "s2", 0.0, finding("s2", bank="unknown-bank")))
    assert other.severity == "high"


def test_weak_match_needs_k_of_n_samples() -> None:
    book, _ = make_book()
    weak = 20
    first = finding(t=0, distance=weak)
    assert sample(book, "s1", 0.0, first) == [Suppressed(first, "unconfirmed")]
    assert sample(book, "s1", 2.0) == []
    assert sample(book, "s1", 4.0) == []
    # only 1 of the last 3 samples matched: still nothing
    events = sample(book, "s1", 6.0, finding(t=6.0, distance=weak))
    assert [type(e) for e in events] == [Suppressed]
    assert sample(book, "s1", 8.0) == []
    inc = new_incident(sample(book, "s1", 10.0, finding(t=10.0, distance=weak + 2)))
    # the unconfirmed sample is folded into the incident
    assert (inc.samples, inc.first_media_time_s, inc.last_media_time_s, inc.best_distance) == (2, 6.0, 10.0, weak)


def test_weak_matches_outside_the_media_window_do_not_confirm() -> None:
    book, _ = make_book()
    assert isinstance(sample(book, "s1", 0.0, finding(t=0, distance=20))[0], Suppressed)
    assert isinstance(sample(book, "s1", 31.0, finding(t=31, distance=20))[0], Suppressed)
    # media time going back (publisher restarted) starts a new window
    assert isinstance(sample(book, "s1", 1.0, finding(t=1, distance=20))[0], Suppressed)
    assert new_incident(sample(book, "s1", 2.0, finding(t=2, distance=20))).samples == 2


def test_sample_windows_are_capped_and_dropped_when_idle() -> None:
    book, clock = make_book()
    for i in range(50):
        sample(book, "s1", float(i), finding(t=i, distance=30, entry=str(i)))
    assert len(book._windows["s1"]) == 3
    clock.advance(121)
    book.tick()
    assert "s1" not in book._windows


def test_repeats_update_instead_of_alerting_rate_limited() -> None:
    book, clock = make_book()
    inc = new_incident(sample(book, "s1", 0.0, finding(distance=10)))
    clock.advance(1)
    assert sample(book, "s1", 1.0, finding(t=1, distance=10)) == []
    clock.advance(10)
    assert book.tick() == []  # held back: the interval has not passed
    better = sample(book, "s1", 2.0, finding(t=2, distance=3))
    assert [(type(e), getattr(e, "reason", None)) for e in better] == [(IncidentUpdate, "better match")]
    clock.advance(5)
    assert sample(book, "s1", 3.0, finding(t=3, distance=12)) == []
    clock.advance(25)  # 30 s since the last publication
    (ev,) = sample(book, "s1", 4.0, finding(t=4, distance=12))
    assert isinstance(ev, IncidentUpdate) and ev.reason == "activity"
    assert (ev.incident.incident_id, ev.incident.samples, ev.incident.best_distance) == (inc.incident_id, 5, 3)
    clock.advance(1)
    assert sample(book, "s1", 5.0, finding(t=5, distance=12)) == []
    clock.advance(30)
    (flushed,) = book.tick()  # a held-back change is published by tick
    assert isinstance(flushed, IncidentUpdate) and flushed.incident.samples == 6
    assert book.tick() == []


def test_quiet_incident_closes_and_a_new_match_opens_another() -> None:
    book, clock = make_book()
    inc = new_incident(sample(book, "s1", 0.0, finding()))
    clock.advance(119.9)
    assert book.tick() == []
    clock.advance(0.1)
    (ev,) = book.tick()
    assert isinstance(ev, IncidentUpdate) and ev.reason == "quiet" and ev.incident.status == "closed"
    closing = ev.incident.history[-1]
    assert (closing.action, closing.moderator) == ("close", None)
    assert book.open_incidents() == [] and book.get(inc.incident_id) == ev.incident
    again = new_incident(sample(book, "s1", 200.0, finding(t=200)))
    assert again.incident_id != inc.incident_id


def test_stream_ended_closes_its_incidents_only() -> None:
    book, _ = make_book()
    a = new_incident(sample(book, "s1", 0.0, finding()))
    b = new_incident(sample(book, "s1", 0.0, finding(entry="e2")))
    c = new_incident(sample(book, "s2", 0.0, finding("s2")))
    events = book.stream_ended("s1")
    assert {e.incident.incident_id for e in events if isinstance(e, IncidentUpdate)} == {a.incident_id, b.incident_id}
    assert all(isinstance(e, IncidentUpdate) and e.reason == "stream ended" and e.incident.status == "closed"
               for e in events)
    assert book.open_incidents() == [c]


# -- quarantine ------------------------------------------------------------------------------------------------


def test_entry_matching_many_streams_is_quarantined_once_then_lifted() -> None:
    book, clock = make_book(quarantine_streams=3, quarantine_s=1000.0)
    first = new_incident(sample(book, "s1", 0.0, finding("s1")))
    new_incident(sample(book, "s2", 0.0, finding("s2")))
    clock.advance(10)
    events = sample(book, "s3", 0.0, finding("s3"))
    assert [type(e) for e in events] == [NewIncident, Quarantined]
    q = events[1]
    assert isinstance(q, Quarantined)
    assert (q.bank, q.entry_id, q.streams, q.until) == ("b1", "e1", ("s1", "s2", "s3"), clock.t + 1000)
    assert [(type(e), getattr(e, "why", "")) for e in sample(book, "s4", 0.0, finding("s4"))] == [
        (Suppressed, "quarantined")]
    assert sample(book, "s5", 0.0, finding("s5"))[0] == Suppressed(finding("s5"), "quarantined")
    assert new_incident(sample(book, "s4", 1.0, finding("s4", t=1, entry="e2"))).entry_id == "e2"
    clock.advance(40)
    (upd,) = sample(book, "s1", 1.0, finding("s1", t=1))  # existing incidents stay and keep absorbing
    assert isinstance(upd, IncidentUpdate) and upd.incident.incident_id == first.incident_id
    clock.advance(1000)
    lifted = [e for e in book.tick() if not isinstance(e, IncidentUpdate)]
    assert lifted == [QuarantineLifted("b1", "e1")]
    assert book.quarantined() == {}
    new_incident(sample(book, "s4", 2.0, finding("s4", t=2)))


def test_openings_spread_beyond_the_window_do_not_quarantine() -> None:
    book, clock = make_book(quarantine_streams=2, quarantine_window_s=60.0)
    new_incident(sample(book, "s1", 0.0, finding("s1")))
    clock.advance(61)
    assert [type(e) for e in sample(book, "s2", 0.0, finding("s2"))] == [NewIncident]


# -- commands -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "field"), [
    ({"command_id": None}, "command_id"),
    ({"command_id": 7}, "command_id"),
    ({"action": "delete"}, "action"),
    ({"action": None}, "action"),
    ({"moderator": ""}, "moderator"),
    ({"moderator": "   "}, "moderator"),
    ({"moderator": "m" * 101}, "moderator"),
    ({"moderator": ["alice"]}, "moderator"),
    ({"reason": "r" * 1001}, "reason"),
    ({"reason": 5}, "reason"),
    ({"schema_version": 2}, "schema_version"),
    ({"schema_version": True}, "schema_version"),
    ({"type": "alert"}, "type"),
    ({"surprise": 1}, "surprise"),
    ({"incident_id": "nope"}, "incident_id"),
    ({"incident_id": 3}, "incident_id"),
    ({"stream_id": "other"}, "stream_id"),
    ({"at": 12}, "at"),
])
def test_command_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    book, _ = make_book()
    inc = new_incident(sample(book, "s1", 0.0, finding()))
    cmd = command(inc, "acknowledge")
    for k, v in changes.items():
        if v is None:
            cmd.pop(k)
        else:
            cmd[k] = v
    with pytest.raises(CommandError) as err:
        book.apply_command(cmd)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")
    assert book.get(inc.incident_id) == inc  # nothing applied


def test_command_must_be_an_object() -> None:
    book, _ = make_book()
    with pytest.raises(CommandError, match=r"^command: "):
        book.apply_command([])  # type: ignore[arg-type]


def test_acknowledge_escalate_terminate_with_history() -> None:
    book, clock = make_book()
    inc = new_incident(sample(book, "s1", 0.0, finding()))
    clock.advance(5)
    ack = book.apply_command(command(inc, "acknowledge", moderator="  alice "))
    assert ack.changed and not ack.duplicate and ack.proposed_negative_entry is None
    assert ack.incident.status == "acknowledged" and book.open_incidents() == [ack.incident]
    h = ack.incident.history[0]
    assert (h.action, h.moderator, h.at, h.reason, h.result) == ("acknowledge", "alice", T0 + 5, "looked at it", None)
    again = book.apply_command(command(inc, "acknowledge", moderator="bob"))
    assert not again.changed and len(again.incident.history) == 1 and "already" in again.message
    esc = book.apply_command(command(inc, "escalate", moderator="bob", reason=None))
    assert esc.incident.status == "escalated" and esc.incident.history[-1].reason == ""
    term_cmd = command(inc, "terminate")
    term = book.apply_command(term_cmd)
    assert term.incident.status == "terminated" and term.incident.history[-1].result == "requested"
    assert book.open_incidents() == []
    (res,) = book.record_result(inc.incident_id, term_cmd["command_id"], "kicked")
    assert isinstance(res, IncidentUpdate) and res.incident.history[-1].result == "kicked"
    assert book.get(inc.incident_id) == res.incident
    with pytest.raises(CommandError, match=r"^action: "):
        book.apply_command(command(inc, "acknowledge"))
    with pytest.raises(CommandError, match=r"^command_id: "):
        book.record_result(inc.incident_id, "no-such-command", "ok")
    # a kick in progress: no new alert storm for that key right away
    assert [getattr(e, "why", "") for e in sample(book, "s1", 1.0, finding(t=1))] == ["terminated"]


def test_closed_incident_accepts_terminate_only_after_a_moderator_engaged() -> None:
    book, clock = make_book()
    engaged = new_incident(sample(book, "s1", 0.0, finding()))
    ignored = new_incident(sample(book, "s2", 0.0, finding("s2")))
    book.apply_command(command(engaged, "escalate"))
    clock.advance(120)
    assert {e.incident.status for e in book.tick() if isinstance(e, IncidentUpdate)} == {"closed"}
    with pytest.raises(CommandError, match=r"^action: cannot terminate an incident that is closed"):
        book.apply_command(command(ignored, "terminate"))
    with pytest.raises(CommandError, match=r"^action: "):
        book.apply_command(command(engaged, "acknowledge"))
    out = book.apply_command(command(engaged, "terminate"))
    assert out.changed and out.incident.status == "terminated"
    assert [h.action for h in out.incident.history] == ["escalate", "close", "terminate"]


def test_duplicate_command_id_is_applied_once() -> None:
    book, _ = make_book()
    inc = new_incident(sample(book, "s1", 0.0, finding()))
    cmd = command(inc, "acknowledge")
    first = book.apply_command(cmd)
    book.apply_command(command(inc, "escalate"))
    dup = book.apply_command(dict(cmd))
    assert dup.duplicate and not dup.changed and dup.message == first.message
    assert dup.incident.status == "escalated"  # the current state, never an older one
    assert [h.action for h in dup.incident.history] == ["acknowledge", "escalate"]
    with pytest.raises(CommandError, match=r"^command_id: "):
        book.apply_command({**cmd, "action": "dismiss"})


def test_dismiss_proposes_negative_entry_and_suppresses_that_key() -> None:
    book, clock = make_book()
    inc = new_incident(sample(book, "s1", 0.0, finding()))
    out = book.apply_command(command(inc, "dismiss", reason="cartoon, not the listed image"))
    assert out.changed and out.incident.status == "dismissed" and out.proposed_negative_entry == ("b1", "e1")
    assert book.open_incidents() == []
    clock.advance(60)
    assert sample(book, "s1", 60.0, finding(t=60)) == [Suppressed(finding(t=60), "dismissed")]
    new_incident(sample(book, "s2", 0.0, finding("s2")))  # only that stream
    new_incident(sample(book, "s1", 61.0, finding(t=61, entry="e2")))  # only that entry
    clock.advance(60)
    book.tick()
    new_incident(sample(book, "s1", 120.0, finding(t=120)))  # the shadow has ended


def test_late_command_on_a_forgotten_incident() -> None:
    book, _ = make_book(remember_incidents=1)
    old = new_incident(sample(book, "s1", 0.0, finding()))
    book.stream_ended("s1")
    newer = new_incident(sample(book, "s2", 0.0, finding("s2")))
    book.stream_ended("s2")
    assert book.get(old.incident_id) is None and book.get(newer.incident_id) is not None
    with pytest.raises(CommandError, match=r"^incident_id: unknown or expired incident"):
        book.apply_command(command(old, "acknowledge"))


def test_to_message_follows_the_contract() -> None:
    book, clock = make_book()
    inc = new_incident(sample(book, "s1", 12.34567, finding(t=12.34567)))
    clock.advance(1.5)
    inc = book.apply_command(command(inc, "acknowledge")).incident
    msg = inc.to_message("node-1", "rtmp://h/live/s1")
    assert set(msg) == INCIDENT_KEYS
    assert (msg["schema_version"], msg["type"], msg["node"], msg["stream_url"]) == (1, "incident", "node-1",
                                                                                     "rtmp://h/live/s1")
    assert msg["first_media_time_s"] == 12.346 and msg["alert_ids"] == list(inc.alert_ids)
    for k in ("first_seen", "last_seen", "updated_at"):
        assert ISO_MS.match(msg[k]), msg[k]
    assert set(msg["history"][0]) == {"action", "moderator", "at", "reason", "result"}
    assert ISO_MS.match(msg["history"][0]["at"])
    assert json.loads(json.dumps(msg)) == msg


def test_policy_and_severity_validation() -> None:
    with pytest.raises(ValueError, match="confirm_k"):
        IncidentPolicy(confirm_k=4, confirm_n=3)
    with pytest.raises(ValueError, match="severit"):
        IncidentBook(IncidentPolicy(), {"b1": "critical"})


# -- property -------------------------------------------------------------------------------------------------------

STREAMS = ("s1", "s2", "s3")
_finding = st.tuples(st.sampled_from(("b1", "b2")), st.sampled_from(("e1", "e2")), st.integers(0, 31))
_sample = st.tuples(st.just("sample"), st.sampled_from(STREAMS), st.sampled_from((2.0, -30.0)) | st.floats(-1, 40),
                    st.lists(_finding, max_size=3))
_command = st.tuples(
    st.just("cmd"), st.sampled_from(("acknowledge", "escalate", "dismiss", "terminate", "nuke")), st.integers(0, 9),
    st.sampled_from(("c1", "c2", "c3", "", "")), st.sampled_from(("alice", "bob", "")),  # "": a fresh command id
)
_ops = st.lists(st.one_of(
    _sample,
    _sample,
    _command,
    st.tuples(st.just("wait"), st.sampled_from((1.0, 10.0, 61.0, 401.0)) | st.floats(0, 500)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("end"), st.sampled_from(STREAMS)),
    _command,
    st.tuples(st.just("result"), st.integers(0, 9), st.sampled_from(("c1", "c2"))),
), min_size=10, max_size=60)


def _pick(ids: list[str], idx: int) -> str:
    return ids[-1 - idx % len(ids)] if ids and idx < 9 else "unknown"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_random_operations_keep_invariants(ops: list[tuple[Any, ...]]) -> None:
    book, clock = make_book(update_interval_s=10.0, close_after_s=60.0, quarantine_streams=2, quarantine_s=400.0,
                            remember_incidents=4, remember_commands=4)
    media = dict.fromkeys(STREAMS, 0.0)
    ids: list[str] = []
    samples: dict[str, int] = {}
    quarantined: set[tuple[str, str]] = set()

    def check(incident: Incident) -> None:
        assert incident.samples >= samples.get(incident.incident_id, 1)
        samples[incident.incident_id] = incident.samples
        json.dumps(incident.to_message("n", "u"))

    for op in ops:
        events: list[Event] = []
        if op[0] == "sample":
            _, stream, dt, found = op
            media[stream] += dt
            fs = [Finding("p", stream, media[stream], T0, b, e, "pdq", d, 31, 90, "00", None) for b, e, d in found]
            events = book.on_sample(stream, media[stream], fs)
        elif op[0] == "wait":
            clock.advance(op[1])
        elif op[0] == "tick":
            events = book.tick()
        elif op[0] == "end":
            events = book.stream_ended(op[1])
        elif op[0] == "cmd":
            _, action, idx, cid, moderator = op
            target = _pick(ids, idx)
            cmd = {"schema_version": 1, "type": "command", "command_id": cid or str(uuid.uuid4()), "action": action,
                   "incident_id": target, "moderator": moderator}
            try:
                out = book.apply_command(cmd)
            except CommandError:
                continue
            assert not (out.changed and out.duplicate)
            check(out.incident)
        else:
            _, idx, cid = op
            try:
                events = book.record_result(_pick(ids, idx), cid, "ok")
            except CommandError:
                continue
        for ev in events:
            if isinstance(ev, NewIncident):
                assert ev.incident.incident_id not in samples
                assert (ev.incident.bank, ev.incident.entry_id) not in quarantined
                ids.append(ev.incident.incident_id)
            if isinstance(ev, NewIncident | IncidentUpdate):
                check(ev.incident)
            elif isinstance(ev, Quarantined):
                assert (ev.bank, ev.entry_id) not in quarantined
                quarantined.add((ev.bank, ev.entry_id))
            elif isinstance(ev, QuarantineLifted):
                quarantined.remove((ev.bank, ev.entry_id))
        live = book.open_incidents()
        assert len({i.key for i in live}) == len(live)
        assert all(i.is_open for i in live)
        for i in live:
            check(i)


def test_frames_of_a_known_video_need_several_samples_even_when_exact() -> None:
    from dataclasses import replace

    book, _ = make_book()
    frame = replace(finding(t=0.0, distance=0), entry_frame_s=12.0)
    assert sample(book, "s1", 0.0, frame) == [Suppressed(frame, "unconfirmed")]
    later = replace(finding(t=2.0, distance=3), entry_frame_s=14.0)  # the next second of the same video
    inc = new_incident(sample(book, "s1", 2.0, later))
    assert inc.samples == 2 and inc.entry_id == "e1"
