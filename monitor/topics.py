"""MQTT topic layout, shared by the publisher and every subscriber.

    {prefix}/{node}/status                 retained node status; the last will sets it offline
    {prefix}/{node}/alerts/{stream_id}     alerts, QoS 1, not retained
    {prefix}/{node}/streams/{stream_id}    retained stream state
"""

from __future__ import annotations


def node_status(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/status"


def alerts(prefix: str, node: str, stream_id: str) -> str:
    return f"{prefix}/{node}/alerts/{stream_id}"


def stream_state(prefix: str, node: str, stream_id: str) -> str:
    return f"{prefix}/{node}/streams/{stream_id}"


def all_alerts(prefix: str) -> str:
    return f"{prefix}/+/alerts/+"


def all_stream_states(prefix: str) -> str:
    return f"{prefix}/+/streams/+"


def all_node_status(prefix: str) -> str:
    return f"{prefix}/+/status"
