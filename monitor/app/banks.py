"""The engine's banks: loaded and logged at start, watched for changes, reloaded, and the negative-bank policy.

Banks are validated here (a file that does not parse is refused and the loaded banks stay in use), then handed
to the supervisor, whose processes each build and swap them whole (monitor/runtime/bank_reload.py); each
process's outcome comes back as a `ReloadResult` and is logged here. A reload happens when a bank file
changes (bank_reload.watch, checked every bank_reload.interval_s) or on request (SIGHUP).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.common.errors import USER_ERRORS
from monitor.config.models import BankConfig, MonitorConfig
from monitor.ops.metrics import Metrics
from monitor.runtime.bank_reload import ReloadResult
from monitor.runtime.bank_reload import load_banks as load_bank_files
from pipelines.banks import Bank
from pipelines.base import Finding

log = logging.getLogger(__name__)

FileStamp = tuple[float, int] | None  # (mtime, size); None: the file cannot be read


def load_banks(cfg: MonitorConfig) -> list[Bank]:
    """The configured banks, each logged with its size; raises BankFormatError naming file and line."""
    banks = load_bank_files(cfg.banks)
    for b in banks:
        log.info("bank %s: %d %s entries, threshold %d", b.name, len(b), b.signal_type, b.threshold)
    return banks


def file_stamp(path: Path) -> FileStamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size


class NegativeBanks:
    """Known benign content: a sample that matches a negative bank alerts nobody, whatever else it matched."""

    def __init__(self, banks: Sequence[BankConfig]) -> None:
        self.names = {b.name for b in banks if b.negative}

    def apply(self, findings: list[Finding]) -> tuple[list[Finding], int]:
        """The findings that count, and how many were suppressed by a negative match."""
        if not any(f.bank in self.names for f in findings):
            return findings, 0
        return [], sum(1 for f in findings if f.bank not in self.names)


class BankWatcher:
    """Reloads the banks when their files change or on request; `apply` hands validated banks to the workers."""

    def __init__(self, cfg: MonitorConfig, metrics: Metrics, apply: Callable[[Sequence[BankConfig]], None]) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.apply = apply
        self.reload_requested = asyncio.Event()  # set by SIGHUP (monitor/cli/run.py)
        self.results: dict[str, ReloadResult] = {}  # the last result of each process that reloads
        self._stamps = self._current_stamps()

    def _current_stamps(self) -> dict[str, FileStamp]:
        return {b.name: file_stamp(b.path) for b in self.cfg.banks}

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload banks whose files changed (or all, on SIGHUP): validated here, swapped atomically by workers."""
        while not stop.is_set():
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait()),
                                                   asyncio.ensure_future(self.reload_requested.wait())]
            await asyncio.wait(waits, timeout=self.cfg.bank_reload.interval_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if stop.is_set():
                return
            forced = self.reload_requested.is_set()
            self.reload_requested.clear()
            stamps = self._current_stamps()
            if not forced and (not self.cfg.bank_reload.watch or stamps == self._stamps):
                continue
            await self.reload(stamps)

    async def reload(self, stamps: dict[str, FileStamp] | None = None) -> bool:
        """Validate the bank files, then hand them to the workers; False (and logged) if one is refused."""
        t0 = time.perf_counter()
        try:
            banks = await asyncio.to_thread(load_bank_files, self.cfg.banks)
        except USER_ERRORS as exc:  # BankFormatError (pipelines/errors.py) is no UserError
            log.error("bank reload refused, the loaded banks stay in use: %s", exc)
            return False
        finally:
            self._stamps = stamps or self._current_stamps()
        self.apply(self.cfg.banks)
        elapsed = time.perf_counter() - t0
        for b in banks:
            self.metrics.bank_entries.labels(b.name).set(len(b))
            self.metrics.bank_reload.labels(b.name).observe(elapsed)
        log.info("banks reloaded (%s) in %.2f s", ", ".join(f"{b.name}: {len(b)}" for b in banks), elapsed)
        return True

    def reloaded(self, result: ReloadResult) -> None:
        """A process's reload result (on the loop): kept and logged."""
        who = "this process" if result.worker is None else f"worker {result.worker}"
        self.results[who] = result
        if result.ok:
            log.info("bank reload %d in %s: %s", result.generation, who, result.detail)
        else:
            log.error("bank reload %d in %s FAILED, it keeps matching with its previous banks: %s",
                      result.generation, who, result.detail)
