"""Bank reloads, one at a time per process, newest wins, each one reported.

A reload used to start a thread of its own: two edits in quick succession (or an edit and a SIGHUP) ran two loads
at once, and the older, slower one could finish last and put back the banks the newer one had replaced. Here one
thread per process loads, so loads end in the order they were asked for; requests that arrive while it works are
folded into one (only the newest is loaded next), and a swap is refused to any load older than the banks in use
(a guard: with one thread it cannot happen). Every load ends in a
`ReloadResult` handed to `on_result` (a worker process sends it to the main one, which logs it), so a worker's
failure is seen where the operator looks, not only in that worker's own log.

`load_banks` reads every bank with all of its `BankConfig` settings (size cap, symbolic links).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.config.models import BankConfig
from pipelines.banks import Bank, load_bank
from pipelines.known_content import KnownContentMatcher

__all__ = ["BankReloader", "ReloadResult", "load_banks"]

log = logging.getLogger(__name__)

Loader = Callable[[Sequence[BankConfig], Sequence[Bank]], list[Bank]]


def load_banks(banks: Sequence[BankConfig], previous: Sequence[Bank] = ()) -> list[Bank]:
    """The enabled banks, parsed with their size caps and link rules; BankFormatError names file and line.

    Banks in `previous` with the same name are updated (an overlay) instead of rebuilt when the change is small."""
    old = {b.name: b for b in previous}
    return [load_bank(b.path, b.name, b.signal_type, b.threshold, old.get(b.name), max_bytes=b.max_bytes,
                      follow_symlinks=b.follow_symlinks) for b in banks if b.enabled]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """How one reload ended; plain data, so it crosses from a worker process to the main one."""

    generation: int  # counts the requests of this reloader (of this process)
    ok: bool
    detail: str  # what was swapped in, or why nothing was
    banks: tuple[tuple[str, int], ...] = ()  # (name, entries) now in use, when ok
    seconds: float = 0.0
    skipped: int = 0  # requests folded into this one while the previous load ran (only the newest is loaded)
    worker: int | None = None  # set by whoever forwards it (the worker process's index)


class BankReloader:
    """The one reload thread of a process, for the known-content matchers among `pipelines`."""

    def __init__(self, pipelines: Sequence[object], on_result: Callable[[ReloadResult], None] | None = None,
                 *, loader: Loader = load_banks) -> None:
        self.matchers = [p for p in pipelines if isinstance(p, KnownContentMatcher)]
        self.on_result = on_result
        self.loader = loader
        self.generation = 0  # the newest request
        self.done = 0  # the newest generation whose load has ended (swapped or failed)
        self.swapped = 0  # the generation of the banks in use
        self.last: ReloadResult | None = None
        self._pending: Sequence[BankConfig] | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def request(self, banks: Sequence[BankConfig]) -> int:
        """Ask for the banks to be loaded and swapped in; returns the request's generation. Never blocks."""
        with self._cond:
            self.generation += 1
            self._pending = list(banks)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bank-reload", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self.generation

    def wait(self, generation: int | None = None, timeout_s: float = 30.0) -> bool:
        """Wait until the load of `generation` (default: the newest request) or a newer one has ended."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            wanted = self.generation if generation is None else generation
            while self.done < wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None:
                    if not self._cond.wait(60.0) and self._pending is None:
                        self._thread = None  # idle a minute: the next request starts a new thread
                        return
                banks, self._pending = self._pending, None
                generation = self.generation
                skipped = generation - self.done - 1
            result = self._load(generation, banks, max(0, skipped))
            self._report(result)  # before waiters wake: whoever waited for this load sees its report
            with self._cond:
                self.done = max(self.done, generation)
                self.last = result
                self._cond.notify_all()

    def _load(self, generation: int, banks: Sequence[BankConfig], skipped: int) -> ReloadResult:
        t0 = time.perf_counter()
        loaded: list[list[Bank]] = []
        try:
            for m in self.matchers:
                loaded.append(self.loader(banks, m.banks))
        except Exception as exc:  # validated in the main process first; the file changed again meanwhile
            return ReloadResult(generation, False, f"bank reload failed, the loaded banks stay in use: {exc}",
                                seconds=time.perf_counter() - t0, skipped=skipped)
        with self._cond:
            if generation < self.swapped:  # never older banks over newer ones
                return ReloadResult(generation, False, f"not swapped in: banks of request {self.swapped} are newer",
                                    seconds=time.perf_counter() - t0, skipped=skipped)
            for m, new in zip(self.matchers, loaded, strict=True):
                m.set_banks(new)
            self.swapped = generation
        sizes = tuple((b.name, len(b)) for b in (loaded[0] if loaded else []))
        summary = ", ".join(
            f"{b.name} {len(b)} entries ({'overlay ' + str(b.overlay_size) if b.overlay_size else 'built'})"
            for b in (loaded[0] if loaded else []))
        return ReloadResult(generation, True, f"banks swapped in: {summary or 'none'}", sizes,
                            time.perf_counter() - t0, skipped)

    def _report(self, result: ReloadResult) -> None:
        if result.ok:
            log.info("%s (%.2f s)", result.detail, result.seconds)
        else:
            log.error("%s", result.detail)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("bank reload: reporting the result failed")
