"""The incident book's settings: `IncidentPolicy` (matches) and `ClassifierPolicy` (classifications, per analysis).

Both are frozen and check themselves; monitor/config/models.py builds them from the `incidents:` config and
monitor/incidents/book.py applies them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IncidentPolicy:
    strong_distance: int = 31  # at or below: alert on the first sample
    confirm_k: int = 2  # weaker matches need k of the last n samples ...
    confirm_n: int = 3
    confirm_window_s: float = 30.0  # ... within this much media time
    update_interval_s: float = 30.0  # at most one routine update per incident this often
    close_after_s: float = 120.0  # wall time without a match before an incident closes
    quarantine_streams: int = 5  # an entry opening incidents on this many streams ...
    quarantine_window_s: float = 300.0  # ... within this window is a suspected noisy list entry
    quarantine_s: float = 3600.0
    remember_incidents: int = 1000  # final incidents kept for late commands
    remember_commands: int = 10_000  # command ids kept for MQTT redelivery

    def __post_init__(self) -> None:
        if not 1 <= self.confirm_k <= self.confirm_n:
            raise ValueError("need 1 <= confirm_k <= confirm_n")
        if self.quarantine_streams < 1 or self.remember_incidents < 1 or self.remember_commands < 1:
            raise ValueError("quarantine_streams, remember_incidents and remember_commands must be >= 1")
        for name in ("confirm_window_s", "update_interval_s", "close_after_s", "quarantine_window_s",
                     "quarantine_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class ClassifierPolicy:
    confirm_k: int = 3  # k of the last n classified samples over the threshold ...
    confirm_n: int = 5
    window_s: float = 20.0  # ... within this much media time

    def __post_init__(self) -> None:
        if not 1 <= self.confirm_k <= self.confirm_n:
            raise ValueError("need 1 <= confirm_k <= confirm_n")
