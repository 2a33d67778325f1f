"""An ONNX model as a Scorer: loading it into an ONNX Runtime session (CPU; CUDA when onnxruntime-gpu offers it),
checking that it takes the configured input and gives one score per label, and running it.

Every check raises ModelError naming the config field at fault, so that `monitor run` refuses a model that
cannot run as configured in one line before anything starts. Inputs and outputs go through
pipelines/classifier/tensors.py. Which execution providers were asked for and which the session uses is logged
at start and reported in the classifier's figures; the CUDA path has not been run (no GPU where this was built).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipelines.classifier.scorer import Frame, ModelError, ScorerFigures, Scores, file_sha256
from pipelines.classifier.tensors import Normalisation, Tensor, to_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OnnxSettings:
    model: Path
    labels: tuple[str, ...]
    input_size: tuple[int, int]  # width, height
    colour_order: str = "rgb"
    layout: str = "nchw"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: str = "probabilities"  # or logits_softmax, logits_sigmoid
    providers: str = "auto"
    threads: int = 1
    max_batch: int = 8

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation(self.input_size, self.colour_order, self.layout, self.scale, self.mean, self.std)


def _dim(d: object) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def choose_providers(setting: str, available: Sequence[str]) -> list[str]:
    """The execution providers asked of ONNX Runtime, in order: CUDA first when `setting` is "auto" and the
    installed onnxruntime offers it (onnxruntime-gpu), the CPU always (the fallback)."""
    if setting == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


class OnnxScorer:
    """An ONNX model with one image input and one (N, labels) output. Raises ModelError naming the field."""

    def __init__(self, s: OnnxSettings) -> None:
        import onnxruntime as ort

        if not s.model.is_file():
            raise ModelError("model", f"no such file: {s.model}")
        self.settings = s
        self.norm = s.normalisation
        self.model_id = "sha256:" + file_sha256(s.model)
        self.labels = s.labels
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = s.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = list(ort.get_available_providers())
        providers = choose_providers(s.providers, available)
        try:
            self.session = ort.InferenceSession(str(s.model), opts, providers=providers)
        except Exception as exc:
            raise ModelError("model", f"not a usable ONNX model ({type(exc).__name__}: {_one_line(exc)})") from None
        self.providers = tuple(self.session.get_providers())
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError("model", f"needs one image input, the model has {len(inputs)}")
        if not outputs:
            raise ModelError("model", "has no output")
        inp = inputs[0]
        self.input_name = str(inp.name)
        if inp.type != "tensor(float)":
            raise ModelError("model", f"input {inp.name!r} is {inp.type}, expected tensor(float)")
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelError("input_size", f"the model's input {inp.name!r} has shape {shape}, not an image batch")
        dims = [_dim(x) for x in shape]
        channels, h, w = self.norm.channels_height_width(dims)
        if channels is not None and channels != 3:
            raise ModelError("layout", f"the model's input {shape} has {channels} channels where {s.layout} "
                                       "puts them; expected 3")
        want_w, want_h = s.input_size
        if (w is not None and w != want_w) or (h is not None and h != want_h):
            raise ModelError("input_size", f"[{want_w}, {want_h}] does not fit the model's input {shape} "
                                           f"({s.layout}: {w or '?'} wide, {h or '?'} high)")
        self.fixed_batch = dims[0]  # a model exported for batch 1 runs batches one by one
        probe = self.norm.blank(1)
        try:
            out = self.session.run([outputs[0].name], {self.input_name: probe})[0]
        except Exception as exc:
            raise ModelError("input_size", f"the model does not run on a {list(probe.shape)} input "
                                           f"({_one_line(exc)})") from None
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != 1:
            raise ModelError("model", f"output {outputs[0].name!r} has shape {list(out.shape)}; expected "
                                      "(batch, labels)")
        if out.shape[1] != len(s.labels):
            raise ModelError("labels", f"{len(s.labels)} labels configured, the model's output "
                                       f"{outputs[0].name!r} has {out.shape[1]}")
        self.output_name = str(outputs[0].name)
        # logged once the model passed every check (a refused one says only why, in one line)
        log.info("classifier model %s (%s): execution providers %s (providers: %s; onnxruntime offers %s)",
                 s.model.name, self.model_id[:19], ", ".join(self.providers), s.providers, ", ".join(available))

    def preprocess(self, frame: Frame) -> Tensor:
        """One frame as the model takes it (pipelines/classifier/tensors.py)."""
        return self.norm.apply(frame)

    def infer(self, batch: npt.NDArray[np.float32]) -> Scores:
        """Raw model output mapped to 0-1 scores, (N, labels)."""
        if self.fixed_batch == 1 and len(batch) > 1:
            return np.concatenate([self.infer(batch[i:i + 1]) for i in range(len(batch))])
        raw = self.session.run([self.output_name], {self.input_name: batch})[0]
        return to_scores(raw, self.settings.output)

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]:
        if not frames:
            return []
        return list(self.infer(self.norm.batch(frames)))

    def figures(self) -> ScorerFigures:
        return {"providers": ",".join(self.providers)}

    def close(self) -> None:
        pass
