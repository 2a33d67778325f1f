"""The C allocator under many decoding threads in one process (glibc only; elsewhere these do nothing).

Every stream reader is a thread inside FFmpeg's decoder, and glibc gives each new thread its own malloc arena up
to 8 per core: with tens of streams a process holds tens of arenas, each with freed picture buffers and packet
memory that it keeps. Measured on 720p H.264 readers: an `av.open` in a fresh thread costs 2.55 MB of RSS against
0.68 MB in the main thread, and `malloc_trim(0)` gives back about 0.8 MB a reader.

- `cap_arenas()` bounds the arenas to one per core (at least 2): readers mostly wait on the network, so they
  rarely contend; done once, before the reader threads start. A MALLOC_ARENA_MAX set in the environment wins.
- `Trimmer` calls `malloc_trim(0)` every `interval_s` on its own thread (ctypes lets go of the GIL, and glibc
  locks one arena at a time, so readers wait at most for their own arena's walk).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc malloc.h
TRIM_INTERVAL_S = 30.0

_libc: Any = None
_looked_up = False
_capped = False
_lock = threading.Lock()


def _glibc() -> Any:
    """glibc's handle, or None (musl, macOS, a libc without mallopt/malloc_trim)."""
    global _libc, _looked_up
    with _lock:
        if not _looked_up:
            _looked_up = True
            name = ctypes.util.find_library("c")
            try:
                libc = ctypes.CDLL(name or "libc.so.6")
                libc.gnu_get_libc_version  # noqa: B018 - glibc only
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):
                _libc = None
        return _libc


def cap_arenas() -> int | None:
    """Bound glibc's malloc arenas to one per core (at least 2), once per process; the bound set, or None when
    nothing was set (not glibc, or MALLOC_ARENA_MAX given in the environment)."""
    global _capped
    libc = _glibc()
    if libc is None or os.environ.get("MALLOC_ARENA_MAX"):
        return None
    n = max(2, os.cpu_count() or 2)
    with _lock:
        if not _capped:
            _capped = bool(libc.mallopt(M_ARENA_MAX, n))
    return n if _capped else None


def trim() -> bool:
    """Give the allocator's free memory back to the system now; False when there is no glibc to ask."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class Trimmer:
    """`trim()` every interval_s on a daemon thread until `stop()`."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and _glibc() is not None:
            self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                trim()
                self.trims += 1
            except Exception as exc:  # never the reason a monitor stops
                log.warning("malloc_trim failed: %s", exc)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
