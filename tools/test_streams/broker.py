"""An in-process MQTT broker (amqtt) for the demo and for tests that need no system service.

amqtt speaks MQTT 3.1.1 only; clients fall back to it (see monitor.delivery.connection.negotiate_protocol). Its
default config listens on every interface with anonymous access, so it is always bound to 127.0.0.1 here.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType

from amqtt.broker import Broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedBroker:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._broker: Broker | None = None

    async def __aenter__(self) -> EmbeddedBroker:
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        await self._broker.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
