"""The analyses a stream's samples go through, built from the configuration by kind.

`make_analyses` builds the configured analyses (the known-content matcher on the banks, ONNX and service
classifiers) through the registry in pipelines/registry.py; the builders for each kind are registered here.
`make_matcher` is the known-content matcher with the configured matching settings (the bench uses it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np

from monitor.common.errors import ConfigError
from monitor.config.models import (
    AnalysisConfig,
    MatchingConfig,
    OnnxClassifierConfig,
    ServiceClassifierConfig,
)
from pipelines import registry
from pipelines.banks import Bank
from pipelines.base import BatchedPipeline, Finding, Sample
from pipelines.classifier import BatchSettings, BudgetSettings, ClassifierPipeline, LabelRule, ModelError
from pipelines.known_content import KnownContentMatcher
from pipelines.registry import AnyPipeline, BuildContext


class SampleImageMatcher(KnownContentMatcher):
    """The known-content matcher of a monitor with evidence.store_images: its findings carry the matched sample as
    PNG (`Finding.image_png`), encoded as the classifiers encode theirs, once per sample that matched."""

    def process(self, sample: Sample) -> list[Finding]:
        findings = super().process(sample)
        if not findings:
            return findings
        ok, png = cv2.imencode(".png", np.ascontiguousarray(sample.rgb[:, :, ::-1]))  # as pipelines/classifier
        if not ok:
            return findings
        image = png.tobytes()
        return [replace(f, image_png=image) for f in findings]


def make_matcher(banks: Sequence[Bank], m: MatchingConfig, *, keep_images: bool = False) -> KnownContentMatcher:
    """The known-content matcher on `banks`, with the configured matching settings; with keep_images
    (evidence.store_images) its findings carry the matched sample (`SampleImageMatcher`)."""
    cls = SampleImageMatcher if keep_images else KnownContentMatcher
    return cls(banks, m.min_quality, strip_bars=m.strip_bars, dihedral=m.dihedral, boxes=m.boxes,
               crops=m.crops, pip=m.pip, tones=m.tones, reextend=m.reextend, strips=m.strips,
               tilts=m.tilts, layout=m.layout)


@registry.register("known_content")
def _build_known_content(spec: AnalysisConfig, ctx: BuildContext) -> AnyPipeline:
    assert isinstance(ctx.matching, MatchingConfig)
    return make_matcher(ctx.banks, ctx.matching, keep_images=ctx.store_images)


def _classifier_parts(spec: OnnxClassifierConfig | ServiceClassifierConfig) -> tuple[
        list[LabelRule], BudgetSettings, BatchSettings]:
    s = spec.sampling
    return ([LabelRule(x.name, x.threshold, x.severity) for x in spec.labels],
            BudgetSettings(s.every_k, s.dense_every, s.new_stream_s, s.near_match_s, s.near_fraction),
            BatchSettings(s.batch_size, s.batch_wait_ms / 1000, s.queue_size, s.max_sample_age_s))


@registry.register("onnx_classifier")
def _build_onnx(spec: OnnxClassifierConfig, ctx: BuildContext) -> AnyPipeline:
    from pipelines.classifier import OnnxScorer, OnnxSettings

    rules, budget, batch = _classifier_parts(spec)
    scorer = OnnxScorer(OnnxSettings(
        spec.model, tuple(r.name for r in rules), spec.input_size, spec.colour_order, spec.layout, spec.scale,
        spec.mean, spec.std, spec.output, spec.providers, spec.threads, batch.batch_size))
    return ClassifierPipeline(spec.name, scorer, rules, budget, batch, keep_images=ctx.store_images)


@registry.register("service_classifier")
def _build_service(spec: ServiceClassifierConfig, ctx: BuildContext) -> AnyPipeline:
    from monitor.runtime.classify_service import ServiceScorer

    rules, budget, batch = _classifier_parts(spec)
    return ClassifierPipeline(spec.name, ServiceScorer(spec), rules, budget, batch, keep_images=ctx.store_images)


def make_analyses(analyses: Sequence[AnalysisConfig], banks: Sequence[Bank], matching: MatchingConfig,
                  store_images: bool = False) -> list[AnyPipeline]:
    """The configured analyses, built by kind; a classifier that cannot run as configured is a ConfigError
    naming the field (`analyses[1] (testcard).labels: ...`)."""
    ctx = BuildContext(banks, matching, store_images)
    out: list[AnyPipeline] = []
    for i, spec in enumerate(analyses):
        try:
            out.append(registry.build(spec, ctx))
        except ModelError as exc:
            for p in out:
                if isinstance(p, BatchedPipeline):
                    p.stop()
            raise ConfigError(f"analyses[{i}] ({spec.name}).{exc.field}: {exc.problem}") from None
    return out


def check_classifiers(analyses: Sequence[AnalysisConfig], matching: MatchingConfig) -> None:
    """Builds the configured classifiers once and closes them: ConfigError naming the field if one cannot run."""
    for p in make_analyses([a for a in analyses if a.kind != "known_content"], [], matching):
        if isinstance(p, BatchedPipeline):
            p.stop()
