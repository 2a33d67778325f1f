"""The wire contracts (monitor/contracts/): what the real producers build fits its model and its JSON Schema, what
does not is refused with a message naming the field, and the committed schemas are the ones the models generate.

Producers called here: `build_alert` (monitor/contracts/alerts.py), `IncidentBook` and `Incident.to_message`
(monitor/incidents/book.py), the engine's stream state and health (monitor/app/engine.py, with a real
`SamplingReport` fed by a real `Scheduler`), the publisher's node status (monitor/delivery/mqtt.py), and the
console's `build_command` (monitor/console/actions.py), which the incident book must accept.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest

from monitor.console.actions import build_command
from monitor.console.state import ConsoleState
from monitor.contracts.alerts import Alert, build_alert
from monitor.contracts.base import ContractError, StreamStateName, WireModel, check
from monitor.contracts.messages import Command, Health, Incident, NodeStatus, StreamStatus
from monitor.contracts.schemas import MODELS, SCHEMA_DIR, generate, render
from monitor.incidents import ClassifierPolicy, CommandError, IncidentBook, IncidentPolicy, NewIncident
from monitor.ingest.coverage import CoveragePolicy
from monitor.runtime.messages import StateChange, StreamState
from pipelines.base import Finding

T0 = 1_700_000_000.0


def validator(model: type[WireModel]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(generate(model), format_checker=jsonschema.FormatChecker())


def fits(model: type[WireModel], body: dict[str, Any]) -> None:
    """`body`, as it goes over the wire, fits the model and the model's committed JSON Schema."""
    wire = json.loads(json.dumps(body))
    check(model, wire)
    check(model, json.dumps(body).encode())
    committed = json.loads((SCHEMA_DIR / model.schema_file).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(committed, format_checker=jsonschema.FormatChecker()).validate(wire)


def refused(model: type[WireModel], body: object, *words: str) -> str:
    """`body` is refused by the model (with each of `words` in the message) and by the JSON Schema."""
    with pytest.raises(ContractError) as err:
        check(model, body)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not validator(model).is_valid(body)
    return message


# ------------------------------------------------------------------------------------------------ the schemas


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.schema_file)
def test_committed_schema_is_the_generated_one(model: type[WireModel]) -> None:
    path = SCHEMA_DIR / model.schema_file
    assert path.read_text(encoding="utf-8") == render(model), (
        f"{path} differs from what {model.__name__} generates: run `python -m monitor.contracts.schemas`")
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text(encoding="utf-8")))


def test_every_schema_file_has_a_model() -> None:
    assert {p.name for p in Path(SCHEMA_DIR).glob("*.json")} == {m.schema_file for m in MODELS}


def test_writer_writes_what_the_test_compares(tmp_path: Path) -> None:
    from monitor.contracts.schemas import write

    assert sorted(p.name for p in write(tmp_path)) == sorted(m.schema_file for m in MODELS)
    assert write(tmp_path) == []  # unchanged the second time
    assert all((tmp_path / m.schema_file).read_text() == render(m) for m in MODELS)


def test_stream_state_names_are_the_runtime_states() -> None:
    assert set(get_args(StreamStateName)) == {s.value for s in StreamState}


# ------------------------------------------------------------------------------------------------ alerts


def match_finding(**changes: Any) -> Finding:
    f = Finding("known_content", "s1", 12.5, T0, "bank1", "3", "pdq", 4, 31, 90, "ab" * 32, "lbl", ("x",))
    return replace(f, **changes)


def class_finding(stream: str = "s1", score: float = 0.9) -> Finding:
    return Finding("tc", stream, 3.0, T0, "tc", "testcard", "classifier", 0, 0, 80, "ab" * 32, "testcard",
                   kind="classification", label="testcard", score=score, score_threshold=0.6,
                   model_id="sha256:" + "1" * 64, severity="medium")


def alerts() -> Iterator[dict[str, Any]]:
    yield build_alert(match_finding(), node="n1", stream_url="rtmp://h/live/s1", observed_at=time.time())
    yield build_alert(match_finding(entry_frame_s=3.5, variant="stripped:flip_h", signal_type="phash"), node="n1",
                      stream_url="u", observed_at=T0, incident_id=str(uuid.uuid4()))
    yield build_alert(class_finding(), node="n1", stream_url="u", observed_at=T0, incident_id="i-1")


def test_alerts_the_monitor_builds_fit() -> None:
    for alert in alerts():
        fits(Alert, alert)


MATCH = next(alerts())
CLASSIFIED = list(alerts())[2]


@pytest.mark.parametrize(("change", "words"), [
    ({"schema_version": 1}, ["schema_version"]),
    ({"type": "incident"}, ["type"]),
    ({"alert_id": "not-a-uuid"}, ["alert_id", "UUID"]),
    ({"stream_id": "has space"}, ["stream_id"]),
    ({"node": ""}, ["node"]),
    ({"distance": 257}, ["distance"]),
    ({"distance": -1}, ["distance"]),
    ({"distance": "4"}, ["distance"]),
    ({"distance": True}, ["distance"]),
    ({"distance": 4.5}, ["distance"]),
    ({"distance": None}, ["distance and threshold"]),
    ({"quality": 101}, ["quality"]),
    ({"signal_type": "classifier"}, ["signal_type"]),
    ({"sample_hash": "AB" * 32}, ["sample_hash"]),
    ({"media_time_s": "12.5"}, ["media_time_s"]),
    ({"entry_tags": None}, ["entry_tags"]),
    ({"kind": "guess"}, ["kind"]),
    ({"surprise": 1}, ["surprise", "unknown field"]),
])
def test_bad_match_alerts_are_refused(change: dict[str, Any], words: list[str]) -> None:
    refused(Alert, {**MATCH, **change}, *words)


@pytest.mark.parametrize(("change", "words"), [
    ({"severity": None}, ["severity"]),
    ({"model_id": ""}, ["model_id"]),
    ({"score": 1.5}, ["score"]),
    ({"label": None}, ["label"]),
    ({"signal_type": "pdq"}, ["signal_type"]),
])
def test_bad_classification_alerts_are_refused(change: dict[str, Any], words: list[str]) -> None:
    refused(Alert, {**CLASSIFIED, **change}, *words)


def test_missing_fields_are_refused() -> None:
    for key in ("entry_id", "kind", "distance", "sample_hash"):
        refused(Alert, {k: v for k, v in MATCH.items() if k != key}, key, "missing")
    refused(Alert, {k: v for k, v in CLASSIFIED.items() if k != "model_id"}, "model_id")
    with pytest.raises(ContractError, match="not JSON"):
        check(Alert, b"{oops")
    with pytest.raises(ContractError, match="expected a JSON object, got list"):
        check(Alert, b"[1]")


def test_an_integer_may_be_written_with_a_point_as_json_schema_allows() -> None:
    fits(Alert, {**MATCH, "distance": 4.0})
    assert check(Alert, {**MATCH, "distance": 4.0}).distance == 4


# ------------------------------------------------------------------------------------------------ incidents


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def incident_messages() -> Iterator[dict[str, Any]]:
    """Every kind of incident update a real IncidentBook publishes: opened, better match, acknowledged, terminated
    with its result, dismissed, closed when quiet, closed when the stream ended, and a classification."""
    clock = Clock()
    book = IncidentBook(IncidentPolicy(strong_distance=16, update_interval_s=0), {"bank1": "medium"}, clock,
                        classifiers={"tc": ClassifierPolicy(1, 1, 20.0)})

    def opened(stream: str, distance: int = 4) -> Any:
        (ev,) = [e for e in book.on_sample(stream, 1.0, [match_finding(stream_id=stream, distance=distance)])
                 if isinstance(e, NewIncident)]
        yield ev.incident.to_message("n1", f"rtmp://h/live/{stream}")
        return ev.incident

    def apply(inc: Any, action: str, reason: str | None = None) -> dict[str, Any]:
        cmd = build_command(action, incident_id=inc.incident_id, stream_id=inc.stream_id, moderator="ann",
                            reason=reason)
        outcome = book.apply_command(cmd)
        assert outcome.changed
        return outcome.incident.to_message("n1", "u")

    a = yield from opened("s1", distance=12)
    clock.t += 1
    for ev in book.on_sample("s1", 2.0, [match_finding(distance=2)]):
        yield ev.incident.to_message("n1", "u")  # IncidentUpdate: better match
    yield apply(a, "acknowledge")
    yield apply(a, "terminate")
    (result,) = book.record_result(a.incident_id, book.get(a.incident_id).history[-1].command_id,
                                   "dropped: kicked")
    yield result.incident.to_message("n1", "u")
    b = yield from opened("s2")
    yield apply(b, "dismiss", "a cartoon lookalike")
    yield from opened("s3")
    clock.t += 1000
    for ev in book.tick():
        yield ev.incident.to_message("n1", "u")  # closed: quiet
    yield from opened("s4")
    for ev in book.stream_ended("s4"):
        yield ev.incident.to_message("n1", "u")
    for ev in book.on_classified("s5", "tc", 1.0, [class_finding("s5")]):
        yield ev.incident.to_message("n1", "u")


def test_incidents_the_book_publishes_fit() -> None:
    messages = list(incident_messages())
    statuses = {m["status"] for m in messages}
    assert statuses == {"open", "acknowledged", "terminated", "dismissed", "closed"}, statuses
    assert any(m.get("kind") == "classification" for m in messages)
    assert any(h["result"] == "dropped: kicked" for m in messages for h in m["history"])
    assert any(h["action"] == "close" and h["moderator"] is None for m in messages for h in m["history"])
    for m in messages:
        fits(Incident, m)


INCIDENT = next(incident_messages())


@pytest.mark.parametrize(("change", "words"), [
    ({"status": "sleeping"}, ["status"]),
    ({"severity": "urgent"}, ["severity"]),
    ({"incident_id": ""}, ["incident_id"]),
    ({"samples": -1}, ["samples"]),
    ({"first_seen": "yesterday"}, ["first_seen", "ISO 8601"]),
    ({"best_distance": None}, ["best_distance"]),
    ({"history": [{"action": "nap", "moderator": None, "at": "2024-01-01T00:00:00Z", "reason": "",
                   "result": None}]}, ["history/0/action"]),
    ({"schema_version": 2}, ["schema_version"]),
    ({"extra": 1}, ["extra", "unknown field"]),
])
def test_bad_incidents_are_refused(change: dict[str, Any], words: list[str]) -> None:
    body = {**INCIDENT, **change}
    if "first_seen" in change:  # the JSON Schema's date-time format is only checked with rfc3339-validator
        with pytest.raises(ContractError, match="first_seen"):
            check(Incident, body)
        return
    refused(Incident, body, *words)


# ------------------------------------------------------------------------------------------------ commands


def test_commands_the_console_builds_fit_and_the_book_applies_them() -> None:
    clock = Clock()
    book = IncidentBook(IncidentPolicy(), {"bank1": "high"}, clock)
    for action, reason in (("acknowledge", None), ("escalate", None), ("terminate", None)):
        (ev, *_) = book.on_sample("s1", 1.0, [match_finding()])
        inc = ev.incident
        cmd = build_command(action, incident_id=inc.incident_id, stream_id="s1", moderator="ann", reason=reason)
        fits(Command, cmd)
        assert book.apply_command(cmd).changed
        clock.t += 1000
        book.tick()
    (ev, *_) = book.on_sample("s2", 1.0, [match_finding(stream_id="s2")])
    cmd = build_command("dismiss", incident_id=ev.incident.incident_id, stream_id="s2",
                        moderator="ann", reason="lookalike")
    fits(Command, cmd)
    assert book.apply_command(cmd).changed


COMMAND = build_command("acknowledge", incident_id="i-1", stream_id="s1", moderator="ann", at=T0)


@pytest.mark.parametrize(("change", "field", "in_schema"), [
    ({"action": "delete"}, "action", True),
    ({"moderator": "  "}, "moderator", True),
    ({"moderator": "eve\nadmin"}, "moderator", False),  # which characters: the model's rule, not the schema's
    ({"moderator": "m" * 101}, "moderator", True),
    ({"reason": "why\x1b[2J"}, "reason", False),
    ({"reason": "r" * 1001}, "reason", True),
    ({"command_id": ""}, "command_id", True),
    ({"incident_id": 5}, "incident_id", True),
    ({"schema_version": 2}, "schema_version", True),
    ({"type": "order"}, "type", True),
    ({"sudo": True}, "sudo", True),
])
def test_bad_commands_are_refused_by_the_model_and_by_the_book(change: dict[str, Any], field: str,
                                                               in_schema: bool) -> None:
    body = {**COMMAND, **change}
    with pytest.raises(ContractError, match=field):
        check(Command, body)
    with pytest.raises(CommandError) as err:
        IncidentBook(IncidentPolicy(), {}).apply_command(body)
    assert err.value.field == field
    assert validator(Command).is_valid(body) is not in_schema


def test_build_command_refuses_what_the_monitor_would() -> None:
    with pytest.raises(ContractError, match="reason"):
        build_command("dismiss", incident_id="i", stream_id="s", moderator="ann", reason="x" * 1001)
    with pytest.raises(ValueError, match="unknown action"):
        build_command("delete", incident_id="i", stream_id="s", moderator="ann")


# ------------------------------------------------------------------------------------------------ node, health, streams


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Any, list[tuple[str, dict[str, Any]]]]]:
    from monitor.app.engine import Engine
    from monitor.config.models import build_config

    eng = Engine(build_config({"state_dir": str(tmp_path / "state"), "workers": 0, "node": "node-1"}), [])
    sent: list[tuple[str, dict[str, Any]]] = []
    eng.publisher.send_json = lambda topic, body, **_: sent.append((topic, body))
    try:
        yield eng, sent
    finally:
        eng._evidence_writer.shutdown(wait=True)
        eng.state_lock.release()


def test_stream_states_the_engine_publishes_fit(engine: tuple[Any, list[tuple[str, dict[str, Any]]]]) -> None:
    eng, sent = engine
    for state in StreamState:
        eng._publish_state(StateChange("cam-1", state, f"{state.value} detail", time.time(), 2,
                                       1.5 if state == StreamState.RECONNECTING else None))
    # What the engine's tick does, with the stream sampled between keyframes by the supervisor's scheduler.
    eng.supervisor.scheduler.add_stream("cam-1", coverage=CoveragePolicy())
    eng.sampling_report.update(eng.supervisor.stats())
    eng._publish_state(StateChange("cam-1", StreamState.LIVE, "", time.time(), 0))
    assert sent[-1][1]["sampling"] is not None and sent[0][1]["sampling"] is None
    for topic, body in sent:
        assert topic == "livesafe/node-1/streams/cam-1"
        fits(StreamStatus, body)


def test_health_the_engine_publishes_fits(engine: tuple[Any, list[tuple[str, dict[str, Any]]]]) -> None:
    eng, sent = engine
    eng.states["cam-1"] = StateChange("cam-1", StreamState.LIVE, "", time.time(), 0)
    stop = asyncio.Event()
    eng.publisher.send_json = lambda topic, body, **_: (sent.append((topic, body)), stop.set())
    asyncio.run(eng._health(stop))
    ((topic, body),) = sent
    assert topic == "livesafe/node-1/health" and body["streams"] == {"live": 1}
    fits(Health, body)


def test_node_status_the_publisher_sends_fits(engine: tuple[Any, list[tuple[str, dict[str, Any]]]]) -> None:
    eng, _ = engine
    for state in ("online", "offline"):
        fits(NodeStatus, json.loads(eng.publisher._status(state)))
    refused(NodeStatus, {"node": "node-1", "state": "asleep", "at": T0}, "state")
    refused(NodeStatus, {"node": "node-1", "state": "online", "at": "now"}, "at")


@pytest.mark.parametrize(("model", "body", "words"), [
    (StreamStatus, {"state": 5}, ["missing"]),
    (Health, {"node": "n", "at": T0}, ["streams", "missing"]),
])
def test_partial_messages_are_refused(model: type[WireModel], body: dict[str, Any], words: list[str]) -> None:
    refused(model, body, *words)


# ------------------------------------------------------------------------------------------------ the console


def test_the_console_counts_what_breaks_the_contract_and_says_why() -> None:
    st = ConsoleState("livesafe")
    publish: Callable[[str, object], None] = lambda topic, body: st.handle(f"livesafe/{topic}",  # noqa: E731
                                                                          json.dumps(body).encode())
    publish("n1/incidents/" + INCIDENT["incident_id"], INCIDENT)
    publish("n1/alerts/s1", {**MATCH, "incident_id": INCIDENT["incident_id"]})  # incident_id is in the contract
    assert st.malformed == 0 and list(st.incidents) == [INCIDENT["incident_id"]]
    publish("n1/incidents/" + INCIDENT["incident_id"], {**INCIDENT, "status": "sleeping"})
    publish("n1/alerts/s1", {**MATCH, "distance": 300})
    assert st.malformed == 2
    assert any("incident: status: Input should be" in line and "'sleeping'" in line for line in st.log_lines)
    assert any("alert: distance" in line for line in st.log_lines)


def test_the_contract_and_the_incident_book_name_the_same_statuses_actions_and_severities() -> None:
    from monitor.contracts import messages
    from monitor.incidents import model as book  # the types the book deals in (monitor/incidents/model.py)

    assert set(get_args(messages.Status)) == set(get_args(book.Status))
    assert set(messages.ACTIONS) == set(book.ACTION_STATUS)
    assert set(get_args(messages.Severity)) == set(get_args(book.Severity)) == set(book.SEVERITIES)


# ------------------------------------------------------------------------------------------------ signed commands


def test_a_sealed_command_fits_the_signed_command_contract() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from monitor.contracts.messages import SignedCommand, SignedCommandBody
    from monitor.web.actions import CommandSigner
    from monitor.web.actions import build_command as web_command

    cmd = web_command("terminate", incident_id="i1", stream_id="s1", moderator="alice", reason="known")
    for role, approver in (("moderator", "lena"), ("lead", None)):
        env = CommandSigner(Ed25519PrivateKey.generate()).wrap(cmd, role=role, approved_by=approver)
        fits(SignedCommand, env)
        body = check(SignedCommandBody, json.loads(str(env["signed"])))
        assert body.command.moderator == "alice" and body.role == role and body.approved_by == approver
    refused(SignedCommand, {**env, "format": "lsmc-command-2"}, "format")
    refused(SignedCommand, {**env, "signature": "not base64!"}, "signature")
    refused(SignedCommand, {**env, "extra": 1}, "extra")


def test_the_signed_command_contract_agrees_with_its_readers() -> None:
    from monitor.contracts.messages import SignedCommand, SignedCommandBody
    from monitor.incidents.commands import _BODY_FIELDS, _ENVELOPE_FIELDS, SIGNED_FORMAT
    from monitor.web.users import ROLES

    assert set(SignedCommand.model_fields) == _ENVELOPE_FIELDS
    assert set(SignedCommandBody.model_fields) == _BODY_FIELDS
    assert get_args(SignedCommand.model_fields["format"].annotation)[0] == SIGNED_FORMAT
    content = generate(SignedCommand)["properties"]["signed"]["contentSchema"]
    assert set(content["properties"]) == set(content["required"]) == _BODY_FIELDS
    assert content["properties"]["command"]["$ref"] == generate(Command)["$id"]
    assert content["properties"]["role"]["anyOf"][0]["enum"] == list(ROLES)


@pytest.mark.parametrize(("inner", "field"), [
    ({"surplus": 1}, "signed.surplus"),
    ({"role": "owner"}, "signed.role"),
    ({"role": 3}, "signed.role"),
    ({"approved_by": "lena\u202e"}, "approved_by"),
    ({"approved_by": 7}, "approved_by"),
])
def test_open_signed_refuses_a_bad_body_though_the_signature_holds(inner: dict[str, object], field: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from monitor.evidence.signing import key_id
    from monitor.incidents.commands import SIGNED_TYPE, open_signed, signed_message

    key = Ed25519PrivateKey.generate()
    body = {"command": build_command("acknowledge", incident_id="i1", stream_id="s1", moderator="alice",
                                     reason=None), "role": "moderator", "approved_by": None, **inner}
    signed = json.dumps(body)
    env = {"type": SIGNED_TYPE, "format": "lsmc-command-1", "key_id": key_id(key.public_key()),
           "signature": base64.b64encode(key.sign(signed_message(signed))).decode(), "signed": signed}
    with pytest.raises(CommandError) as err:
        open_signed(env, {key_id(key.public_key()): key.public_key()}, now=time.time(), max_age_s=60)
    assert err.value.field == field
