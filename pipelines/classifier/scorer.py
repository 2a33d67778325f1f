"""What a classifier scores with: the `Scorer` protocol (an ONNX model, pipelines/classifier/onnx_model.py, or a
service, monitor/runtime/classify_service.py), the frame and score arrays, and the error naming the config field
at fault."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypedDict, runtime_checkable

import numpy as np
import numpy.typing as npt

from pipelines.classifier.stats import ServiceFigures

Frame = npt.NDArray[np.uint8]  # (H, W, 3) RGB
Scores = npt.NDArray[np.float32]  # one 0-1 score per label


class ModelError(ValueError):
    """A classifier that cannot be used as configured; `field` names the config field at fault."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


class Scorer(Protocol):
    """Scores frames: one row of len(labels) scores (0-1) per frame, or None for a frame it could not score."""

    model_id: str
    labels: tuple[str, ...]

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]: ...

    def close(self) -> None: ...


class ScorerFigures(TypedDict, total=False):
    providers: str  # an ONNX model's execution providers, in order of preference
    service: ServiceFigures  # a service's circuit and errors


@runtime_checkable
class FigureReporting(Protocol):
    """A scorer with figures of its own for the classifier's stats (pipelines/classifier/stats.py)."""

    def figures(self) -> ScorerFigures: ...


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
