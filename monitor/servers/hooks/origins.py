"""Where announced streams came from, and the rules that bind each stream id to its one publisher.

`OriginTable` (the engine's) admits a publish within the stream caps and refuses a second publisher for a
watched stream; `StreamRegistry` is what the hooks and discovery tell the monitor; `StreamRefused` is how it
says no.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

# A registered stream that has not been live for this long since it registered may be taken over by another
# publisher of the same (server, app, name): its unpublish was missed (a live one never is: see OriginTable).
ORIGIN_REPLACE_AFTER_S = 15.0


class StreamRefused(Exception):
    """The registry will not watch (or release) this stream; `reason` is a short word for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a stream came from, as a streaming server told us (the engine needs it to drop the publisher).

    The raw app and name live here, in memory only."""

    server: str
    app: str
    name: str
    publisher_addr: str | None
    client_id: str | None = None
    registered_at: float = field(default_factory=time.monotonic, compare=False)
    keys: tuple[str, ...] = field(default=(), compare=False)  # the publish URL's `key` arguments (terminate bans them)

    def same_publisher(self, server: str, app: str, name: str, publisher_addr: str | None,
                       client_id: str | None) -> bool:
        """Same server, app and name, and, where both sides know them, the same client id and address."""
        if (server, app, name) != (self.server, self.app, self.name):
            return False
        if client_id and self.client_id and client_id != self.client_id:
            return False
        return not (publisher_addr and self.publisher_addr and publisher_addr != self.publisher_addr)


class OriginTable(dict[str, Origin]):
    """The origins of announced streams: bound to the stream they registered, within caps.

    A dict (stream id -> Origin) with the rules on top: `admit` refuses a different publisher for a stream that
    is still watched and a new stream beyond `max_streams` or `max_streams_per_addr`; `release` refuses an
    unpublish that names another publisher."""

    def __init__(self, max_streams: int | None = None, max_streams_per_addr: int | None = None) -> None:
        super().__init__()
        self.max_streams = max_streams
        self.max_streams_per_addr = max_streams_per_addr

    def admit(self, stream_id: str, origin: Origin, *, replaceable: bool) -> Literal["new", "same", "replaced"]:
        """`replaceable`: the stream registered under this id is no longer watched (or has been quiet long
        enough that its unpublish was surely missed)."""
        known = self.get(stream_id)
        if known is not None:
            if known.same_publisher(origin.server, origin.app, origin.name, origin.publisher_addr,
                                    origin.client_id):
                # MediaMTX reports one publish twice (auth gate with the address, runOnReady without).
                self[stream_id] = Origin(known.server, known.app, known.name,
                                         known.publisher_addr or origin.publisher_addr,
                                         known.client_id or origin.client_id, known.registered_at,
                                         tuple(dict.fromkeys((*known.keys, *origin.keys))))
                return "same"
            if not replaceable:
                raise StreamRefused("conflict", f"stream {stream_id} is watched for another publisher")
            self[stream_id] = origin
            return "replaced"
        if self.max_streams is not None and len(self) >= self.max_streams:
            raise StreamRefused("cap", f"{len(self)} streams watched (hooks.max_streams)")
        if self.max_streams_per_addr is not None and origin.publisher_addr:
            n = sum(1 for o in self.values() if o.publisher_addr == origin.publisher_addr)
            if n >= self.max_streams_per_addr:
                raise StreamRefused("addr_cap", f"{n} streams watched from {show_addr(origin.publisher_addr)} "
                                    "(hooks.max_streams_per_addr)")
        self[stream_id] = origin
        return "new"

    def release(self, stream_id: str, *, server: str | None = None, app: str | None = None,
                name: str | None = None, publisher_addr: str | None = None,
                client_id: str | None = None) -> Origin | None:
        """The origin to forget for an unpublish, or None if none is known; StreamRefused if it names
        another publisher (a decoy's publish_done must not end the real stream's monitoring)."""
        known = self.get(stream_id)
        if known is None:
            return None
        if not known.same_publisher(server if server is not None else known.server,
                                    app if app is not None else known.app,
                                    name if name is not None else known.name, publisher_addr, client_id):
            raise StreamRefused("mismatch", f"unpublish of {stream_id} names another publisher than its publish")
        return known


class StreamRegistry(Protocol):
    """What the hooks tell the monitor. Calls must not block (the supervisor queues the work) and should be
    idempotent: MediaMTX may report one publish twice (auth gate, then runOnReady). Either raises
    StreamRefused when it will not do what is asked (caps, another publisher), anything else when it failed."""

    def add_stream(
        self, stream_id: str, url: str, *, server: str, app: str, name: str, publisher_addr: str | None,
        client_id: str | None = None, keys: tuple[str, ...] = (),
    ) -> None: ...

    def remove_stream(
        self, stream_id: str, *, server: str | None = None, app: str | None = None, name: str | None = None,
        publisher_addr: str | None = None, client_id: str | None = None,
    ) -> None: ...


def show_addr(addr: str | None) -> str:
    """A publisher address as logs and refusals show it (bounded; it comes from the client)."""
    return repr(addr[:64]) if addr else "unknown address"
