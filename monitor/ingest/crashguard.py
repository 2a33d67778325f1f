"""Which stream was inside FFmpeg when a worker process crashed, so that only its input is blamed.

A worker process runs dozens of streams; a decoder bug hit by one hostile input (SIGSEGV, SIGABRT from an
FFmpeg assertion) takes all of them down. To tell the culprit from its neighbours, every worker process has a
small table in shared memory (`CrashTable`, one slot per stream thread) and the reader marks its calls into
PyAV/FFmpeg:

    with native_section("decode"):          # "open", "demux", "decode", "scale", "close"
        frames = ctx.decode(packet)
    for packet in native_iter(container.demux(), "demux"):   # each next() is marked, the loop body is not
        ...

A slot holds the stream id, the thread, the kind of call and since when (unix time); it is cleared when the call
returns or raises. The worker also has Python's `faulthandler` write every thread's stack to a file on a fatal
signal; its "Current thread" is the thread the signal was delivered to, which for a segfault, bus error, FPE or
abort() is the thread that faulted. After the process died the parent reads both (`read_suspects`):

- the faulting thread is known and was in a marked call: that stream alone is blamed (`precise`);
- the faulting thread is known and was in no marked call (an analysis thread, our own code): nobody is blamed;
- the faulting thread is unknown (a thread of FFmpeg's own, which has no Python stack, or a process with more
  threads than faulthandler lists): the streams that were in "decode" or "scale" calls are blamed, each one.
  Threads in "open", "demux" and "close" are left out there: a live stream spends most of its time blocked in
  the demuxer waiting for the network, so that mark says nothing about who crashed.

The stream a thread belongs to is bound once per thread (`bind_stream`; the worker does it from the first state
change a stream thread reports, before it opens anything), so the reader itself needs no stream id. Everything
here is a no-op until `install` was called in the process (the single-process supervisor, tools, tests).

Fault injection, for tests only: with MONITOR_FAULT_CRASH_STREAM=<stream id> in the environment of a worker
process, that stream's first "decode" call kills the process with SIGSEGV, delivered to the calling thread as a
real fault would be.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import re
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

FAULT_CRASH_ENV = "MONITOR_FAULT_CRASH_STREAM"
SLOTS = 512  # stream threads per worker process that can be told apart; more are not attributed
CPU_KINDS = ("decode", "scale")  # kinds of call that work on the stream's data and never wait for the network
KINDS = ("open", "demux", *CPU_KINDS, "close")
STREAM_ID_BYTES = 128  # config.STREAM_ID_RE: 1-128 ASCII characters


class _Slot(ctypes.Structure):
    _fields_ = [
        ("since", ctypes.c_double),  # unix time the call began; 0: not in a call
        ("thread", ctypes.c_uint64),  # threading.get_ident(); 0: free
        ("kind", ctypes.c_char * 8),
        ("stream", ctypes.c_char * STREAM_ID_BYTES),
    ]


@dataclass(frozen=True, slots=True)
class NativeCall:
    stream_id: str
    kind: str
    since: float
    thread: int


@dataclass(frozen=True, slots=True)
class Suspects:
    """What the parent learnt about a crash: whom to blame and why."""

    blamed: tuple[NativeCall, ...]
    precise: bool  # the faulting thread itself was identified
    in_native: tuple[NativeCall, ...]  # every marked call at the time (for the log)
    faulting_thread: int | None
    traceback: str  # the faulting thread's Python stack, as faulthandler wrote it ("" when unknown)

    def describe(self) -> str:
        if not self.blamed:
            if self.faulting_thread is not None:
                where = f"the faulting thread 0x{self.faulting_thread:x} was in no FFmpeg call of a stream"
            else:
                where = "the faulting thread is unknown and no stream was decoding or scaling"
            return f"nobody blamed ({where}; {len(self.in_native)} streams were in other FFmpeg calls)"
        how = "the faulting thread" if self.precise else "in a decode call at the time"
        return "blamed: " + ", ".join(f"{c.stream_id} ({how}: FFmpeg {c.kind} since "
                                      f"{time.strftime('%H:%M:%S', time.localtime(c.since))})" for c in self.blamed)


class CrashTable:
    """The shared table of one worker process: made by the parent, handed to the child when it is spawned."""

    def __init__(self, ctx: Any, slots: int = SLOTS) -> None:
        self.array: Any = ctx.RawArray(_Slot, slots)

    def calls(self) -> list[NativeCall]:
        out = []
        for s in self.array:
            if s.thread and s.since:
                out.append(NativeCall(s.stream.decode("ascii", "replace"), s.kind.decode("ascii", "replace"),
                                      s.since, s.thread))
        return out


# -- in the worker process ------------------------------------------------------------------------------------

class _Guard:
    def __init__(self, array: Any, dump: IO[str] | None) -> None:
        self.array = array
        self.dump = dump  # kept open: faulthandler writes to its file descriptor
        self.free = list(range(len(array) - 1, -1, -1))
        self.lock = threading.Lock()
        self.crash_stream = os.environ.get(FAULT_CRASH_ENV) or None

    def claim(self, stream_id: str) -> int | None:
        with self.lock:
            if not self.free:
                return None
            i = self.free.pop()
        s = self.array[i]
        s.since = 0.0
        s.stream = stream_id.encode("ascii", "replace")[:STREAM_ID_BYTES]
        s.thread = threading.get_ident()
        return i

    def release(self, i: int) -> None:
        s = self.array[i]
        s.since = 0.0
        s.thread = 0
        with self.lock:
            self.free.append(i)


_guard: _Guard | None = None
_local = threading.local()


class _Binding:
    """One thread's slot; given back when the thread ends (its thread-local data is dropped then)."""

    def __init__(self, guard: _Guard, stream_id: str, slot: int | None) -> None:
        self.guard = guard
        self.stream_id = stream_id
        self.slot = slot
        self.depth = 0
        if slot is not None:
            weakref.finalize(self, guard.release, slot)


def install(table: CrashTable, dump_path: Path | None) -> None:
    """In a worker process, before any stream starts: mark native calls in `table`, dump stacks on a crash."""
    global _guard
    dump = None
    if dump_path is not None:
        dump = open(dump_path, "w")  # noqa: SIM115 (open for the life of the process)
        faulthandler.enable(file=dump, all_threads=True)
    _guard = _Guard(table.array, dump)


def installed() -> bool:
    return _guard is not None


def bind_stream(stream_id: str) -> None:
    """This thread reads `stream_id` from now on (one thread never serves another stream)."""
    guard = _guard
    if guard is None:
        return
    b: _Binding | None = getattr(_local, "binding", None)
    if b is not None and b.stream_id == stream_id:
        return
    slot = guard.claim(stream_id)
    if slot is None:
        log.warning("stream %s: more than %d stream threads in this worker process; a crash in its FFmpeg calls "
                    "cannot be told from the others'", stream_id, len(guard.array), extra={"stream_id": stream_id})
    _local.binding = _Binding(guard, stream_id, slot)


class _Section:
    __slots__ = ("binding", "kind")

    def __init__(self, binding: _Binding, kind: str) -> None:
        self.binding = binding
        self.kind = kind

    def __enter__(self) -> None:
        b = self.binding
        b.depth += 1
        if b.depth > 1 or b.slot is None:
            return  # nested: the outer call's mark stands
        s = b.guard.array[b.slot]
        s.kind = self.kind.encode("ascii")[:8]
        s.since = time.time()
        if b.guard.crash_stream == b.stream_id and self.kind == "decode":
            _crash_for_tests()

    def __exit__(self, *exc: object) -> None:
        b = self.binding
        b.depth -= 1
        if b.depth == 0 and b.slot is not None:
            b.guard.array[b.slot].since = 0.0


_NOOP = contextlib.nullcontext()


def native_section(kind: str = "decode", stream_id: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Marks this thread as inside PyAV/FFmpeg for the `with` block. `kind`: one of KINDS. `stream_id` binds the
    thread first; without it the thread's bound stream is used. A no-op where nothing is installed or bound."""
    if _guard is None:
        return _NOOP
    if stream_id is not None:
        bind_stream(stream_id)
    b: _Binding | None = getattr(_local, "binding", None)
    if b is None:
        return _NOOP
    return _Section(b, kind)


def native_iter(items: Iterable[Any], kind: str = "demux", stream_id: str | None = None) -> Iterator[Any]:
    """`items`, with each `next()` marked as a native call (the caller's loop body is not)."""
    it = iter(items)
    while True:
        with native_section(kind, stream_id):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


def _crash_for_tests() -> None:
    # SIGSEGV to this thread, as a fault in the decoder would be: faulthandler names it the current thread.
    signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    time.sleep(5)  # not reached: the default action ends the process


# -- in the parent, after the worker died ---------------------------------------------------------------------

_CURRENT_RE = re.compile(r"^Current thread (0x[0-9a-fA-F]+)[^\n]*\n?", re.MULTILINE)


def faulting_thread(dump: str) -> tuple[int | None, str]:
    """The thread faulthandler named current, and its stack as written, from a dump file's text."""
    m = _CURRENT_RE.search(dump)
    if m is None:
        return None, ""
    return int(m.group(1), 16), dump[m.end():].split("\n\n", 1)[0].rstrip("\n")


def read_suspects(table: CrashTable, dump_path: Path | None) -> Suspects:
    """Whom to blame for a worker process that died of a fatal signal (see the module docstring)."""
    calls = table.calls()
    dump = ""
    if dump_path is not None:
        with contextlib.suppress(OSError):
            dump = dump_path.read_text(errors="replace")
    thread, stack = faulting_thread(dump)
    if thread is not None:  # the thread the signal hit: only its own call counts (none: nobody is blamed)
        return Suspects(tuple(c for c in calls if c.thread == thread), True, tuple(calls), thread, stack)
    return Suspects(tuple(c for c in calls if c.kind in CPU_KINDS), False, tuple(calls), None, stack)
