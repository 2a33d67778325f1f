"""ONNX models the project builds itself with onnx.helper (nothing is downloaded).

- `build_testcard_model`: a benign demonstration classifier. Its labels are ["testcard", "other"]; "testcard" is
  the share of the picture whose colour is within a tolerance of a colour-bar test card at the same place
  (`colour_bar_card` draws the card), "other" is the rest. A stream showing the card full-frame scores ~1.
- `build_mobilenet_like`: a MobileNet-v1-shaped network (depthwise separable convolutions, 224x224, about 4.2 M
  parameters) with random weights, to price inference (`monitor bench classify`); its scores mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

TESTCARD_LABELS = ("testcard", "other")
TESTCARD_SIZE = 64  # the model's input is 64x64 RGB, scaled to 0-1 (nchw)
# Seven vertical bars at 75 % (the classic colour-bar order): white, yellow, cyan, green, magenta, red, blue.
_BARS = ((191, 191, 191), (191, 191, 0), (0, 191, 191), (0, 191, 0), (191, 0, 191), (191, 0, 0), (0, 0, 191))
_OPSET = 18


def colour_bar_card(width: int = 1280, height: int = 720) -> npt.NDArray[np.uint8]:
    """The colour-bar card the demonstration model looks for, as RGB."""
    img = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, len(_BARS) + 1).round().astype(int)
    for i, colour in enumerate(_BARS):
        img[:, edges[i]:edges[i + 1]] = colour
    return img


def build_testcard_model(path: Path, tolerance: float = 0.35, sharpness: float = 20.0) -> Path:
    """Writes the demonstration model; `tolerance` is the summed absolute RGB difference (0-3) that counts a
    pixel as the card's."""
    import cv2
    from onnx import TensorProto, checker, helper, numpy_helper, save

    card = cv2.resize(colour_bar_card(), (TESTCARD_SIZE, TESTCARD_SIZE), interpolation=cv2.INTER_AREA)
    template = (card.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]  # (1, 3, 64, 64)
    inits = [
        numpy_helper.from_array(template, "card"),
        numpy_helper.from_array(np.array([1], np.int64), "ax_channel"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "ax_space"),
        numpy_helper.from_array(np.array(tolerance, np.float32), "tolerance"),
        numpy_helper.from_array(np.array(sharpness, np.float32), "sharpness"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Sub", ["image", "card"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["absdiff"]),
        helper.make_node("ReduceSum", ["absdiff", "ax_channel"], ["dist"], keepdims=1),  # (N, 1, 64, 64)
        helper.make_node("Sub", ["tolerance", "dist"], ["margin"]),
        helper.make_node("Mul", ["margin", "sharpness"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["on_card"]),
        helper.make_node("ReduceMean", ["on_card", "ax_space"], ["share"], keepdims=0),  # (N, 1)
        helper.make_node("Sub", ["one", "share"], ["rest"]),
        helper.make_node("Concat", ["share", "rest"], ["scores"], axis=1),  # (N, 2)
    ]
    graph = helper.make_graph(
        nodes, "testcard",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, TESTCARD_SIZE, TESTCARD_SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(TESTCARD_LABELS)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="livesafe")
    model.ir_version = 9
    checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


# MobileNet v1 (width 1.0): (output channels, stride) of each depthwise separable block after the stem.
_MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                     (512, 1), (512, 1), (1024, 2), (1024, 1))


def build_mobilenet_like(path: Path, classes: int = 1000, size: int = 224, seed: int = 0) -> tuple[Path, int]:
    """Writes a MobileNet-v1-shaped model with random weights (batch norm folded away); returns the path and
    its parameter count."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    inits = []
    nodes = []
    params = 0

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        nonlocal params
        w = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        params += w.size
        return name

    def conv(x: str, out: str, cin: int, cout: int, k: int, stride: int, group: int) -> str:
        w = weight(f"{out}_w", (cout, cin // group, k, k), cin // group * k * k)
        b = weight(f"{out}_b", (cout,), 1)
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{out}_c"], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[pad, pad, pad, pad], group=group))
        nodes.append(helper.make_node("Relu", [f"{out}_c"], [out]))
        return out

    x = conv("image", "stem", 3, 32, 3, 2, 1)
    cin = 32
    for i, (cout, stride) in enumerate(_MOBILENET_BLOCKS):
        x = conv(x, f"dw{i}", cin, cin, 3, stride, cin)
        x = conv(x, f"pw{i}", cin, cout, 1, 1, 1)
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    fc_w = weight("fc_w", (classes, cin), cin)
    fc_b = weight("fc_b", (classes,), 1)
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "mobilenet_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="livesafe")
    model.ir_version = 9
    checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path, params
