"""From findings to incidents: one incident per (stream, bank, entry) instead of an alert per match.

Pure and synchronous: the engine calls it on its asyncio loop and publishes what it returns; time comes only
from the injected clock, so tests drive it with a fake one. Messages follow monitor/contracts/messages.py.

Choices worth knowing:
  - Confirmation of weak matches counts the last `confirm_n` samples of the stream within `confirm_window_s`
    of *media* time (like `CooldownGate`: a fast-read file and a live stream behave alike); a stream whose
    media clock jumps back (publisher restarted) starts a fresh window. Closing uses *wall* time.
  - Samples that matched before an incident opened (the unconfirmed ones) are folded into it: `samples`,
    `first_seen` and `best_distance` describe everything the moderator should know about.
  - `dismiss` and `terminate` both leave a shadow on their (stream, bank, entry) for `close_after_s` from the
    command: matches there are suppressed ("dismissed" / "terminated") instead of re-alerting at once, yet a
    mistaken dismissal or a kick that did not work is alerted again once the shadow ends.
  - An entry is quarantined right after it opens its `quarantine_streams`-th incident in the window (that
    incident is still alerted); incidents already open keep absorbing matches.
  - Classifications (findings of kind "classification", `on_classified`) form incidents keyed by (stream,
    analysis, label): k of the last n *classified* samples of the stream over the label's threshold within a
    window of media time (per analysis: ClassifierPolicy), severity from the label; the commands, shadows and
    closing are those of matches; entries of classifiers are not quarantined (a label is not a list entry).
  - System closures appear in `history` with action "close" and moderator None, so consoles can show why.
  - Closed, dismissed and terminated incidents leave the live table at once and stay only in a bounded LRU
    (for late commands, `get` and `record_result`); `terminate` is still accepted on a *closed* incident a
    moderator had acknowledged or escalated (the stream may still be live), nothing else on a final one.
"""


from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

from monitor.incidents.commands import CommandError, ParsedCommand, parse_command
from monitor.incidents.model import (
    ACTION_STATUS,
    SEVERITIES,
    CommandOutcome,
    EntryKey,
    Event,
    HistoryEntry,
    Incident,
    IncidentUpdate,
    Key,
    NewIncident,
    Quarantined,
    QuarantineLifted,
    Severity,
    Status,
    Suppressed,
)
from monitor.incidents.policy import ClassifierPolicy, IncidentPolicy
from pipelines.base import Finding

# -- internal state --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Live:
    incident: Incident
    published: Incident
    published_at: float


@dataclass(frozen=True, slots=True)
class _Seen:
    media_time_s: float
    wall_time: float
    matches: Mapping[EntryKey, int]  # best distance per entry in this sample



@dataclass(slots=True)
class _Shadow:
    until: float
    why: str



class IncidentBook:
    """All incidents of one monitor node."""

    def __init__(self, policy: IncidentPolicy, bank_severity: Mapping[str, str],
                 clock: Callable[[], float] = time.time,
                 classifiers: Mapping[str, ClassifierPolicy] | None = None) -> None:
        bad = {b: s for b, s in bank_severity.items() if s not in SEVERITIES}
        if bad:
            raise ValueError(f"unknown severities {bad}; expected one of {sorted(SEVERITIES)}")
        self.policy = policy
        self.bank_severity: dict[str, Severity] = {b: cast(Severity, s) for b, s in bank_severity.items()}
        self.clock = clock
        self._live: dict[Key, _Live] = {}
        self._live_ids: dict[str, Key] = {}
        self._recent: OrderedDict[str, Incident] = OrderedDict()  # final incidents, LRU
        self._commands: OrderedDict[str, tuple[tuple[str, str], CommandOutcome]] = OrderedDict()
        self._windows: dict[str, deque[_Seen]] = {}
        self._shadows: dict[Key, _Shadow] = {}
        self._openings: dict[EntryKey, deque[tuple[float, str]]] = {}
        self._quarantine: dict[EntryKey, float] = {}
        self.classifiers: dict[str, ClassifierPolicy] = dict(classifiers or {})
        self._class_windows: dict[tuple[str, str], deque[_Seen]] = {}  # (stream, analysis) -> classified samples

    # -- queries -------------------------------------------------------------------------------------------
    def open_incidents(self) -> list[Incident]:
        return [live.incident for live in self._live.values()]

    def incident_id_for(self, key: Key) -> str | None:
        """The open incident on (stream, bank or analysis, entry or label), if any: its evidence links to it."""
        live = self._live.get(key)
        return live.incident.incident_id if live is not None else None

    def get(self, incident_id: str) -> Incident | None:
        """A live incident, or a final one still remembered."""
        key = self._live_ids.get(incident_id)
        if key is not None:
            return self._live[key].incident
        return self._recent.get(incident_id)

    def quarantined(self) -> dict[EntryKey, float]:
        return dict(self._quarantine)

    def severity(self, bank: str) -> Severity:
        return self.bank_severity.get(bank, "high")

    # -- samples ---------------------------------------------------------------------------------------------
    def on_sample(self, stream_id: str, media_time_s: float, findings: Sequence[Finding]) -> list[Event]:
        """Every sample of a stream, matched or not: unmatched samples count toward confirm_n."""
        now = self.clock()
        events: list[Event] = self._expire_quarantines(now)
        best: dict[EntryKey, Finding] = {}
        for f in findings:
            if f.stream_id != stream_id:
                raise ValueError(f"finding for stream {f.stream_id!r} passed as a sample of {stream_id!r}")
            prev = best.get((f.bank, f.entry_id))
            if prev is None or f.distance < prev.distance:
                best[(f.bank, f.entry_id)] = f
        window = self._windows.get(stream_id)
        if window is None or (window and media_time_s < window[-1].media_time_s):
            window = self._windows[stream_id] = deque(maxlen=self.policy.confirm_n)
        seen = _Seen(media_time_s, now, {k: f.distance for k, f in best.items()})
        window.append(seen)
        for f in best.values():
            events.extend(self._on_match(f, media_time_s, seen, window, now))
        return events

    def on_classified(self, stream_id: str, analysis: str, media_time_s: float,
                      findings: Sequence[Finding]) -> list[Event]:
        """Every sample a classifier scored, with its labels over threshold (none: a miss, counted for k of n)."""
        now = self.clock()
        p = self.classifiers.get(analysis) or ClassifierPolicy()
        best: dict[str, Finding] = {}
        for f in findings:
            if f.stream_id != stream_id or f.bank != analysis or f.kind != "classification":
                raise ValueError(f"finding {f.kind} {f.bank}/{f.entry_id} on {f.stream_id!r} passed as a "
                                 f"classification of {analysis!r} on {stream_id!r}")
            prev = best.get(f.entry_id)
            if prev is None or (f.score or 0.0) > (prev.score or 0.0):
                best[f.entry_id] = f
        wkey = (stream_id, analysis)
        window = self._class_windows.get(wkey)
        if window is None or window.maxlen != p.confirm_n or (window and media_time_s < window[-1].media_time_s):
            window = self._class_windows[wkey] = deque(maxlen=p.confirm_n)
        seen = _Seen(media_time_s, now, {(analysis, label): 0 for label in best})
        window.append(seen)
        events: list[Event] = []
        for label, f in best.items():
            key = (stream_id, analysis, label)
            live = self._live.get(key)
            if live is not None:
                events.extend(self._absorb(live, f, media_time_s, now))
                continue
            shadow = self._shadows.get(key)
            if shadow is not None and now < shadow.until:
                events.append(Suppressed(f, shadow.why))
                continue
            since = media_time_s - p.window_s
            hits = [s for s in window if (analysis, label) in s.matches and s.media_time_s >= since]
            if len(hits) < p.confirm_k:
                events.append(Suppressed(f, "unconfirmed"))
                continue
            events.extend(self._open(f, hits, now))
        return events

    def _on_match(self, f: Finding, media_time_s: float, seen: _Seen, window: deque[_Seen],
                  now: float) -> list[Event]:
        key = (f.stream_id, f.bank, f.entry_id)
        live = self._live.get(key)
        if live is not None:
            return self._absorb(live, f, media_time_s, now)
        shadow = self._shadows.get(key)
        if shadow is not None and now < shadow.until:
            return [Suppressed(f, shadow.why)]
        until = self._quarantine.get((f.bank, f.entry_id))
        if until is not None and now < until:
            return [Suppressed(f, "quarantined")]
        since = media_time_s - self.policy.confirm_window_s
        hits = [s for s in window if s is not seen and (f.bank, f.entry_id) in s.matches and s.media_time_s >= since]
        hits.append(seen)
        # A frame of a known video is never enough alone (intros, logos and black frames are shared between
        # videos): several samples matching the same video within the window confirm it, as vPDQ does.
        strong = f.distance <= self.policy.strong_distance and f.entry_frame_s is None
        if not strong and len(hits) < self.policy.confirm_k:
            return [Suppressed(f, "unconfirmed")]
        return self._open(f, hits, now)

    def _open(self, f: Finding, hits: list[_Seen], now: float) -> list[Event]:
        alert_id = str(uuid.uuid4())
        classified = f.kind == "classification"
        severity = (cast(Severity, f.severity) if classified and f.severity in SEVERITIES
                    else self.severity(f.bank))
        inc = Incident(
            incident_id=str(uuid.uuid4()), stream_id=f.stream_id, bank=f.bank, entry_id=f.entry_id,
            entry_label=f.entry_label, severity=severity, status="open",
            first_seen=hits[0].wall_time, last_seen=now,
            first_media_time_s=hits[0].media_time_s, last_media_time_s=hits[-1].media_time_s,
            samples=len(hits), best_distance=min(s.matches[(f.bank, f.entry_id)] for s in hits),
            threshold=f.threshold, alert_ids=(alert_id,), history=(), updated_at=now,
            kind=f.kind, best_score=f.score, score_threshold=f.score_threshold, model_id=f.model_id,
            sample_hash=f.sample_hash if classified else None,
        )
        self._live[inc.key] = _Live(inc, inc, now)
        self._live_ids[inc.incident_id] = inc.key
        self._shadows.pop(inc.key, None)
        events: list[Event] = [NewIncident(inc, f, alert_id)]
        if classified:
            return events
        q = self._note_opening(f.bank, f.entry_id, f.stream_id, now)
        if q is not None:
            events.append(q)
        return events

    def _absorb(self, live: _Live, f: Finding, media_time_s: float, now: float) -> list[Event]:
        inc = live.incident
        if inc.kind == "classification":
            better = f.score is not None and (inc.best_score is None or f.score > inc.best_score)
            live.incident = inc = replace(
                inc, last_seen=now, last_media_time_s=media_time_s, samples=inc.samples + 1, updated_at=now,
                best_score=f.score if better else inc.best_score,
                sample_hash=f.sample_hash if better else inc.sample_hash)
            published = live.published.best_score
            if inc.best_score is not None and published is not None and inc.best_score >= published + 0.05:
                return self._publish(live, now, "better match")
            if now - live.published_at >= self.policy.update_interval_s:
                return self._publish(live, now, "activity")
            return []
        live.incident = inc = replace(
            inc, last_seen=now, last_media_time_s=media_time_s, samples=inc.samples + 1,
            best_distance=min(inc.best_distance, f.distance), updated_at=now,
        )
        if inc.best_distance < live.published.best_distance:
            return self._publish(live, now, "better match")
        if now - live.published_at >= self.policy.update_interval_s:
            return self._publish(live, now, "activity")
        return []

    def _publish(self, live: _Live, now: float, reason: str) -> list[Event]:
        live.published, live.published_at = live.incident, now
        return [IncidentUpdate(live.incident, reason)]

    def _note_opening(self, bank: str, entry_id: str, stream_id: str, now: float) -> Quarantined | None:
        opened = self._openings.setdefault((bank, entry_id), deque())
        opened.append((now, stream_id))
        while opened and opened[0][0] < now - self.policy.quarantine_window_s:
            opened.popleft()
        streams = {s for _, s in opened}
        if len(streams) < self.policy.quarantine_streams:
            return None
        del self._openings[(bank, entry_id)]
        until = now + self.policy.quarantine_s
        self._quarantine[(bank, entry_id)] = until
        return Quarantined(bank, entry_id, tuple(sorted(streams)), until)

    def _expire_quarantines(self, now: float) -> list[Event]:
        ended = [k for k, until in self._quarantine.items() if now >= until]
        for k in ended:
            del self._quarantine[k]
        return [QuarantineLifted(bank, entry_id) for bank, entry_id in ended]

    # -- time and stream lifecycle ------------------------------------------------------------------------------
    def tick(self) -> list[Event]:
        """Close quiet incidents, publish held-back updates, expire quarantines; call every few seconds."""
        now = self.clock()
        p = self.policy
        events = self._expire_quarantines(now)
        for live in list(self._live.values()):
            if now - live.incident.last_seen >= p.close_after_s:
                events.append(self._close(live, now, "quiet", f"no match for {p.close_after_s:g} s"))
            elif live.incident is not live.published and now - live.published_at >= p.update_interval_s:
                events.extend(self._publish(live, now, "activity"))
        self._shadows = {k: s for k, s in self._shadows.items() if now < s.until}
        for ek in list(self._openings):
            opened = self._openings[ek]
            while opened and opened[0][0] < now - p.quarantine_window_s:
                opened.popleft()
            if not opened:
                del self._openings[ek]
        # A stream that stopped sampling without stream_ended: its window can no longer confirm anything useful.
        idle = max(p.close_after_s, p.confirm_window_s)
        self._windows = {s: w for s, w in self._windows.items() if w and now - w[-1].wall_time < idle}
        self._class_windows = {k: w for k, w in self._class_windows.items() if w and now - w[-1].wall_time < idle}
        return events

    def stream_ended(self, stream_id: str) -> list[Event]:
        """Close the stream's incidents now rather than leave them open until the quiet period ends."""
        now = self.clock()
        self._windows.pop(stream_id, None)
        for k in [k for k in self._class_windows if k[0] == stream_id]:
            del self._class_windows[k]
        ending = [live for key, live in self._live.items() if key[0] == stream_id]
        return [self._close(live, now, "stream ended", "stream ended") for live in ending]

    def _close(self, live: _Live, now: float, reason: str, note: str) -> IncidentUpdate:
        inc = live.incident
        closed = replace(inc, status="closed", updated_at=now,
                         history=(*inc.history, HistoryEntry("close", None, now, note)))
        self._retire(closed)
        return IncidentUpdate(closed, reason)

    def _retire(self, inc: Incident) -> None:
        """Drop a final incident from the live table, remembering it for late commands."""
        if self._live_ids.pop(inc.incident_id, None) is not None:
            del self._live[inc.key]
        self._remember(inc)

    def _remember(self, inc: Incident) -> None:
        self._recent[inc.incident_id] = inc
        self._recent.move_to_end(inc.incident_id)
        while len(self._recent) > self.policy.remember_incidents:
            self._recent.popitem(last=False)

    # -- console commands ---------------------------------------------------------------------------------------
    def apply_command(self, cmd: Mapping[str, object]) -> CommandOutcome:
        """Validate and apply a console command; raises CommandError naming the field it rejects."""
        c = parse_command(cmd)
        prior = self._commands.get(c.command_id)
        if prior is not None:
            signature, outcome = prior
            if signature != (c.action, c.incident_id):
                raise CommandError("command_id", f"{c.command_id!r} was already used for another command")
            # The current state, not the stored one: an engine that published it would not go back in time.
            return replace(outcome, incident=self.get(c.incident_id) or outcome.incident, changed=False,
                           duplicate=True)
        inc = self.get(c.incident_id)
        if inc is None:
            raise CommandError("incident_id", f"unknown or expired incident {c.incident_id!r}")
        if c.stream_id is not None and c.stream_id != inc.stream_id:
            raise CommandError("stream_id", f"incident {c.incident_id!r} is on stream {inc.stream_id!r}, "
                                            f"not {c.stream_id!r}")
        target = ACTION_STATUS[c.action]
        proposed = (inc.bank, inc.entry_id) if c.action == "dismiss" and inc.kind == "match" else None
        if inc.status == target:
            outcome = CommandOutcome(inc, False, False, proposed, f"incident already {target}")
        elif inc.is_open or (c.action == "terminate" and inc.status == "closed" and any(
                h.action in ("acknowledge", "escalate") for h in inc.history)):
            outcome = CommandOutcome(self._transition(inc, c, target), True, False, proposed,
                                     f"incident {target} by {c.moderator}")
        else:
            raise CommandError("action", f"cannot {c.action} an incident that is {inc.status}")
        self._commands[c.command_id] = ((c.action, c.incident_id), outcome)
        while len(self._commands) > self.policy.remember_commands:
            self._commands.popitem(last=False)
        return outcome

    def _transition(self, inc: Incident, c: ParsedCommand, target: Status) -> Incident:
        now = self.clock()
        entry = HistoryEntry(c.action, c.moderator, now, c.reason,
                             "requested" if c.action == "terminate" else None, c.command_id)
        new = replace(inc, status=target, updated_at=now, history=(*inc.history, entry))
        if new.is_open:
            live = self._live[new.key]
            live.incident = live.published = new  # the engine publishes every changed outcome
            live.published_at = now
        else:
            self._retire(new)
            self._shadows[new.key] = _Shadow(now + self.policy.close_after_s, target)
        return new

    def record_result(self, incident_id: str, command_id: str, result: str) -> list[Event]:
        """What the server API answered to a terminate; returns the update to publish."""
        inc = self.get(incident_id)
        if inc is None:
            raise CommandError("incident_id", f"unknown or expired incident {incident_id!r}")
        idx = next((i for i, h in enumerate(inc.history) if h.command_id == command_id), None)
        if idx is None:
            raise CommandError("command_id", f"no command {command_id!r} on incident {incident_id!r}")
        now = self.clock()
        history = list(inc.history)
        history[idx] = replace(history[idx], result=result)
        new = replace(inc, history=tuple(history), updated_at=now)
        key = self._live_ids.get(incident_id)
        if key is not None:
            live = self._live[key]
            live.incident = live.published = new
            live.published_at = now
        else:
            self._remember(new)
        return [IncidentUpdate(new, "terminate result")]

