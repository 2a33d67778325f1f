"""Classifier pipelines: a model (ONNX Runtime) or a service scores samples; scores over a label's threshold are
Findings of kind "classification".

A classifier never runs on the hash path. The analysis thread `offer`s it a sample; the classifier's own thread
scores samples in batches and hands every classified sample to the sink. Its sampling budget is its own, and time
comes from an injected clock. The parts, one concern each:
  - budget.py: which samples of each stream it takes (every k-th, denser for new streams and after near matches);
  - pipeline.py: the queue, the batching thread, the findings (`ClassifierPipeline`);
  - scorer.py: the `Scorer` protocol a model or a service implements, `ModelError`;
  - tensors.py: a model's input normalisation and output mapping;
  - onnx_model.py: an ONNX model loaded, checked against the configuration and run (`OnnxScorer`);
  - stats.py: the figures a classifier reports (counters, batch size and inference time histograms, a service's
    circuit), which the main process turns into metrics.
ONNX Runtime is imported only when an `OnnxScorer` is built (the optional `onnx` extra).
"""

from pipelines.classifier.budget import BudgetSettings, SampleBudget
from pipelines.classifier.onnx_model import OnnxScorer, OnnxSettings
from pipelines.classifier.pipeline import (
    Batcher,
    BatchSettings,
    ClassifierPipeline,
    ClassifierStats,
    LabelRule,
    Waiting,
)
from pipelines.classifier.scorer import (
    FigureReporting,
    Frame,
    ModelError,
    Scorer,
    ScorerFigures,
    Scores,
    file_sha256,
)
from pipelines.classifier.stats import ClassifierFigures, HistogramFigures, ServiceFigures
from pipelines.classifier.tensors import Normalisation, to_scores

__all__ = [
    "BatchSettings",
    "Batcher",
    "BudgetSettings",
    "ClassifierFigures",
    "ClassifierPipeline",
    "ClassifierStats",
    "FigureReporting",
    "Frame",
    "HistogramFigures",
    "LabelRule",
    "ModelError",
    "Normalisation",
    "OnnxScorer",
    "OnnxSettings",
    "SampleBudget",
    "Scorer",
    "ScorerFigures",
    "Scores",
    "ServiceFigures",
    "Waiting",
    "file_sha256",
    "to_scores",
]
