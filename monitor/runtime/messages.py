"""The typed messages of the runtime: what a stream reports, and what crosses between worker processes.

A stream worker reports `StateChange`s and, per analysed sample, a `SampleReport` with its findings and
`SampleTiming` (monitor/runtime/supervisor.py). In the sharded supervisor (monitor/runtime/workers.py) a worker
process sends each of those to the parent as one `WorkerEvent`, and the parent sends it `WorkerCommand`s; both
sides dispatch on the message's type. Every message is a frozen dataclass of picklable fields: configuration
crosses as the models' JSON form (`model_dump(mode="json")`) and is validated again on the other side.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from monitor.runtime.bank_reload import ReloadResult
from pipelines.base import Finding, SampleInfo

# A worker's sampling counters, JSON-ready: {"scheduler": SchedulerStats (monitor/ingest/scheduler.py), "queue":
# QueueStats (monitor/ingest/queues.py), "classifiers": {name: ClassifierFigures (pipelines/classifier/stats.py)}}.
# A plain dict because its readers, monitor/ops/sampling_report.py `SamplingReport.update` and
# monitor/ops/classifier_metrics.py `ClassifierMetrics.update`, take one.
WorkerStats = dict[str, Any]


class StreamState(enum.StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"  # connected, but no packet within the read timeout
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a file reached its end, or the stream was removed
    FAILED = "failed"  # an error that retrying cannot fix


TERMINAL = (StreamState.ENDED, StreamState.FAILED)  # a stream in one of these has no thread reading it


@dataclass(frozen=True, slots=True)
class StateChange:
    stream_id: str
    state: StreamState
    detail: str
    at: float
    attempt: int
    retry_in_s: float | None = None


@dataclass(frozen=True, slots=True)
class SampleReport:
    """What the engine needs of a sample once it was analysed (the pixels stay with the worker)."""

    stream_id: str
    media_time_s: float
    received_at: float


@dataclass(frozen=True, slots=True)
class SampleTiming:
    decode_s: float  # key packet read -> scaled frame ready
    stages: tuple[tuple[str, float], ...]  # (pipeline name, seconds)
    done_at: float  # unix time the analyses finished


# -- worker process -> parent -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The worker built its pipelines and takes commands."""

    worker: int


@dataclass(frozen=True, slots=True)
class StateChanged:
    change: StateChange


@dataclass(frozen=True, slots=True)
class Sampled:
    """A sample analysed on the hash path, matched or not."""

    sample: SampleReport
    findings: list[Finding]
    timing: SampleTiming


@dataclass(frozen=True, slots=True)
class Classified:
    """A sample a classifier scored (in its own thread, after the hash path)."""

    sample: SampleInfo
    analysis: str
    findings: list[Finding]
    done_at: float


@dataclass(frozen=True, slots=True)
class WorkerStatsReport:
    """The worker's sampling counters, every few seconds."""

    worker: int
    stats: WorkerStats


@dataclass(frozen=True, slots=True)
class BanksReloaded:
    result: ReloadResult  # its `worker` names the worker


@dataclass(frozen=True, slots=True)
class WorkerStopped:
    """The worker stopped its streams; nothing follows."""

    worker: int


WorkerEvent = WorkerReady | StateChanged | Sampled | Classified | WorkerStatsReport | BanksReloaded | WorkerStopped


# -- parent -> worker process -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddStream:
    stream: dict[str, Any]  # StreamConfig.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class RemoveStream:
    stream_id: str


@dataclass(frozen=True, slots=True)
class Boost:
    """A recent near-match: sample the stream densely for a while."""

    stream_id: str
    seconds: float


@dataclass(frozen=True, slots=True)
class ReloadBanks:
    banks: list[dict[str, Any]]  # BankConfig.model_dump(mode="json") each


@dataclass(frozen=True, slots=True)
class StopWorker:
    pass


WorkerCommand = AddStream | RemoveStream | Boost | ReloadBanks | StopWorker
