"""What a supervisor offers the engine, and what it calls back: one protocol for threads and for processes.

`LocalSupervisor` (monitor/runtime/supervisor.py) runs one thread per stream in this process;
`ShardedSupervisor` (monitor/runtime/workers.py) spreads the streams over worker processes, each running a
`LocalSupervisor`. The engine (monitor/app/engine.py) holds either as a `Supervisor` and never asks which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from monitor.config.models import BankConfig, StreamConfig
from monitor.runtime.messages import SampleReport, SampleTiming, StateChange, WorkerStats
from pipelines.base import Finding


class EngineSink(Protocol):
    """Called from worker threads; implementations hand over to their own loop and return at once.

    A sink may also have `on_classified(sample, analysis, findings, done_at)` (classifier results) and
    `on_bank_reload(result)` (each reload's outcome); a supervisor calls those where they exist."""

    def on_state(self, change: StateChange) -> None: ...

    def on_sample(self, sample: SampleReport, findings: list[Finding], timing: SampleTiming) -> None:
        """Every sample, matched or not: confirming weak matches needs the misses too."""
        ...


class Supervisor(Protocol):
    """Starts and stops the reading of streams; streams can be added and removed while it runs."""

    urls: dict[str, str]  # stream id -> its URL with credentials redacted, for messages and evidence

    @property
    def quarantined_total(self) -> int:
        """Streams quarantined so far because their input crashed a worker process (0 without processes)."""
        ...

    def start(self) -> None: ...

    def add_stream(self, stream: StreamConfig) -> None:
        """Raises ValueError for a stream already monitored."""
        ...

    def remove_stream(self, stream_id: str) -> None: ...

    def has_stream(self, stream_id: str) -> bool:
        """Added and not removed (its reader may have ended: see dead_streams)."""
        ...

    def stream_ids(self) -> list[str]: ...

    def dead_streams(self) -> list[str]:
        """Streams added and not removed whose reader is gone (their last state says why)."""
        ...

    def boost(self, stream_id: str, seconds: float) -> None:
        """A recent near-match: sample this stream densely for a while."""
        ...

    def reload_banks(self, banks: Sequence[BankConfig]) -> None:
        """Load the banks in the background and swap them in whole; each outcome goes to the sink."""
        ...

    def stats(self) -> list[WorkerStats]:
        """Sampling counters, one entry per process that samples."""
        ...

    def stop_all(self) -> None:
        """Stops every stream and waits (a bounded time) for what is queued to be analysed."""
        ...
