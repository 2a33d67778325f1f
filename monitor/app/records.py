"""The evidence the engine records: every record body is built here, and one background thread appends them.

Records are appended by one writer thread, in call order, so an fsync never stalls the event loop; a record
that cannot be written is logged, never raised (the streams are watched all the same). The same thread signs
the log's head (monitor/evidence/store.py `sign_head`) behind the records queued before it.

The body builders below are the one place that says what each kind of record holds: a match (hash or
classification, with its sample under evidence.store_images), an incident state, an alert, a moderator's action, a
termination, and the notes (a stream announced, an entry quarantined, a stream escalated as evasive, the earlier
matches an incident folded in when it opened).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from monitor.evidence.records import FOLDED_TEXT, IMAGE_KEY, EvidenceRecord
from monitor.evidence.signing import key_id
from monitor.evidence.store import EvidenceLog
from monitor.incidents import CommandOutcome, Key, Quarantined
from monitor.ops.sampling_report import Escalation
from monitor.servers.api import DropResult
from monitor.servers.hooks import Origin
from pipelines.base import Finding

log = logging.getLogger(__name__)

Body = dict[str, object]  # a record's body: JSON-ready


# Matches recorded before any incident, kept to be linked when one opens (`link_folded`): the last `fold_max` of
# each (stream, bank, entry) (the book folds at most confirm_n samples), at most UNLINKED_KEYS keys and UNLINKED_TOTAL
# matches in all, the least recently matched keys forgotten first (about 200 bytes a match).
UNLINKED_KEYS = 4096
UNLINKED_TOTAL = 65536


class EvidenceWriter:
    """Appends records and signs heads on one background thread, in call order."""

    def __init__(self, evidence: EvidenceLog | None, head_key: Ed25519PrivateKey | None,
                 head_interval_s: float, *, fold_max: int = 3) -> None:
        self.evidence = evidence
        self.head_key = head_key
        self.head_interval_s = head_interval_s
        self.fold_max = max(1, fold_max)  # the largest confirm_n: no incident folds more samples of its key
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="evidence")
        # Matches recorded without an incident, by key: (seq, hash, media time); touched on the writer thread only.
        self._unlinked: OrderedDict[Key, deque[tuple[int, str, float]]] = OrderedDict()
        self._unlinked_total = 0

    def record(self, kind: str, stream_id: str, body: Mapping[str, object], incident_id: str | None = None, *,
               unlinked: Key | None = None) -> None:
        """Append to the evidence log in the background, in call order; failures are logged, never raised.

        `unlinked`: a match of that key recorded without an incident (unconfirmed), kept so that the incident it
        may yet confirm links it (`link_folded`)."""
        if self.evidence is None:
            return
        evidence = self.evidence

        def write() -> None:
            try:
                rec = evidence.append(kind, stream_id=stream_id, body=body, incident_id=incident_id)
            except Exception as exc:  # disk full, I/O error: keep watching streams, shout
                log.error("evidence log: could not record a %s for stream %s: %s", kind, stream_id, exc)
                return
            media_time_s = body.get("media_time_s")
            if unlinked is not None and incident_id is None and isinstance(media_time_s, int | float):
                self._keep_unlinked(unlinked, rec.seq, rec.hash, float(media_time_s))

        self.executor.submit(write)

    def _keep_unlinked(self, key: Key, seq: int, record_hash: str, media_time_s: float) -> None:
        """On the writer thread: one more match of `key` without an incident, within the bounds above."""
        kept = self._unlinked.pop(key, None)
        if kept is not None and kept and media_time_s < kept[-1][2]:  # the media clock went back (publisher
            self._unlinked_total -= len(kept)  # restarted): the book starts a fresh window, so do we
            kept = None
        if kept is None:
            kept = deque(maxlen=self.fold_max)
        self._unlinked_total += int(len(kept) < self.fold_max)  # a full deque drops its oldest
        kept.append((seq, record_hash, media_time_s))
        self._unlinked[key] = kept  # the most recently matched last
        while len(self._unlinked) > UNLINKED_KEYS or self._unlinked_total > UNLINKED_TOTAL:
            _, dropped = self._unlinked.popitem(last=False)
            self._unlinked_total -= len(dropped)

    def unlinked_count(self) -> tuple[int, int]:
        """(keys, matches) kept to be linked; read it on the writer thread or after `close`."""
        return len(self._unlinked), self._unlinked_total

    def link_folded(self, key: Key, incident_id: str, first_media_time_s: float, last_media_time_s: float) -> None:
        """An incident opened on `key`, folding in the samples from first to last media time: a note under its id
        names the match records written before it (without its id) in that span, by seq and hash."""
        if self.evidence is None:
            return
        evidence = self.evidence

        def write() -> None:
            kept = self._unlinked.pop(key, None) or ()
            self._unlinked_total -= len(kept)
            folded = [(seq, h, t) for seq, h, t in kept if first_media_time_s <= t <= last_media_time_s]
            if not folded:
                return
            try:
                evidence.append("note", stream_id=key[0], incident_id=incident_id,
                                body=folded_matches(key, folded))
            except Exception as exc:
                log.error("evidence log: could not link %d earlier matches to incident %s: %s", len(folded),
                          incident_id, exc)

        self.executor.submit(write)

    def sign_head(self, on_signed: Callable[[EvidenceRecord], None]) -> None:
        """Sign the head behind the records waiting to be written; log it, then `on_signed` (on the writer
        thread) once written. Nothing when heads are not signed or nothing is new since the last head."""
        if self.evidence is None or self.head_key is None:
            return
        evidence, key = self.evidence, self.head_key

        def write() -> None:
            try:
                rec = evidence.sign_head(key, self.head_interval_s)
            except Exception as exc:
                log.error("evidence log: could not sign its head: %s", exc)
                return
            if rec is None:
                return  # nothing new since the last signed head
            head = rec.data()
            log.info("evidence head signed: %d records up to seq %d, hash %s, key %s (head record seq %d)",
                     head["count"], head["last_seq"], head["last_hash"], head["key_id"], rec.seq)
            on_signed(rec)

        self.executor.submit(write)

    async def sign_heads(self, stop: asyncio.Event, on_signed: Callable[[EvidenceRecord], None]) -> None:
        """Sign the head every evidence.head_interval_s until `stop` (or say once that heads are not signed)."""
        if self.evidence is not None and self.head_key is None:
            log.warning("evidence heads are not signed (evidence.signing_key_file is unset): whoever can write %s "
                        "can rewrite it undetectably; see `monitor evidence keygen`", self.evidence.path)
            return
        if self.head_key is not None:
            log.info("evidence heads are signed every %.0f s with key %s", self.head_interval_s,
                     key_id(self.head_key.public_key()))
        while not stop.is_set():
            self.sign_head(on_signed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.head_interval_s)

    def close(self) -> None:
        """Waits for every queued record to be written."""
        self.executor.shutdown(wait=True)


def _publisher_addr(origin: Origin | None) -> str | None:
    return origin.publisher_addr if origin else None


def sample_image(f: Finding) -> dict[str, str]:
    """The finding's sample for its evidence record: {IMAGE_KEY: base64 of its PNG}, or nothing without one (the
    analyses attach it only under evidence.store_images). Matches and classifications store it alike."""
    return {} if f.image_png is None else {IMAGE_KEY: base64.b64encode(f.image_png).decode("ascii")}


def folded_matches(key: Key, folded: list[tuple[int, str, float]]) -> Body:
    """The match records an incident folded in when it opened, recorded before it without its id (kind "note")."""
    return {"text": FOLDED_TEXT, "bank": key[1], "entry_id": key[2],
            "matches": [{"seq": seq, "record_hash": h, "media_time_s": t} for seq, h, t in folded]}


def hash_match(f: Finding, stream_url: str, origin: Origin | None, image: Mapping[str, str] | None = None) -> Body:
    """A sample that matched a bank entry (kind "match"); `image` holds the sample's PNG (base64, under IMAGE_KEY)
    with evidence.store_images, else nothing."""
    return {**(image or {}), "media_time_s": f.media_time_s, "received_at": f.received_at, "bank": f.bank,
            "entry_id": f.entry_id, "entry_label": f.entry_label, "signal_type": f.signal_type,
            "sample_hash": f.sample_hash, "distance": f.distance, "threshold": f.threshold,
            "quality": f.quality, "stream_url": stream_url, "publisher_addr": _publisher_addr(origin)}


def classification_match(f: Finding, stream_url: str, origin: Origin | None, image: Mapping[str, str]) -> Body:
    """A sample a classifier scored over a label's threshold (kind "match"); `image` holds the sample's PNG
    (base64, under IMAGE_KEY) with evidence.store_images, else nothing."""
    return {**image, "kind": f.kind, "media_time_s": f.media_time_s, "received_at": f.received_at, "bank": f.bank,
            "entry_id": f.entry_id, "entry_label": f.entry_label, "signal_type": f.signal_type,
            "sample_hash": f.sample_hash, "quality": f.quality, "label": f.label, "score": f.score,
            "score_threshold": f.score_threshold, "model_id": f.model_id, "severity": f.severity,
            "stream_url": stream_url, "publisher_addr": _publisher_addr(origin)}


def incident(message: Mapping[str, object], reason: str, origin: Origin | None) -> Body:
    """The incident message as published, with why it was published (kind "incident")."""
    return {**message, "reason": reason, "publisher_addr": _publisher_addr(origin)}


def alert(alert_id: str, topic: str, body: Mapping[str, object]) -> Body:
    """An alert as published (kind "alert")."""
    return {"msg_id": alert_id, "topic": topic, "alert": dict(body)}


def action(cmd: Mapping[str, object], outcome: CommandOutcome) -> Body:
    """A moderator's command on an incident and what it did (kind "action")."""
    return {"moderator": cmd["moderator"], "action": str(cmd["action"]), "reason": cmd.get("reason") or "",
            "command_id": cmd["command_id"], "changed": outcome.changed, "message": outcome.message,
            "acted_at": datetime.now(UTC).isoformat()}


def termination(stream_id: str, by: str, reason: str, result: DropResult, bans: list[str],
                ban_error: str | None) -> Body:
    """A terminate: the drop's result and what was banned, with keys masked (kind "termination")."""
    return {"stream_id": stream_id, "by": by, "reason": reason, "ok": result.ok, "detail": result.detail,
            "banned": bool(bans), "bans": bans, "ban_error": ban_error,
            "terminated_at": datetime.now(UTC).isoformat()}


def announced(new: bool, server: str, app: str, shown_name: str, name_length: int, origin: Origin) -> Body:
    """A stream announced by a streaming server (kind "note"); the raw name never reaches the log."""
    return {"text": "stream announced" if new else "stream announced again (new publisher)",
            "server": server, "app": app, "name": shown_name, "name_length": name_length,
            "publisher_addr": origin.publisher_addr, "client_id": origin.client_id,
            "announced_at": datetime.now(UTC).isoformat()}


def entry_quarantined(ev: Quarantined) -> Body:
    """A bank entry that matched too many streams at once (kind "note")."""
    return {"text": "entry quarantined", "bank": ev.bank, "entry_id": ev.entry_id, "streams": sorted(ev.streams)}


def escalated(e: Escalation) -> Body:
    """A stream now sampled densely as evasive (kind "note")."""
    return {"text": "stream escalated as evasive", "signals": e.signals, "score": e.score,
            "blind_interval_s": e.blind_interval_s}
