"""Incidents: matches and classifications of one stream become one incident each, which moderators act on.

  policy.py    IncidentPolicy, ClassifierPolicy: when findings open, update and close incidents
  model.py     Incident, HistoryEntry, the events the book returns, CommandOutcome
  commands.py  console commands checked field by field (CommandError)
  book.py      IncidentBook: the incidents of one node, pure, with an injected clock
"""

from monitor.incidents.book import IncidentBook
from monitor.incidents.commands import MAX_ID, MAX_MODERATOR, MAX_REASON, CommandError
from monitor.incidents.model import (
    SCHEMA_VERSION,
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

__all__ = [
    "MAX_ID", "MAX_MODERATOR", "MAX_REASON", "SCHEMA_VERSION", "ClassifierPolicy", "CommandError", "CommandOutcome",
    "EntryKey", "Event", "HistoryEntry", "Incident", "IncidentBook", "IncidentPolicy", "IncidentUpdate", "Key",
    "NewIncident", "QuarantineLifted", "Quarantined", "Severity", "Status", "Suppressed",
]
