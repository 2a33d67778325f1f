"""MQTT topic layout and message contract, shared by the monitor and every subscriber.

    {prefix}/{node}/status                   retained node status {"node","state":"online"|"offline","at"};
                                             the last will sets it offline
    {prefix}/{node}/health                   retained, MQTT 5 message expiry: {"node","at","streams":{state: n},
                                             "outbox_depth","outbox_oldest_age_s","outbox_writable",
                                             "outbox_error","held_in_memory","outbox_write_errors",
                                             "held_total","dropped","samples_per_s",...}
    {prefix}/{node}/alerts/{stream_id}       alerts, QoS 1, not retained (schemas/alert.schema.json, version 2:
                                             "kind" match|classification; a classification puts its analysis
                                             in "bank" and its label in "entry_id"); an alert carries
                                             "incident_id" once incidents exist
    {prefix}/{node}/incidents/{incident_id}  retained incident state, re-published on every change (below)
    {prefix}/{node}/streams/{stream_id}      retained stream state {"stream_id","state","detail","attempt",...,
                                             "sampling": {"blind_interval_s","escalated","evasion_score",
                                             "signals","samples_by_reason"} or null}; re-published when the
                                             stream is escalated as evasive
    {prefix}/{node}/commands                 console -> monitor, QoS 1, not retained (below)

Incident (the monitor is the source of truth; consoles show what it publishes, so several stay consistent):
    {"schema_version": 1, "type": "incident", "incident_id", "node", "stream_id", "stream_url", "bank",
     "entry_id", "entry_label", "severity": "low"|"medium"|"high", "status": "open"|"acknowledged"|"escalated"|
     "dismissed"|"terminated"|"closed", "first_seen", "last_seen" (UTC ISO 8601), "first_media_time_s",
     "last_media_time_s", "samples", "best_distance", "threshold", "alert_ids": [...],
     "history": [{"action", "moderator", "at", "reason", "result"}], "updated_at"}

Command:
    {"schema_version": 1, "type": "command", "command_id" (uuid), "action": "acknowledge"|"escalate"|"dismiss"|
     "terminate", "incident_id", "stream_id", "moderator", "reason", "at"}
"""

from __future__ import annotations


def node_status(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/status"


def node_health(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/health"


def alerts(prefix: str, node: str, stream_id: str) -> str:
    return f"{prefix}/{node}/alerts/{stream_id}"


def incident(prefix: str, node: str, incident_id: str) -> str:
    return f"{prefix}/{node}/incidents/{incident_id}"


def stream_state(prefix: str, node: str, stream_id: str) -> str:
    return f"{prefix}/{node}/streams/{stream_id}"


def commands(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/commands"


def all_alerts(prefix: str) -> str:
    return f"{prefix}/+/alerts/+"


def all_incidents(prefix: str) -> str:
    return f"{prefix}/+/incidents/+"


def all_stream_states(prefix: str) -> str:
    return f"{prefix}/+/streams/+"


def all_node_status(prefix: str) -> str:
    return f"{prefix}/+/status"


def all_node_health(prefix: str) -> str:
    return f"{prefix}/+/health"
