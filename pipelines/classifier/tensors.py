"""A model's input normalisation and output mapping, written once: what a frame becomes before inference, and
how the raw output becomes 0-1 scores.

A frame is area-resized to the model's input size, put in its colour order, scaled (`pixel * scale`), then
`(x - mean) / std` per channel, in the model's layout (NCHW or NHWC). `Normalisation` also knows where that
layout keeps channels, height and width, which is how a model's declared input shape is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.classifier.scorer import Frame, Scores
from pipelines.fingerprint import area_resize

Tensor = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Normalisation:
    input_size: tuple[int, int]  # width, height
    colour_order: str = "rgb"  # or "bgr"
    layout: str = "nchw"  # or "nhwc"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def shape(self, n: int) -> tuple[int, int, int, int]:
        """The shape of a batch of n inputs."""
        w, h = self.input_size
        return (n, 3, h, w) if self.layout == "nchw" else (n, h, w, 3)

    def channels_height_width(self, shape: Sequence[int | None]) -> tuple[int | None, int | None, int | None]:
        """(channels, height, width) of a 4-d input shape in this layout (None where it is not fixed)."""
        _, a, b, c = shape
        return (a, b, c) if self.layout == "nchw" else (c, a, b)

    def blank(self, n: int = 1) -> Tensor:
        """A batch of n zero inputs (the trial run that checks a model takes this input)."""
        return np.zeros(self.shape(n), np.float32)

    def apply(self, frame: Frame) -> Tensor:
        """One frame as the model takes it: (3, H, W) or (H, W, 3) float32."""
        img = area_resize(frame, self.input_size)
        if self.colour_order == "bgr":
            img = img[:, :, ::-1]
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        x = (img.astype(np.float32) * np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "nchw" else x)

    def batch(self, frames: Sequence[Frame]) -> Tensor:
        """Frames as one input batch."""
        return np.stack([self.apply(f) for f in frames]) if frames else self.blank(0)


def to_scores(raw: npt.ArrayLike, output: str) -> Scores:
    """A model's (N, labels) output as 0-1 scores: as they are ("probabilities"), or through softmax or sigmoid."""
    out = np.asarray(raw, np.float32)
    if output == "logits_softmax":
        e = np.exp(out - out.max(axis=1, keepdims=True))
        out = np.asarray(e / e.sum(axis=1, keepdims=True), np.float32)
    elif output == "logits_sigmoid":
        out = np.asarray(1.0 / (1.0 + np.exp(-out)), np.float32)
    return np.asarray(out, np.float32)
