"""Signed commands: the web console seals each command for its logged-in user; the monitor records the user as
verified only when a trusted key signed it (monitor/incidents/commands.py, monitor/app/commands.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from monitor.app.commands import ClassifierImages, Commands, CommandTrustPolicy
from monitor.config.web import WebConfig
from monitor.contracts.alerts import utc_iso
from monitor.evidence.signing import generate_signing_key, key_id
from monitor.incidents import CommandError
from monitor.web.actions import CommandSigner, build_command


def command(moderator: str = "alice", at: float | None = None) -> dict[str, object]:
    cmd = build_command("acknowledge", incident_id="i1", stream_id="s1", moderator=moderator, reason=None)
    if at is not None:
        cmd["at"] = utc_iso(at)
    return cmd


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_signed_command_verifies_with_the_trusted_key(key: Ed25519PrivateKey) -> None:
    env = CommandSigner(key).wrap(command(), role="moderator")
    policy = CommandTrustPolicy({key_id(key.public_key()): key.public_key()})
    cmd, trust = policy.open(json.loads(json.dumps(env)))  # as it crosses MQTT
    assert cmd["moderator"] == "alice"
    assert trust.evidence() == {"verified": True, "key_id": key_id(key.public_key()), "role": "moderator",
                                "approved_by": None}


def test_unsigned_command_is_declared_unless_signatures_are_required(key: Ed25519PrivateKey) -> None:
    _cmd, trust = CommandTrustPolicy().open(command())
    assert trust.evidence() == {"verified": False}
    with pytest.raises(CommandError, match="signed commands only"):
        CommandTrustPolicy(require=True).open(command())


@pytest.mark.parametrize("tamper", ["name", "key", "stale", "field", "signature"])
def test_forged_or_replayed_envelopes_are_refused(key: Ed25519PrivateKey, tamper: str) -> None:
    env: dict[str, Any] = CommandSigner(key).wrap(command(at=time.time() - (1000 if tamper == "stale" else 0)),
                                                  role="moderator")
    keys = {key_id(key.public_key()): key.public_key()}
    if tamper == "name":
        env["signed"] = env["signed"].replace('"alice"', '"mallory"')
    elif tamper == "key":
        keys = {key_id(key.public_key()): Ed25519PrivateKey.generate().public_key()}
    elif tamper == "field":
        env["extra"] = 1
    elif tamper == "signature":
        env["signature"] = "!!"
    with pytest.raises(CommandError):
        CommandTrustPolicy(keys, max_age_s=300).open(env)
    with pytest.raises(CommandError, match="key_id"):
        CommandTrustPolicy({}).open(CommandSigner(key).wrap(command(), role="moderator"))


def test_policy_from_config_loads_the_public_keys(tmp_path: Path) -> None:
    _, pub, kid = generate_signing_key(tmp_path / "web.key")
    policy = CommandTrustPolicy.from_config(WebConfig(trusted_command_keys=[pub], require_signed_commands=True))
    assert list(policy.keys) == [kid] and policy.require


@dataclass
class Host:
    records: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    def record(self, kind: str, stream_id: str, body: Any, incident_id: str | None = None) -> None:
        self.records.append((kind, dict(body)))

    def send_incident(self, inc: Any, reason: str) -> None: ...

    def emit(self, events: Any, observed_at: float) -> None: ...

    async def terminate(self, *a: Any, **k: Any) -> Any: ...

    def spawn(self, coro: Any) -> None: ...


class Book:
    def __init__(self) -> None:
        self.applied: list[dict[str, object]] = []

    def apply_command(self, cmd: dict[str, object]) -> Any:
        assert "signature" not in cmd and "signed" not in cmd  # the book sees the plain command
        self.applied.append(cmd)
        inc = SimpleNamespace(incident_id="i1", stream_id="s1", kind="match")
        return SimpleNamespace(incident=inc, duplicate=False, changed=False, message="ok",
                               proposed_negative_entry=None)


def test_the_evidence_names_the_verified_user(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    host, book = Host(), Book()
    cmds = Commands(host, book, tmp_path, ClassifierImages(), False,  # type: ignore[arg-type]
                    CommandTrustPolicy({key_id(key.public_key()): key.public_key()}))
    cmds.handle(CommandSigner(key).wrap(command("alice"), role="moderator", approved_by="lena"))
    cmds.handle(command("bob"))  # the Textual console's: declared
    forged = CommandSigner(Ed25519PrivateKey.generate()).wrap(command("mallory"), role="lead")
    cmds.handle(forged)  # refused: never reaches the book
    assert [c["moderator"] for c in book.applied] == ["alice", "bob"]
    bodies = [b for kind, b in host.records if kind == "action"]
    assert bodies[0]["moderator"] == "alice" and bodies[0]["verified"] is True
    assert bodies[0]["approved_by"] == "lena" and bodies[0]["key_id"] == key_id(key.public_key())
    assert bodies[1]["moderator"] == "bob" and bodies[1]["verified"] is False


def terminate(moderator: str = "alice") -> dict[str, object]:
    return build_command("terminate", incident_id="i1", stream_id="s1", moderator=moderator, reason="known content")


@pytest.mark.parametrize(("role", "approved_by", "moderator", "applied"), [
    ("moderator", None, "alice", False),  # one person's word
    ("moderator", "alice", "alice", False),  # approved by herself
    ("moderator", " ALICE ", "alice", False),  # ... spelt another way
    ("moderator", "   ", "alice", False),  # a blank approver is none
    ("moderator", "lena", "alice", True),  # a second user approved it
    ("lead", None, "lena", True),  # a lead may ban alone (as the web console lets her)
    ("admin", None, "root", True),
    ("viewer", "lena", "vic", True),  # approved: the approver carries it
    (None, None, "alice", False),  # no role signed
])
def test_a_signed_permanent_ban_needs_a_second_person(key: Ed25519PrivateKey, tmp_path: Path, role: str | None,
                                                      approved_by: str | None, moderator: str, applied: bool) -> None:
    host, book = Host(), Book()
    keys = {key_id(key.public_key()): key.public_key()}
    cmds = Commands(host, book, tmp_path, ClassifierImages(), False,  # type: ignore[arg-type]
                    CommandTrustPolicy(keys, permanent_ban=True))
    cmds.handle(CommandSigner(key).wrap(terminate(moderator), role=role, approved_by=approved_by))  # type: ignore[arg-type]
    assert bool(book.applied) is applied
    assert bool([b for kind, b in host.records if kind == "action"]) is applied  # a refusal is no action


def test_the_two_person_rule_names_what_is_missing(key: Ed25519PrivateKey) -> None:
    keys = {key_id(key.public_key()): key.public_key()}
    policy = CommandTrustPolicy(keys, permanent_ban=True)
    with pytest.raises(CommandError, match=r"approved_by.*needs another user's approval"):
        policy.open(CommandSigner(key).wrap(terminate("alice"), role="moderator"))
    with pytest.raises(CommandError, match="own moderator 'alice'"):
        policy.open(CommandSigner(key).wrap(terminate("alice"), role="moderator", approved_by="alice"))
    # only terminate is a ban; other actions by one moderator pass
    policy.open(CommandSigner(key).wrap(command("alice"), role="moderator"))
    # a ban with ban_hours is not permanent: one moderator may terminate
    CommandTrustPolicy(keys).open(CommandSigner(key).wrap(terminate("alice"), role="moderator"))


def test_the_policy_knows_a_permanent_ban_from_the_terminate_config(tmp_path: Path) -> None:
    from monitor.config.outputs import TerminateConfig

    assert CommandTrustPolicy.from_config(WebConfig(), TerminateConfig()).permanent_ban  # the default: for good
    assert not CommandTrustPolicy.from_config(WebConfig(), TerminateConfig(ban_hours=24)).permanent_ban
    assert not CommandTrustPolicy.from_config(WebConfig(), TerminateConfig(ban=False)).permanent_ban
    assert not CommandTrustPolicy.from_config(WebConfig()).permanent_ban
