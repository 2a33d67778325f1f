"""MQTT topic layout, shared by the monitor and every subscriber; each topic's message is a model in this package.

    {prefix}/{node}/status                   retained node status (messages.NodeStatus: online/offline); the last
                                             will sets it offline
    {prefix}/{node}/health                   retained, MQTT 5 message expiry (messages.Health: stream counts by
                                             state, outbox and delivery figures, sampling totals)
    {prefix}/{node}/alerts/{stream_id}       alerts, QoS 1, not retained (alerts.Alert, schema version 2: "kind"
                                             match|classification; a classification puts its analysis in "bank"
                                             and its label in "entry_id"); an alert carries "incident_id"
    {prefix}/{node}/incidents/{incident_id}  retained incident state, re-published on every change
                                             (messages.Incident, schema version 1); the monitor is the source of
                                             truth, consoles show what it publishes, so several stay consistent
    {prefix}/{node}/streams/{stream_id}      retained stream state (messages.StreamStatus, with its "sampling"
                                             block or null); re-published when the stream is escalated as evasive
    {prefix}/{node}/commands                 console -> monitor, QoS 1, not retained (messages.Command, schema
                                             version 1); the answer is the re-published incident

The JSON Schemas generated from the models are in schemas/ (`python -m monitor.contracts.schemas`).
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
