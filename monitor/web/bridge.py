"""The web console's broker side: retained incidents in (into the review queue), signed commands out.

One `MqttConnection` (monitor/delivery/connection.py) under the console's own client id subscribes to every
node's incidents; `on_change` is told of each incident as it arrives (the server pushes it to the browsers).
Commands wait in an asyncio queue while the broker is away and are published, QoS 1, once connected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable

import aiomqtt
from pydantic import ValidationError

from monitor.common.backoff import Backoff
from monitor.config.models import BrokerConfig
from monitor.contracts import topics
from monitor.contracts.messages import Incident
from monitor.delivery.connection import CONSOLE_RECONNECT_MAX_S, RECONNECT_INITIAL_S, MqttConnection
from monitor.web.queue import ReviewQueue

__all__ = ["Bridge"]

log = logging.getLogger(__name__)


class Bridge:
    def __init__(self, cfg: BrokerConfig, client_id: str, queue: ReviewQueue,
                 on_change: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.queue = queue
        self.on_change = on_change
        self._out: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.conn = MqttConnection(cfg, f"{client_id}-{os.getpid()}",
                                   subscriptions=[topics.all_incidents(cfg.topic_prefix)],
                                   on_message=self._on_message, on_lost=self._on_lost,
                                   backoff=Backoff(RECONNECT_INITIAL_S, CONSOLE_RECONNECT_MAX_S))

    def _on_message(self, topic: str, payload: bytes) -> None:
        incident_id = topic.rsplit("/", 1)[-1]
        if not payload:
            self.queue.remove(incident_id)
            self.on_change(incident_id)
            return
        try:
            inc = Incident.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("ignored an incident on %s: %s", topic, exc.errors()[0].get("msg", "invalid"))
            return
        self.queue.update(inc)
        self.on_change(inc.incident_id)

    def _on_lost(self, exc: Exception, wait_s: float) -> None:
        log.warning("broker connection lost (%s); retrying in %.1f s", exc, wait_s)

    def send(self, node: str, command: dict[str, object]) -> None:
        """Queue a command (or signed envelope) for the node's command topic."""
        self._out.put_nowait((topics.commands(self.cfg.topic_prefix, node), json.dumps(command).encode()))

    async def _session(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self._out.get()
            try:
                await client.publish(topic, payload, qos=1)
            except aiomqtt.MqttError:
                self._out.put_nowait((topic, payload))  # sent again after the reconnect
                raise

    async def run(self, stop: asyncio.Event) -> None:
        async def session(client: aiomqtt.Client) -> None:
            sender = asyncio.ensure_future(self._session(client))
            try:
                await stop.wait()
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

        await self.conn.run(stop, session=session)
