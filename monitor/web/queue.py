"""The review queue: the incidents the monitor publishes (retained MQTT), who holds which, and the approvals a
permanent ban waits for.

The monitor is the source of truth for an incident's status; this console adds, in memory, the claims that give
each open incident to one moderator at a time (a claim lapses after `claim_ttl_s` without activity, or when the
incident is final) and the two-person rule: a moderator's terminate with a permanent ban is held as a pending
approval until a lead, or a moderator other than the requester, approves it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from monitor.contracts.messages import Incident
from monitor.web.users import at_least

__all__ = ["Approval", "Claim", "QueueError", "ReviewQueue"]

Clock = Callable[[], float]


class QueueError(Exception):
    """An action the queue refuses; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Claim:
    user: str
    since: float
    renewed: float


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    incident_id: str
    requested_by: str
    reason: str
    requested_at: float


class ReviewQueue:
    def __init__(self, *, claim_ttl_s: float = 900.0, clock: Clock = time.time) -> None:
        self.claim_ttl_s = claim_ttl_s
        self._clock = clock
        self.incidents: dict[str, Incident] = {}
        self.seen_at: dict[str, float] = {}  # when this console first received each incident (wall clock)
        self._claims: dict[str, Claim] = {}
        self.approvals: dict[str, Approval] = {}

    # ------------------------------------------------------------------ incidents
    def update(self, inc: Incident) -> None:
        self.incidents[inc.incident_id] = inc
        self.seen_at.setdefault(inc.incident_id, self._clock())
        if inc.final:
            self._claims.pop(inc.incident_id, None)
            for a in [a for a in self.approvals.values() if a.incident_id == inc.incident_id]:
                del self.approvals[a.approval_id]

    def remove(self, incident_id: str) -> None:
        self.incidents.pop(incident_id, None)
        self._claims.pop(incident_id, None)

    def open_incidents(self, *, bank: str | None = None, severity: str | None = None, stream: str | None = None,
                       node: str | None = None) -> list[Incident]:
        """Incidents not final, oldest first, filtered."""
        out = [i for i in self.incidents.values() if not i.final
               and (bank is None or i.bank == bank) and (severity is None or i.severity == severity)
               and (stream is None or i.stream_id == stream) and (node is None or i.node == node)]
        return sorted(out, key=lambda i: (i.first_seen, i.incident_id))

    def get(self, incident_id: str) -> Incident:
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise QueueError(f"no incident {incident_id}", 404)
        return inc

    # ------------------------------------------------------------------ claims
    def claim_of(self, incident_id: str) -> Claim | None:
        c = self._claims.get(incident_id)
        if c is not None and self._clock() - c.renewed > self.claim_ttl_s:
            del self._claims[incident_id]
            return None
        return c

    def claim(self, incident_id: str, user: str) -> Claim:
        inc = self.get(incident_id)
        if inc.final:
            raise QueueError(f"incident {incident_id} is {inc.status}")
        held = self.claim_of(incident_id)
        if held is not None and held.user != user:
            raise QueueError(f"incident {incident_id} is claimed by {held.user}")
        now = self._clock()
        c = Claim(user, held.since if held is not None else now, now)
        self._claims[incident_id] = c
        return c

    def release(self, incident_id: str, user: str, role: str) -> None:
        held = self.claim_of(incident_id)
        if held is None:
            return
        if held.user != user and not at_least(role, "lead"):
            raise QueueError(f"incident {incident_id} is claimed by {held.user}", 403)
        del self._claims[incident_id]

    def require_holder(self, incident_id: str, user: str) -> None:
        """The user must hold the incident's claim to act on it (renewed by acting)."""
        held = self.claim_of(incident_id)
        if held is None or held.user != user:
            who = f"claimed by {held.user}" if held is not None else "not claimed by you"
            raise QueueError(f"incident {incident_id} is {who}: claim it first")
        self._claims[incident_id] = Claim(user, held.since, self._clock())

    def claims(self) -> dict[str, str]:
        return {i: c.user for i in list(self._claims) if (c := self.claim_of(i)) is not None}

    # ------------------------------------------------------------------ two-person rule
    def request_approval(self, incident_id: str, user: str, reason: str) -> Approval:
        for a in self.approvals.values():
            if a.incident_id == incident_id:
                raise QueueError(f"a permanent ban of incident {incident_id} already waits for approval "
                                 f"(asked by {a.requested_by})")
        a = Approval(str(uuid.uuid4()), incident_id, user, reason, self._clock())
        self.approvals[a.approval_id] = a
        return a

    def approve(self, approval_id: str, user: str, role: str) -> Approval:
        """The approval, taken off the list; a lead, or a moderator who did not ask, may approve."""
        a = self.approvals.get(approval_id)
        if a is None:
            raise QueueError(f"no pending approval {approval_id}", 404)
        if not at_least(role, "moderator"):
            raise QueueError("a viewer cannot approve", 403)
        if a.requested_by == user:
            raise QueueError("the second person must be someone else: you asked for this ban", 403)
        del self.approvals[approval_id]
        return a

    def reject(self, approval_id: str, user: str, role: str) -> Approval:
        a = self.approvals.get(approval_id)
        if a is None:
            raise QueueError(f"no pending approval {approval_id}", 404)
        if a.requested_by != user and not at_least(role, "lead"):
            raise QueueError("only the requester or a lead can withdraw it", 403)
        del self.approvals[approval_id]
        return a
