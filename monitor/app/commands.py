"""Console commands on incidents (see monitor/contracts/topics.py), and what they leave behind.

The incident book decides what a command does (acknowledge, escalate, dismiss, terminate; monitor/incidents/
book.py `apply_command`); here each applied command is recorded as evidence and its incident published again.
Two kinds of proposal are written for people to act on, never applied on their own: a dismissed hash match
proposes its bank entry for a negative bank (negative-proposals.jsonl), and a dismissed classification is
written as feedback for the model's vendor (classifier-feedback.jsonl, with the best-scoring sample's image
only under evidence.store_images). A terminate runs through the engine and its result is recorded on the
incident.

Whose command: a signed envelope (monitor/incidents/commands.py `open_signed`) from a console whose public key
is in web.trusted_command_keys records its moderator as verified, with the key id, role and any approver; a
plain command (the Textual console) records its moderator as declared, or is refused under
web.require_signed_commands (`CommandTrustPolicy`).

The two-person rule for permanent bans (terminate.ban without terminate.ban_hours) holds here too, not only in
the web console that asks for the approval: a signed terminate is applied only when a lead or admin signed it or
a second user, not its moderator, approved it (`approved_by`). A console that skips its own check (a bug, an old
version) cannot ban for good on one person's word; whoever holds the console's private key can sign any role and
approver, so the key is what guards the rule. A plain (declared) command carries no identity to check:
web.require_signed_commands refuses those.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from monitor.app import records
from monitor.common.errors import ConfigError
from monitor.config.outputs import TerminateConfig
from monitor.config.web import WebConfig
from monitor.evidence.records import IMAGE_KEY
from monitor.evidence.signing import KeyFileError, key_id, load_public_key
from monitor.incidents import CommandError, Event, Incident, IncidentBook, Key
from monitor.incidents.commands import DECLARED, CommandTrust, is_signed, open_signed
from monitor.servers.api import DropResult
from monitor.web.users import at_least
from pipelines.base import Finding

log = logging.getLogger(__name__)

KEPT_IMAGES = 1000  # classification images kept for feedback, oldest dropped first
Command = dict[str, object]  # a console command as parsed from JSON, checked by the incident book


class CommandHost(Protocol):
    """What a command needs of the engine (monitor/app/engine.py)."""

    def record(self, kind: str, stream_id: str, body: Mapping[str, object], incident_id: str | None = None) -> None:
        ...

    def send_incident(self, inc: Incident, reason: str) -> None: ...

    def emit(self, events: list[Event], observed_at: float) -> None: ...

    async def terminate(self, stream_id: str, *, by: str, reason: str,
                        incident_id: str | None = None) -> DropResult: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


class ClassifierImages:
    """With evidence.store_images: the best-scoring sample of each (stream, analysis, label), as base64 PNG."""

    def __init__(self) -> None:
        self._kept: dict[Key, tuple[float, str]] = {}

    def offer(self, f: Finding) -> dict[str, str]:
        """The finding's image for its evidence record ({IMAGE_KEY: base64}), kept if it scores best so far."""
        stored = records.sample_image(f)
        if not stored:
            return {}
        image = stored[IMAGE_KEY]
        key = (f.stream_id, f.bank, f.entry_id)
        kept = self._kept.get(key)
        if kept is None or (f.score or 0.0) >= kept[0]:  # the best-scoring sample, for the feedback
            self._kept.pop(key, None)
            self._kept[key] = (f.score or 0.0, image)
            while len(self._kept) > KEPT_IMAGES:
                self._kept.pop(next(iter(self._kept)))
        return {IMAGE_KEY: image}

    def pop(self, key: Key) -> str | None:
        kept = self._kept.pop(key, None)
        return kept[1] if kept is not None else None


def parse_command(topic: str, payload: bytes) -> Command | None:
    """The command as a JSON object, or None (logged) for a payload that is not one."""
    try:
        cmd = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("ignored a command on %s: not JSON", topic)
        return None
    if not isinstance(cmd, dict):
        log.warning("ignored a command on %s: not a JSON object", topic)
        return None
    return cmd


def _append_line(path: Path, record: Mapping[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class CommandTrustPolicy:
    """Which consoles' signatures the monitor trusts (web.trusted_command_keys), and whether it needs one."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None, *, require: bool = False,
                 max_age_s: float = 300.0, permanent_ban: bool = False) -> None:
        self.keys = dict(keys or {})
        self.require = require
        self.max_age_s = max_age_s
        self.permanent_ban = permanent_ban  # a terminate bans for good: the two-person rule applies

    @classmethod
    def from_config(cls, cfg: WebConfig, terminate: TerminateConfig | None = None) -> CommandTrustPolicy:
        """The policy of the `web:` section, loaded the same way by `monitor run` and `--validate-config`.

        KeyFileError (one line naming the setting and the file) for a key that cannot be read, is not an Ed25519
        public key, or can be written by group or others (whoever can rewrite it decides whose commands are
        trusted); ConfigError when signed commands are required but no key is listed (every command refused)."""
        keys: dict[str, Ed25519PublicKey] = {}
        for i, path in enumerate(cfg.trusted_command_keys):
            where = f"web.trusted_command_keys[{i}]"
            try:
                key = load_public_key(path)
            except KeyFileError as exc:
                raise KeyFileError(f"{where}: {exc}") from None
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:  # gone between the read and the stat
                raise KeyFileError(f"{where}: {path}: cannot read: {exc.strerror or exc}") from None
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise KeyFileError(f"{where}: {path}: writable by group or others (mode {stat.S_IMODE(mode):04o}): "
                                   "whoever can rewrite it decides whose commands are trusted; chmod go-w it")
            keys[key_id(key)] = key
        if cfg.require_signed_commands and not keys:
            raise ConfigError("web.require_signed_commands is on but web.trusted_command_keys lists no key: "
                              "every console command would be refused")
        permanent = terminate is not None and terminate.ban and terminate.ban_hours is None
        return cls(keys, require=cfg.require_signed_commands, max_age_s=cfg.command_max_age_s,
                   permanent_ban=permanent)

    def open(self, cmd: Command) -> tuple[Command, CommandTrust]:
        """The command to apply and whose word it is; CommandError when it must be refused."""
        if is_signed(cmd):
            opened, trust = open_signed(cmd, self.keys, now=time.time(), max_age_s=self.max_age_s)
            if opened.get("action") == "terminate" and self.permanent_ban:
                self._two_persons(opened, trust)
            return opened, trust
        if self.require:
            raise CommandError("signature", "this monitor accepts signed commands only "
                                            "(web.require_signed_commands)")
        return cmd, DECLARED

    @staticmethod
    def _two_persons(cmd: Command, trust: CommandTrust) -> None:
        """CommandError unless a lead (or admin) signed this permanent ban, or someone else approved it."""
        if trust.role is not None and at_least(trust.role, "lead"):
            return
        approver = (trust.approved_by or "").strip()
        if not approver:
            raise CommandError("approved_by", f"a permanent ban by {trust.role or 'a user'} "
                                              f"{_quoted(cmd.get('moderator'))} needs another user's approval "
                                              "(the two-person rule); none was signed")
        if approver.casefold() == str(cmd.get("moderator") or "").strip().casefold():
            raise CommandError("approved_by", f"a permanent ban cannot be approved by its own moderator "
                                              f"{_quoted(approver)} (the two-person rule)")


def _quoted(value: object) -> str:
    return repr(str(value)[:100])


class Commands:
    """Applies console commands to the incident book and carries out what follows from them."""

    def __init__(self, host: CommandHost, incidents: IncidentBook, state_dir: Path, images: ClassifierImages,
                 store_images: bool, trust: CommandTrustPolicy | None = None) -> None:
        self.host = host
        self.incidents = incidents
        self.state_dir = state_dir
        self.images = images
        self.store_images = store_images
        self.trust = trust if trust is not None else CommandTrustPolicy()

    def handle(self, cmd: Command) -> None:
        try:
            cmd, trust = self.trust.open(cmd)
        except CommandError as exc:
            log.warning("refused a console command: %s", exc)
            return
        try:
            outcome = self.incidents.apply_command(cmd)
        except CommandError as exc:
            log.warning("refused a console command from %r: %s", str(cmd.get("moderator"))[:100], exc)
            return
        inc = outcome.incident
        if outcome.duplicate:
            return  # MQTT delivered it again; it was applied once
        action = str(cmd["action"])
        self.host.record("action", inc.stream_id, {**records.action(cmd, outcome), **trust.evidence()},
                         inc.incident_id)
        log.info("incident %s: %s by %r (%s, %r)", inc.incident_id, action, cmd["moderator"],
                 "verified" if trust.verified else "declared", outcome.message)
        if outcome.changed:
            self.host.send_incident(inc, f"{action} by {cmd['moderator']}")
        if action == "dismiss" and outcome.changed and inc.kind == "classification":
            self._write_feedback(inc, cmd)
        if outcome.proposed_negative_entry is not None:
            bank, entry_id = outcome.proposed_negative_entry
            _append_line(self.state_dir / "negative-proposals.jsonl", {
                "bank": bank, "entry_id": entry_id, "incident_id": inc.incident_id, "moderator": cmd["moderator"],
                "reason": cmd.get("reason") or "", "at": datetime.now(UTC).isoformat()})
            log.info("entry %s of bank %s proposed for a negative bank (false positive)", entry_id, bank)
        if action == "terminate" and outcome.changed:
            self.host.spawn(self._terminate(inc, cmd))

    async def _terminate(self, inc: Incident, cmd: Command) -> None:
        command_id = str(cmd["command_id"])
        result = await self.host.terminate(inc.stream_id, by=str(cmd["moderator"]),
                                           reason=str(cmd.get("reason") or ""), incident_id=inc.incident_id)
        text = ("dropped" if result.ok else "failed") + f": {result.detail}"
        try:
            self.host.emit(self.incidents.record_result(inc.incident_id, command_id, text), time.time())
        except CommandError as exc:  # the incident expired meanwhile: the evidence has the result
            log.warning("terminate result for incident %s not published: %s", inc.incident_id, exc)

    def _write_feedback(self, inc: Incident, cmd: Command) -> None:
        """A dismissed classification, for the operator's model vendor: what was scored and what the moderator
        decided. No image unless evidence.store_images (then the best-scoring sample's PNG, base64)."""
        image = self.images.pop(inc.key)
        feedback: dict[str, object] = {
            "incident_id": inc.incident_id, "analysis": inc.bank, "model_id": inc.model_id, "label": inc.entry_id,
            "score": inc.best_score, "score_threshold": inc.score_threshold, "sample_hash": inc.sample_hash,
            "decision": "false_positive", "moderator": cmd["moderator"], "reason": cmd.get("reason") or "",
            "samples": inc.samples, "at": datetime.now(UTC).isoformat()}
        if image is not None and self.store_images:
            feedback[IMAGE_KEY] = image
        try:
            _append_line(self.state_dir / "classifier-feedback.jsonl", feedback)
        except OSError as exc:
            log.error("classifier feedback for incident %s not written: %s", inc.incident_id, exc)
            return
        log.info("classifier feedback: %s %s scored %.2f dismissed by %r", inc.bank, inc.entry_id,
                 inc.best_score or 0.0, cmd["moderator"])
