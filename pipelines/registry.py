"""Analyses by name: config declares them (`analyses: [{kind: ...}, ...]`), a worker builds them here.

A kind is registered with a builder taking its config entry and the worker's context; `build` returns the
pipeline, or raises ModelError naming the config field at fault. Synchronous pipelines (`Pipeline`) run on the
analysis thread, batched ones (`BatchedPipeline`, classifiers) on their own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from pipelines.banks import Bank
from pipelines.base import BatchedPipeline, Pipeline

AnyPipeline = Pipeline | BatchedPipeline


class AnalysisSpec(Protocol):
    """What every config entry has (monitor.config.models: KnownContentAnalysisConfig, OnnxClassifierConfig, ...)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class BuildContext:
    banks: Sequence[Bank]
    matching: object  # monitor.config.models.MatchingConfig (pipelines does not import monitor)
    store_images: bool = False


S = TypeVar("S", bound=AnalysisSpec)
Builder = Callable[[S, BuildContext], AnyPipeline]
_BUILDERS: dict[str, Callable[[AnalysisSpec, BuildContext], AnyPipeline]] = {}


def register(kind: str) -> Callable[[Builder[S]], Builder[S]]:
    def deco(fn: Builder[S]) -> Builder[S]:
        _BUILDERS[kind] = cast(Callable[[AnalysisSpec, BuildContext], AnyPipeline], fn)
        return fn

    return deco


def kinds() -> list[str]:
    return sorted(_BUILDERS)


def build(spec: AnalysisSpec, ctx: BuildContext) -> AnyPipeline:
    builder = _BUILDERS.get(spec.kind)
    if builder is None:
        raise KeyError(f"no analysis of kind {spec.kind!r} (known: {', '.join(kinds())})")
    return builder(spec, ctx)
