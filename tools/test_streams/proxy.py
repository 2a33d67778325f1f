"""A TCP proxy on 127.0.0.1 that a test steers to break a stream on purpose: stall, slow, cut, corrupt, refuse.

    proxy = FaultProxy(upstream_port=nginx.rtmp_port).start()
    url = f"rtmp://127.0.0.1:{proxy.port}/live/name"   # the monitor pulls through the proxy
    proxy.stall()      # keep every connection open, forward nothing (both directions)
    proxy.resume()     # back to pass-through; what was held back flows on
    proxy.slow(20_000) # at most 20 kB/s towards the client (each connection)
    proxy.cut()        # close every open connection (FIN, or RST with reset=True); new ones are served
    proxy.corrupt(every_n_bytes=50_000)   # or probability=1e-5: flip (or insert) random bytes towards the client
    proxy.refuse()     # accept new connections and close them at once; open ones carry on
    proxy.close()

The proxy runs its own asyncio loop in a daemon thread; every control call returns once the loop has applied it.
Faults that change data (slow, corrupt) act on the upstream -> client direction only: that is where the media
flows, and a client's requests (RTMP handshake and play, HTTP GET) stay intact. Only loopback is ever a target.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024


class Mode(enum.Enum):
    PASS = "pass"
    STALL = "stall"
    SLOW = "slow"
    REFUSE = "refuse"


@dataclass
class ProxyStats:
    accepted: int = 0  # connections accepted and piped upstream
    refused: int = 0  # connections closed at once (refuse mode, or the upstream refused)
    cut: int = 0  # connections closed by cut()
    bytes_down: int = 0  # upstream -> client, forwarded
    bytes_up: int = 0  # client -> upstream, forwarded
    corrupted: int = 0  # corruption events (flipped or inserted bytes)
    open_now: int = 0


@dataclass
class _Corruption:
    probability: float | None
    every_n_bytes: int | None
    insert: bool
    spare_first: int
    rng: random.Random

    def gap(self) -> int:
        """Bytes to pass intact before the next corrupted one."""
        if self.every_n_bytes is not None:
            return self.every_n_bytes - 1
        assert self.probability is not None
        if self.probability >= 1.0:
            return 0
        u = self.rng.random()
        return int(math.log1p(-u) / math.log1p(-self.probability))  # geometric: bytes before a hit


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    down_total: int = 0  # bytes seen upstream -> client on this connection
    next_corrupt_at: int | None = None

    def abort(self, reset: bool) -> None:
        for w in (self.client, self.upstream):
            if w is None:
                continue
            if reset:
                w.transport.abort()
            else:
                w.close()


class FaultProxy:
    """A controllable TCP proxy from `127.0.0.1:port` to `127.0.0.1:upstream_port`."""

    def __init__(self, upstream_port: int, *, listen_port: int = 0, upstream_host: str = LOOPBACK) -> None:
        if upstream_host not in (LOOPBACK, "localhost"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.upstream_host = LOOPBACK
        self.upstream_port = upstream_port
        self._listen_port = listen_port
        self.stats = ProxyStats()
        self.mode = Mode.PASS
        self._rate: float | None = None  # bytes per second per connection, in SLOW mode
        self._corruption: _Corruption | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy->{upstream_port}",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self.port = self._call(self._start())
        return self

    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self._listen_port,
                                                  family=socket.AF_INET, reuse_address=True)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def close(self) -> None:
        """Stop listening, drop every connection and stop the loop thread. Safe to call twice."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for c in conns:
            c.abort(reset=True)
        for t in [t for c in conns for t in c.tasks]:
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url_host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # -- controls (from any thread) -------------------------------------------------------------------
    def resume(self) -> None:
        """Pass-through again: no stall, no slowness, no corruption, new connections served."""
        self._apply(self._set_mode, Mode.PASS, None, None)

    def stall(self) -> None:
        """Forward nothing in either direction, but keep connections open (new ones are accepted and held)."""
        self._apply(self._set_mode, Mode.STALL, None, self._corruption)

    def slow(self, bytes_per_s: float) -> None:
        """Forward at most this many bytes per second towards the client, on each connection."""
        if bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive (use stall() to stop the flow)")
        self._apply(self._set_mode, Mode.SLOW, float(bytes_per_s), self._corruption)

    def refuse(self) -> None:
        """Close new connections as soon as they are accepted; connections already open carry on."""
        self._apply(self._set_mode, Mode.REFUSE, None, self._corruption)

    def cut(self, *, reset: bool = False) -> int:
        """Close every open connection now (FIN, or RST with reset=True); returns how many were cut."""
        return self._call(self._cut(reset))

    def corrupt(self, probability: float | None = None, *, every_n_bytes: int | None = None, insert: bool = False,
                spare_first: int = 0, seed: int | None = None) -> None:
        """Damage the upstream -> client bytes from now on: each byte with `probability`, or every n-th byte.

        A damaged byte is XORed with a random non-zero value, or with insert=True a random byte is inserted
        (the stream shifts, which breaks framing such as MPEG-TS packet alignment). The first `spare_first`
        bytes of each connection pass intact (e.g. to let an RTMP handshake through). Stays on until resume().
        """
        if (probability is None) == (every_n_bytes is None):
            raise ValueError("give exactly one of probability and every_n_bytes")
        if probability is not None and not 0.0 < probability <= 1.0:
            raise ValueError("probability must be in (0, 1]")
        if every_n_bytes is not None and every_n_bytes < 1:
            raise ValueError("every_n_bytes must be at least 1")
        corruption = _Corruption(probability, every_n_bytes, insert, spare_first, random.Random(seed))
        self._apply(self._set_corruption, corruption)

    def open_connections(self) -> int:
        return self._call(self._count())

    # -- on the loop ----------------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _apply(self, fn: Callable[..., None], *args: Any) -> None:
        async def run() -> None:
            fn(*args)

        self._call(run())

    def _set_mode(self, mode: Mode, rate: float | None, corruption: _Corruption | None) -> None:
        assert self._flowing is not None
        self.mode = mode
        self._rate = rate
        if corruption is not self._corruption:
            self._set_corruption(corruption)
        if mode == Mode.STALL:
            self._flowing.clear()
        else:
            self._flowing.set()

    def _set_corruption(self, corruption: _Corruption | None) -> None:
        self._corruption = corruption
        for c in self._conns:
            c.next_corrupt_at = None  # drawn again on the next chunk

    async def _cut(self, reset: bool) -> int:
        conns = list(self._conns)
        for c in conns:
            c.abort(reset)
        self.stats.cut += len(conns)
        return len(conns)

    async def _count(self) -> int:
        return len(self._conns)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == Mode.REFUSE:
            self.stats.refused += 1
            writer.transport.abort()
            return
        conn = _Conn(writer)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
        self._conns.add(conn)
        self.stats.open_now = len(self._conns)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                self.stats.refused += 1
                writer.transport.abort()
                return
            conn.upstream = up_writer
            self.stats.accepted += 1
            up = asyncio.create_task(self._pump(conn, reader, up_writer, downstream=False))
            down = asyncio.create_task(self._pump(conn, up_reader, writer, downstream=True))
            conn.tasks = [up, down]
            # Either side ending (EOF, error, cut, close) ends the pair; close() cancels the pumps, not us.
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
            conn.abort(reset=False)
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._conns.discard(conn)
            if me is not None:
                self._handlers.discard(me)
            self.stats.open_now = len(self._conns)

    async def _pump(self, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *,
                    downstream: bool) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()  # STALL: stop reading too, so the sender sees back-pressure
                data = await src.read(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        if dst.can_write_eof():
                            dst.write_eof()
                    return
                if not downstream:
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
                    self.stats.bytes_up += len(data)
                    continue
                data = self._damage(conn, data)
                await self._send_down(data, dst)
        except (ConnectionError, OSError):
            return

    async def _send_down(self, data: bytes, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        view = memoryview(data)
        while view:
            await self._flowing.wait()
            rate = self._rate if self.mode == Mode.SLOW else None
            if rate is None:
                piece, view = view, view[len(view):]
            else:
                n = max(1, int(rate / 20))  # ~20 writes a second: a trickle, not bursts
                piece, view = view[:n], view[n:]
            started = time.monotonic()
            dst.write(piece)
            await dst.drain()
            self.stats.bytes_down += len(piece)
            if rate is not None:
                wait = len(piece) / rate - (time.monotonic() - started)
                if wait > 0:
                    await asyncio.sleep(wait)

    def _damage(self, conn: _Conn, data: bytes) -> bytes:
        start = conn.down_total
        conn.down_total += len(data)
        cor = self._corruption
        if cor is None or conn.down_total <= cor.spare_first:
            return data
        if conn.next_corrupt_at is None:
            conn.next_corrupt_at = max(start, cor.spare_first) + cor.gap()
        out = bytearray()
        pos = 0  # in data
        while conn.next_corrupt_at < conn.down_total:
            i = conn.next_corrupt_at - start
            out += data[pos:i]
            noise = cor.rng.randrange(1, 256)
            if cor.insert:
                out.append(noise)
                pos = i
            else:
                out.append(data[i] ^ noise)
                pos = i + 1
            self.stats.corrupted += 1
            conn.next_corrupt_at += 1 + cor.gap()
        out += data[pos:]
        return bytes(out)


__all__ = ["FaultProxy", "Mode", "ProxyStats"]
