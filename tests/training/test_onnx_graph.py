"""An ONNX graph run by torch operations (training.onnx_graph): every covered operator and
attribute variant gives ONNX Runtime's outputs on small hand-built graphs (opset-dependent forms
included); graphs exported from torch modules give the module's outputs and the module's input
gradients; the initializers are fixed buffers; graphs outside the table are refused by name; and
``largest_difference`` measures what it says."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from training.onnx_graph import SUPPORTED, OnnxGraph, Unsupported, largest_difference, translate

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
BIG = np.iinfo(np.int64).max  # Slice's "to the end"
N = helper.make_node
_W = np.random.default_rng(1)  # the initializers' values, fixed


def w(*shape: int) -> np.ndarray:
    """Random float32 weights."""
    return _W.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# ----------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Case:
    """A graph over one float32 input ``x`` whose first dimension is a dynamic batch."""

    nodes: list[onnx.NodeProto]
    shape: tuple[int, ...]  # x's shape in the test, batch first
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 18
    outputs: tuple[str, ...] = ("y",)
    types: tuple[int, ...] = ()  # the outputs' ONNX types; float32 if left out
    shapes: tuple[list[Any] | None, ...] = ()  # declared output shapes, where ONNX cannot infer them
    positive: bool = False  # inputs > 0 (Log, Sqrt, ...)
    check: bool = True  # ONNX's checker; it refuses deprecated forms that ONNX Runtime still runs


def build(c: Case, check: bool = True) -> onnx.ModelProto:
    graph = helper.make_graph(
        c.nodes, "case",
        [helper.make_tensor_value_info("x", FLOAT, ["batch", *c.shape[1:]])],
        [helper.make_tensor_value_info(o, t, s) for o, t, s in zip(
            c.outputs, c.types or (FLOAT,) * len(c.outputs), c.shapes or (None,) * len(c.outputs))],
        initializer=[numpy_helper.from_array(v, k) for k, v in c.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", c.opset)])
    model.ir_version = 8 if c.opset < 19 else 10
    if check:  # ONNX's own inference fills in the outputs' shapes, and checks the nodes on the way
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    return model


def model_of(nodes: list[onnx.NodeProto], shape: tuple[int, ...], inits: dict[str, np.ndarray] | None = None,
             check: bool = True, **kw: Any) -> onnx.ModelProto:
    return build(Case(nodes, shape, inits or {}, **kw), check)


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def run_graph(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in OnnxGraph(model)(torch.as_tensor(x))]


def inputs(shape: tuple[int, ...], positive: bool = False, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(x) + np.float32(0.5) if positive else x


def assert_close(got: np.ndarray, want: np.ndarray, tol: float = 1e-5, what: str = "") -> None:
    """Same dtype and shape; values within ``tol`` times the expected values' size (at least 1)."""
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if want.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale, err_msg=what)


def case(name: str, nodes: list[onnx.NodeProto], shape: tuple[int, ...],
         inits: dict[str, np.ndarray] | None = None, **kw: Any) -> Any:
    return pytest.param(Case(nodes, shape, inits or {}, **kw), id=name)


# ------------------------------------------------------------------------ the table of cases

X2, X3, X4 = (3, 4), (3, 2, 5), (2, 3, 8, 8)
B4 = {"B": w(4)}
EW = {"B": w(4), "C": w(3, 1)}

ELEMENTWISE = [
    case("Add", [N("Add", ["x", "B"], ["y"])], X2, B4),
    case("Sub", [N("Sub", ["B", "x"], ["y"])], X2, B4),
    case("Mul", [N("Mul", ["x", "B"], ["y"])], X2, B4),
    case("Div", [N("Div", ["x", "B"], ["y"])], X2, {"B": f32(0.5, -2.0, 3.0, 4.0)}),
    case("Pow", [N("Pow", ["x", "B"], ["y"])], X2, {"B": f32(0.5, 2.0, -1.0, 3.0)}, positive=True),
    case("Pow-int-exponent", [N("Pow", ["x", "E"], ["y"])], X2, {"E": i64(2)}),
    case("Sum", [N("Sum", ["x", "B", "C"], ["y"])], X2, EW),
    case("Max", [N("Max", ["x", "B", "C"], ["y"])], X2, EW),
    case("Min", [N("Min", ["x", "B", "C"], ["y"])], X2, EW),
    *[case(op, [N(op, ["x"], ["y"])], X2) for op in
      ("Neg", "Abs", "Exp", "Relu", "Sigmoid", "Tanh", "Erf", "Softplus", "Identity", "HardSwish")],
    *[case(op, [N(op, ["x"], ["y"])], X2, positive=True) for op in ("Log", "Sqrt", "Reciprocal")],
    case("Dropout-mask-unused", [N("Dropout", ["x"], ["y", "mask"])], X2),
    case("LeakyRelu-default", [N("LeakyRelu", ["x"], ["y"])], X2),
    case("LeakyRelu-alpha", [N("LeakyRelu", ["x"], ["y"], alpha=0.3)], X2),
    case("Elu-default", [N("Elu", ["x"], ["y"])], X2),
    case("Elu-alpha", [N("Elu", ["x"], ["y"], alpha=0.7)], X2),
    case("Selu-default", [N("Selu", ["x"], ["y"])], X2),
    case("Selu-alpha-gamma", [N("Selu", ["x"], ["y"], alpha=1.2, gamma=0.8)], X2),
    case("Gelu-none", [N("Gelu", ["x"], ["y"])], X2, opset=20),
    case("Gelu-tanh", [N("Gelu", ["x"], ["y"], approximate="tanh")], X2, opset=20),
    case("HardSigmoid-default", [N("HardSigmoid", ["x"], ["y"])], (3, 16)),
    case("HardSigmoid-alpha-beta", [N("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)], (3, 16)),
    case("Clip-attributes-opset6", [N("Clip", ["x"], ["y"], min=-0.5, max=0.7)], X2, opset=6),
    case("Clip-min-only-opset6", [N("Clip", ["x"], ["y"], min=-0.2)], X2, opset=6),
    case("Clip-inputs-opset13", [N("Clip", ["x", "lo", "hi"], ["y"])], X2,
         {"lo": f32(-0.5).reshape(()), "hi": f32(0.7).reshape(())}, opset=13),
    case("Clip-max-input-only-opset13", [N("Clip", ["x", "", "hi"], ["y"])], X2,
         {"hi": f32(0.3).reshape(())}, opset=13),
]

SOFTMAX = [
    # Opset 11: the input seen as 2-D at ``axis`` (axis 1 of 3-D: over the last two dimensions).
    case("Softmax-axis1-opset11", [N("Softmax", ["x"], ["y"], axis=1)], X3, opset=11),
    case("Softmax-default-opset11", [N("Softmax", ["x"], ["y"])], X3, opset=11),
    case("Softmax-axis-neg1-opset11", [N("Softmax", ["x"], ["y"], axis=-1)], X3, opset=11),
    case("LogSoftmax-axis1-opset11", [N("LogSoftmax", ["x"], ["y"], axis=1)], X3, opset=11),
    # Opset 13: over the one axis.
    case("Softmax-axis1-opset13", [N("Softmax", ["x"], ["y"], axis=1)], X3, opset=13),
    case("Softmax-default-opset13", [N("Softmax", ["x"], ["y"])], X3, opset=13),
    case("LogSoftmax-axis1-opset13", [N("LogSoftmax", ["x"], ["y"], axis=1)], X3, opset=13),
]

DENSE = [
    case("MatMul", [N("MatMul", ["x", "W"], ["y"])], X2, {"W": w(4, 5)}),
    case("MatMul-batched", [N("MatMul", ["x", "W"], ["y"])], X3, {"W": w(5, 6)}),
    case("Gemm", [N("Gemm", ["x", "W", "b"], ["y"])], X2, {"W": w(4, 5), "b": w(5)}),
    case("Gemm-no-bias", [N("Gemm", ["x", "W"], ["y"])], X2, {"W": w(4, 5)}),
    case("Gemm-transB", [N("Gemm", ["x", "W", "b"], ["y"], transB=1)], X2, {"W": w(5, 4), "b": w(5)}),
    # transA: x is (K, M); alpha and beta scale the product and the bias.
    case("Gemm-transA-alpha-beta", [N("Gemm", ["x", "W", "b"], ["y"], transA=1, alpha=0.5, beta=2.0)],
         (4, 3), {"W": w(4, 5), "b": w(1, 5)}),
    case("Gemm-transA-transB", [N("Gemm", ["x", "W", "b"], ["y"], transA=1, transB=1, alpha=1.5)],
         (4, 3), {"W": w(5, 4), "b": w(3, 5)}),
    case("BatchNormalization", [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
         X4, {"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.5}, opset=15),
    case("LayerNormalization-last", [N("LayerNormalization", ["x", "s", "b"], ["y"])],
         X3, {"s": w(5), "b": w(5)}, opset=17),
    case("LayerNormalization-axis1-no-bias", [N("LayerNormalization", ["x", "s"], ["y"], axis=1, epsilon=0.1)],
         X3, {"s": w(2, 5)}, opset=17),
    case("InstanceNormalization", [N("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)],
         X4, {"s": w(3), "b": w(3)}),
    # Opsets 18-20: one scale and bias per group; from 21: per channel.
    case("GroupNormalization-per-group-opset18", [N("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2,
                                                    epsilon=1e-3)], (2, 4, 3, 3), {"s": w(2), "b": w(2)}, opset=18,
         shapes=([2, 4, 3, 3],), check=False),
    case("GroupNormalization-per-channel-opset21", [N("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)],
         (2, 4, 3, 3), {"s": w(4), "b": w(4)}, opset=21, shapes=([2, 4, 3, 3],)),
]

PAD = [
    # Opset 2-10: pads and value as attributes, over every dimension (begins, then ends).
    case("Pad-attributes-opset10", [N("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5)],
         X4, opset=10),
    # Opset 13: pads and the constant as inputs; asymmetric, on the channel dimension too.
    case("Pad-inputs-constant-opset13", [N("Pad", ["x", "p", "c"], ["y"])], X4,
         {"p": i64(0, 1, 0, 3, 0, 2, 1, 0), "c": f32(-1.0).reshape(())}, opset=13),
    case("Pad-no-constant-opset13", [N("Pad", ["x", "p"], ["y"])], X4, {"p": i64(0, 0, 2, 2, 0, 0, 2, 2)},
         opset=13),
    case("Pad-reflect-opset13", [N("Pad", ["x", "p"], ["y"], mode="reflect")], X4,
         {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, opset=13),
    case("Pad-edge-opset13", [N("Pad", ["x", "p"], ["y"], mode="edge")], X4,
         {"p": i64(0, 0, 3, 1, 0, 0, 0, 2)}, opset=13),
    case("Pad-wrap-opset19", [N("Pad", ["x", "p"], ["y"], mode="wrap")], X4,
         {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, opset=19),
    case("Pad-negative-crops-opset13", [N("Pad", ["x", "p"], ["y"])], X4,
         {"p": i64(0, 0, -1, 2, 0, 0, 1, -2)}, opset=13),
    # Opset 18: over the named axes only (negative axes count from the end).
    case("Pad-axes-opset18", [N("Pad", ["x", "p", "", "axes"], ["y"])], X4,
         {"p": i64(1, 2, 3, 0), "axes": i64(-1, 2)}, opset=18),
]

CW = {"W": w(4, 3, 3, 3), "b": w(4)}
CONV = [
    case("Conv", [N("Conv", ["x", "W", "b"], ["y"])], X4, CW),
    case("Conv-no-bias-kernel_shape", [N("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3])], X4, CW),
    case("Conv-pads-symmetric", [N("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1])], X4, CW),
    case("Conv-pads-asymmetric", [N("Conv", ["x", "W", "b"], ["y"], pads=[0, 1, 2, 1])], X4, CW),
    case("Conv-strides-dilations", [N("Conv", ["x", "W", "b"], ["y"], strides=[2, 1], dilations=[2, 1],
                                     pads=[1, 0, 1, 0])], X4, CW),
    # 8 x 10 with kernel 3, stride 2: one pad row/column in all, at the end (UPPER) or start (LOWER).
    case("Conv-SAME_UPPER-stride2", [N("Conv", ["x", "W", "b"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
         (2, 3, 8, 10), CW),
    case("Conv-SAME_LOWER-stride2", [N("Conv", ["x", "W", "b"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])],
         (2, 3, 8, 10), CW),
    case("Conv-SAME_UPPER-stride1", [N("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER")], X4, CW),
    case("Conv-VALID", [N("Conv", ["x", "W", "b"], ["y"], auto_pad="VALID", strides=[2, 2])], X4, CW),
    case("Conv-group", [N("Conv", ["x", "W", "b"], ["y"], group=2, pads=[1, 1, 1, 1])],
         (2, 4, 6, 6), {"W": w(6, 2, 3, 3), "b": w(6)}),
    case("Conv-depthwise", [N("Conv", ["x", "W"], ["y"], group=3)], X4, {"W": w(3, 1, 3, 3)}),
    case("Conv-1d", [N("Conv", ["x", "W", "b"], ["y"], pads=[2, 1], strides=[2])],
         (2, 3, 9), {"W": w(4, 3, 3), "b": w(4)}),
    case("Conv-1d-SAME_LOWER", [N("Conv", ["x", "W"], ["y"], auto_pad="SAME_LOWER", strides=[2])],
         (2, 3, 8), {"W": w(4, 3, 4)}),
    case("Conv-3d", [N("Conv", ["x", "W", "b"], ["y"], pads=[1, 0, 1, 1, 0, 1])],
         (2, 2, 4, 5, 5), {"W": w(3, 2, 3, 3, 3), "b": w(3)}),
]

POOL = [
    case("MaxPool", [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], X4),
    case("MaxPool-ceil_mode", [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
         (2, 3, 7, 7)),
    case("MaxPool-ceil_mode-kernel3", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                         ceil_mode=1)], (2, 3, 8, 8)),
    case("MaxPool-pads", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
         X4),
    case("MaxPool-pads-asymmetric", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[0, 1, 2, 0])], X4),
    case("MaxPool-pads-beyond-half-kernel", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                               pads=[2, 2, 2, 2])], X4),
    case("MaxPool-pads-ceil_mode", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1], ceil_mode=1)], (2, 3, 8, 8)),
    case("MaxPool-dilations", [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], X4),
    case("MaxPool-SAME_UPPER", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                  auto_pad="SAME_UPPER")], (2, 3, 8, 10)),
    case("MaxPool-SAME_LOWER", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                  auto_pad="SAME_LOWER")], (2, 3, 8, 10)),
    case("MaxPool-1d", [N("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2])], (2, 3, 9)),
    case("AveragePool", [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], X4),
    case("AveragePool-pads-exclude", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                        pads=[1, 1, 1, 1], count_include_pad=0)], X4),
    case("AveragePool-pads-default-excludes", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                 pads=[1, 1, 1, 1])], X4),
    case("AveragePool-pads-include", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                        pads=[1, 1, 1, 1], count_include_pad=1)], X4),
    case("AveragePool-ceil_mode", [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                     ceil_mode=1)], (2, 3, 7, 7)),
    case("AveragePool-1d-pads-include", [N("AveragePool", ["x"], ["y"], kernel_shape=[3], pads=[1, 1],
                                           count_include_pad=1)], (2, 3, 9)),
    case("GlobalAveragePool", [N("GlobalAveragePool", ["x"], ["y"])], X4),
    case("GlobalMaxPool", [N("GlobalMaxPool", ["x"], ["y"])], X4),
    case("GlobalAveragePool-1d", [N("GlobalAveragePool", ["x"], ["y"])], (2, 3, 9)),
]

SHAPES = [
    case("Flatten-default", [N("Flatten", ["x"], ["y"])], X4),
    case("Flatten-axis2", [N("Flatten", ["x"], ["y"], axis=2)], X4),
    case("Flatten-axis0", [N("Flatten", ["x"], ["y"], axis=0)], X3),
    case("Flatten-axis-neg1", [N("Flatten", ["x"], ["y"], axis=-1)], X3),
    case("Reshape-0-copies-minus1-infers", [N("Reshape", ["x", "s"], ["y"])], X3, {"s": i64(0, -1)}),
    case("Reshape-0-in-the-middle", [N("Reshape", ["x", "s"], ["y"])], (3, 2, 5, 4), {"s": i64(-1, 0, 4, 5)}),
    case("Reshape-explicit", [N("Reshape", ["x", "s"], ["y"])], X3, {"s": i64(3, 5, 2)}),
    case("Transpose-perm", [N("Transpose", ["x"], ["y"], perm=[2, 0, 1])], X3),
    case("Transpose-default", [N("Transpose", ["x"], ["y"])], X3),
    case("Squeeze-axes-attribute-opset11", [N("Squeeze", ["x"], ["y"], axes=[1, -1])], (3, 1, 4, 1), opset=11),
    case("Squeeze-axes-input-opset13", [N("Squeeze", ["x", "a"], ["y"])], (3, 1, 4, 1), {"a": i64(1, -1)},
         opset=13),
    case("Squeeze-all-opset13", [N("Squeeze", ["x"], ["y"])], (3, 1, 4, 1), opset=13, shapes=(["batch", 4],)),
    case("Unsqueeze-axes-attribute-opset11", [N("Unsqueeze", ["x"], ["y"], axes=[0, -1])], X3, opset=11),
    case("Unsqueeze-axes-input-opset13", [N("Unsqueeze", ["x", "a"], ["y"])], X3, {"a": i64(3, 1)}, opset=13),
    case("Concat-axis1", [N("Concat", ["x", "B", "x"], ["y"], axis=1)], X3, {"B": w(3, 4, 5)}),
    case("Concat-axis-neg1", [N("Concat", ["x", "B"], ["y"], axis=-1)], X3, {"B": w(3, 2, 1)}),
    case("Gather-axis1-negative-index", [N("Gather", ["x", "i"], ["y"], axis=1)], X4, {"i": i64(2, 0, -1)}),
    case("Gather-scalar-index", [N("Gather", ["x", "i"], ["y"], axis=-1)], X3,
         {"i": np.array(3, dtype=np.int64)}),
    case("Gather-2d-indices", [N("Gather", ["x", "i"], ["y"], axis=2)], X3,
         {"i": np.array([[0, 4], [1, 1]], dtype=np.int32)}),
    case("Slice-attributes-opset9", [N("Slice", ["x"], ["y"], starts=[1, -4], ends=[2, 1000], axes=[1, 2])],
         X3, opset=9),
    case("Slice-attributes-no-axes-opset9", [N("Slice", ["x"], ["y"], starts=[0, 1], ends=[2, -1])],
         X3, opset=9),
    case("Slice-inputs-steps-opset13", [N("Slice", ["x", "s", "e", "a", "t"], ["y"])], X3,
         {"s": i64(-4, 0), "e": i64(BIG, 1), "a": i64(-1, 1), "t": i64(2, 1)}, opset=13),
    case("Slice-inputs-no-axes-opset13", [N("Slice", ["x", "s", "e"], ["y"])], X3,
         {"s": i64(0, 1), "e": i64(2, 2)}, opset=13),
    case("Slice-inputs-steps-without-axes", [N("Slice", ["x", "s", "e", "", "t"], ["y"])], X3,
         {"s": i64(1, 0, 1), "e": i64(3, 2, 5), "t": i64(1, 1, 3)}, opset=13),
    case("Shape", [N("Shape", ["x"], ["y"])], X4, types=(INT64,)),
    case("Shape-start-end", [N("Shape", ["x"], ["y"], start=1, end=-1)], X4, types=(INT64,)),
    case("Tile", [N("Tile", ["x", "r"], ["y"])], X2, {"r": i64(2, 3)}),
    case("Tile-3d", [N("Tile", ["x", "r"], ["y"])], X3, {"r": i64(1, 2, 1)}),
    case("Expand", [N("Expand", ["x", "s"], ["y"])], (3, 1, 4), {"s": i64(2, 1, 1, 4)}),
    case("Expand-from-a-shape", [N("Shape", ["x"], ["sh"]), N("Expand", ["B", "sh"], ["b"]),
                                 N("Add", ["x", "b"], ["y"])], X2, {"B": w(1, 4)}),
    case("Cast-to-int64-truncates", [N("Mul", ["x", "k"], ["m"]), N("Cast", ["m"], ["y"], to=INT64)],
         X2, {"k": f32(3.0)}, types=(INT64,)),
    case("Cast-int-to-float", [N("Shape", ["x"], ["s"]), N("Cast", ["s"], ["c"], to=FLOAT),
                               N("Mul", ["x", "c"], ["y"])], (3, 2, 3)),
    case("Cast-to-double", [N("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)], X2, types=(TensorProto.DOUBLE,)),
    case("Constant-value", [N("Constant", [], ["c"], value=numpy_helper.from_array(w(4), "c")),
                            N("Add", ["x", "c"], ["y"])], X2),
    case("Constant-value_float", [N("Constant", [], ["c"], value_float=2.5), N("Mul", ["x", "c"], ["y"])], X2,
         outputs=("y", "c")),
    case("Constant-value_floats", [N("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0, 4.0]),
                                   N("Mul", ["x", "c"], ["y"])], X2),
    case("Constant-value_ints", [N("Constant", [], ["c"], value_ints=[0, -1]), N("Reshape", ["x", "c"], ["y"])],
         X3),
    case("ConstantOfShape-value", [N("Shape", ["x"], ["s"]),
                                   N("ConstantOfShape", ["s"], ["c"], value=numpy_helper.from_array(f32(2.5))),
                                   N("Mul", ["x", "c"], ["y"])], X3),
    case("ConstantOfShape-default-zeros", [N("Shape", ["x"], ["s"]), N("ConstantOfShape", ["s"], ["c"]),
                                           N("Add", ["x", "c"], ["y"])], X3),
    # Integer division truncates toward zero: -5 / 2 = -2 (not floor's -3).
    case("Div-int64-truncates", [N("Shape", ["x"], ["s"]), N("Neg", ["s"], ["n"]), N("Div", ["n", "two"], ["y"])],
         (3, 5, 7), {"two": i64(2)}, types=(INT64,)),
    # The batch-independent reshape that exporters write: [x.shape[0], -1], the batch size taken
    # by Gather with a scalar index (a 0-D result).
    case("dynamic-reshape-opset13", [
        N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["b"], axis=0),
        N("Unsqueeze", ["b", "ax0"], ["b1"]), N("Concat", ["b1", "minus1"], ["shape"], axis=0),
        N("Reshape", ["x", "shape"], ["y"])],
        X4, {"zero": np.array(0, dtype=np.int64), "ax0": i64(0), "minus1": i64(-1)}, opset=13,
        shapes=(["batch", 192],)),
    case("dynamic-reshape-1d-index", [
        N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["b1"], axis=0),
        N("Concat", ["b1", "minus1"], ["shape"], axis=0), N("Reshape", ["x", "shape"], ["y"])],
        X4, {"zero": i64(0), "minus1": i64(-1)}, shapes=(["batch", 192],)),
    case("dynamic-reshape-opset11-halved", [
        N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["b"], axis=0),
        N("Unsqueeze", ["b"], ["b1"], axes=[0]), N("Div", ["s", "two"], ["half"]),
        N("Slice", ["half", "one", "two1"], ["c"]), N("Concat", ["b1", "c", "minus1"], ["shape"], axis=0),
        N("Reshape", ["x", "shape"], ["y"])],
        X4, {"zero": np.array(0, dtype=np.int64), "two": i64(2), "one": i64(1), "two1": i64(2),
             "minus1": i64(-1)}, opset=11, shapes=(["batch", 1, 192],)),
]

REDUCE = [
    case("ReduceMin-axes-attribute-opset13", [N("ReduceMin", ["x"], ["y"], axes=[1], keepdims=0)], X4, opset=13),
    case("ReduceMin-axes-input-opset18", [N("ReduceMin", ["x", "a"], ["y"])], X4, {"a": i64(-1, 1)}),
    case("ReduceLogSumExp-axes-attribute-opset11", [N("ReduceLogSumExp", ["x"], ["y"], axes=[-1])], X3,
         opset=11),
    case("ReduceLogSumExp-axes-input-opset18", [N("ReduceLogSumExp", ["x", "a"], ["y"], keepdims=0)], X4,
         {"a": i64(2, 3)}),
    case("ReduceMean-axes-attribute-opset11", [N("ReduceMean", ["x"], ["y"], axes=[1, -1], keepdims=0)],
         X4, opset=11),
    case("ReduceSum-axes-attribute-opset11", [N("ReduceSum", ["x"], ["y"], axes=[2])], X4, opset=11),
    case("ReduceMax-axes-attribute-opset13", [N("ReduceMax", ["x"], ["y"], axes=[-2, -1])], X4, opset=13),
    case("ReduceSum-axes-input-opset13", [N("ReduceSum", ["x", "a"], ["y"], keepdims=0)], X4, {"a": i64(1, 3)},
         opset=13),
    case("ReduceSum-no-axes-reduces-all-opset13", [N("ReduceSum", ["x"], ["y"])], X4, opset=13),
    case("ReduceSum-noop_with_empty_axes-opset13", [N("ReduceSum", ["x"], ["y"], noop_with_empty_axes=1)],
         X4, opset=13),
    case("ReduceMean-axes-input-opset18", [N("ReduceMean", ["x", "a"], ["y"])], X4, {"a": i64(2, 3)}),
    case("ReduceMax-axes-input-opset18", [N("ReduceMax", ["x", "a"], ["y"], keepdims=0)], X4, {"a": i64(-3)}),
    case("ReduceMean-empty-axes-input-reduces-all", [N("ReduceMean", ["x", "a"], ["y"], keepdims=0)], X3,
         {"a": np.zeros(0, dtype=np.int64)}),
]

GT = N("Greater", ["x", "B"], ["gt"])
LOGIC = [
    *[case(op, [N(op, ["x", "B"], ["y"])], X2, B4, types=(TensorProto.BOOL,))
      for op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual")],
    case("Equal-int64", [N("Mul", ["x", "k"], ["m"]), N("Cast", ["m"], ["i"], to=INT64),
                         N("Equal", ["i", "zero"], ["y"])], (3, 16), {"k": f32(2.0), "zero": i64(0)},
         types=(TensorProto.BOOL,)),
    # Ties: small integers.
    *[case(f"{op}-ties", [N("Mul", ["x", "k"], ["m"]), N("Cast", ["m"], ["i"], to=INT64),
                         N(op, ["i", "zero"], ["y"])], (3, 16), {"k": f32(2.0), "zero": i64(0)},
           types=(TensorProto.BOOL,)) for op in ("GreaterOrEqual", "LessOrEqual")],
    case("Not", [GT, N("Not", ["gt"], ["y"])], X2, B4, types=(TensorProto.BOOL,)),
    case("And-Or", [GT, N("Less", ["x", "C"], ["lt"]), N("And", ["gt", "lt"], ["y"]),
                    N("Or", ["gt", "lt"], ["z"])], X2, EW, outputs=("y", "z"),
         types=(TensorProto.BOOL, TensorProto.BOOL)),
    case("Where", [GT, N("Where", ["gt", "x", "C"], ["y"])], X2, EW),
    case("ArgMax-axis1", [N("ArgMax", ["x"], ["y"], axis=1, keepdims=0)], X3, types=(INT64,)),
    case("ArgMin-default-axis0-keepdims", [N("ArgMin", ["x"], ["y"])], X3, types=(INT64,)),
    case("Einsum", [N("Einsum", ["x", "W"], ["y"], equation="bij,jk->bik")], X3, {"W": w(5, 3)}, opset=12),
    case("Einsum-transposed-batch", [N("Einsum", ["x", "W"], ["y"], equation="bij,ki->bkj")], X3,
         {"W": w(4, 2)}, opset=12),
    # Split: every output computed and usable.
    case("Split-attribute-opset11", [N("Split", ["x"], ["a", "b"], axis=2, split=[2, 3]),
                                     N("ReduceSum", ["b"], ["sb"], axes=[2]), N("Add", ["a", "sb"], ["y"])],
         X3, opset=11),
    case("Split-input-opset13", [N("Split", ["x", "s"], ["y", "z"], axis=-1)], X3, {"s": i64(4, 1)},
         outputs=("y", "z"), opset=13),
    case("Split-equal-opset13", [N("Split", ["x"], ["y", "z"], axis=1)], (3, 4, 5), outputs=("y", "z"),
         opset=13),
    case("Split-num_outputs-even-opset18", [N("Split", ["x"], ["y", "z"], axis=1, num_outputs=2)],
         (3, 4, 5), outputs=("y", "z")),
    case("Split-num_outputs-uneven-opset18", [N("Split", ["x"], ["y", "z", "t"], axis=2, num_outputs=3)],
         (3, 2, 7), outputs=("y", "z", "t")),
]

MULTI = [
    case("two-outputs", [N("Relu", ["x"], ["y"]), N("Sigmoid", ["x"], ["z"]), N("Add", ["y", "z"], ["s"])],
         X2, outputs=("y", "s")),
    case("output-is-an-initializer-passed-through", [N("Identity", ["B"], ["y"]), N("Mul", ["x", "B"], ["z"])],
         X2, B4, outputs=("y", "z")),
]


TABLE = ELEMENTWISE + SOFTMAX + DENSE + PAD + CONV + POOL + SHAPES + REDUCE + LOGIC + MULTI


@pytest.mark.parametrize("c", TABLE)
def test_outputs_equal_onnx_runtimes(c: Case) -> None:
    model = build(c, c.check)
    x = inputs(c.shape, c.positive)
    want, got = run_ort(model, x), run_graph(model, x)
    assert len(got) == len(want) == len(c.outputs)
    for name, g, e in zip(c.outputs, got, want):
        assert_close(g, e, what=name)


def test_the_table_covers_every_operator_of_the_translation() -> None:
    used = {n.op_type for p in TABLE for n in p.values[0].nodes}
    assert set(SUPPORTED) <= used, sorted(set(SUPPORTED) - used)


def test_a_different_batch_size_than_any_seen() -> None:
    """Nothing in the translation is tied to one batch size: the dynamic reshape on 1 and 7 rows."""
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["b"], axis=0),
             N("Concat", ["b", "minus1"], ["shape"], axis=0), N("Reshape", ["x", "shape"], ["r"]),
             N("MatMul", ["r", "W"], ["y"])]
    model = model_of(nodes, X4, {"zero": i64(0), "minus1": i64(-1), "W": w(192, 3)})
    graph = OnnxGraph(model)
    for rows in (1, 7):
        x = inputs((rows, 3, 8, 8), seed=rows)
        with torch.no_grad():
            (got,) = graph(torch.as_tensor(x))
        assert_close(got.numpy(), run_ort(model, x)[0])


# ----------------------------------------------------- graphs exported from torch: gradients


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.conv(h))
        return self.head(self.pool(h).flatten(1))


def _cnn() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():  # running statistics far from 0 and 1, so that they matter
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
        bn.running_var.copy_(torch.tensor([0.2, 3.0, 1.5, 0.7]))
        bn.weight.copy_(torch.tensor([1.5, -0.5, 0.8, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.4]))
    return net


class ViewByBatch(nn.Module):
    """``h.reshape(h.shape[0], -1)``: the legacy exporter writes Shape -> Gather (scalar index) ->
    Unsqueeze -> Concat -> Reshape for it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.head = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.head(h.reshape(h.shape[0], -1))


MODULES: dict[str, tuple[Any, tuple[int, ...]]] = {
    "mlp-logsoftmax": (lambda: nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5),
                                             nn.LogSoftmax(-1)), (6,)),
    "cnn-batchnorm-pools": (_cnn, (2, 8, 8)),
    "residual-adaptive-pool": (Residual, (3, 6, 6)),
    "layernorm-gelu": (lambda: nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 4)),
                       (6,)),
    "cnn-view-by-batch": (ViewByBatch, (2, 8, 8)),
}


def _export(module: nn.Module, example: torch.Tensor, path: Path, dynamo: bool) -> None:
    if dynamo:
        torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False, opset_version=18,
                          input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    else:  # the legacy TorchScript exporter, without folding (BatchNormalization stays a node)
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False)


@pytest.fixture(scope="module", params=[(name, exporter) for name in MODULES for exporter in ("dynamo", "legacy")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[nn.Module, Path, tuple[int, ...]]:
    name, exporter = request.param
    make, features = MODULES[name]
    torch.manual_seed(0)
    module = make().eval()
    path = tmp_path_factory.mktemp("exported") / f"{name}.onnx"
    _export(module, torch.randn(2, *features), path, exporter == "dynamo")
    return module, path, features


def _loss(outputs: tuple[torch.Tensor, ...] | torch.Tensor) -> torch.Tensor:
    out = outputs[0] if isinstance(outputs, tuple) else outputs
    weights = torch.linspace(-1.0, 2.0, out.shape[-1])
    return out.logsumexp(-1).sum() + (out * weights).sum()


def test_exported_graph_gives_the_modules_outputs_and_onnx_runtimes(
        exported: tuple[nn.Module, Path, tuple[int, ...]]) -> None:
    module, path, features = exported
    graph = translate(path)
    x = inputs((5, *features), seed=3)
    with torch.no_grad():
        want = module(torch.as_tensor(x)).numpy()
        (got,) = graph(torch.as_tensor(x))
    assert_close(got.numpy(), want, what="torch module")
    (ort_out,) = run_ort(onnx.load(str(path)), x)
    assert_close(got.numpy(), ort_out, what="ONNX Runtime")


def test_gradients_equal_the_modules(exported: tuple[nn.Module, Path, tuple[int, ...]]) -> None:
    module, path, features = exported
    graph = translate(path)
    x = torch.as_tensor(inputs((5, *features), seed=4))
    xm, xg = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(_loss(module(xm)), xm)
    (got,) = torch.autograd.grad(_loss(graph(xg)), xg)
    assert float(want.abs().max()) > 1e-3  # a gradient worth comparing
    assert_close(got.numpy(), want.numpy(), what="input gradient")


def test_initializers_are_fixed_buffers_that_move_with_the_module(
        exported: tuple[nn.Module, Path, tuple[int, ...]]) -> None:
    module, path, features = exported
    graph = translate(path)
    model = onnx.load(str(path))
    assert list(graph.parameters()) == []
    buffers = list(graph.buffers())
    constants = sum(n.op_type == "Constant" for n in model.graph.node)  # buffers too, to move with it
    assert len(buffers) == len(model.graph.initializer) + constants > 0
    assert not any(b.requires_grad for b in buffers)
    # Moved to double precision (float32 buffers would not mix with a float64 input), the graph
    # computes the module's outputs in double precision, up to the file's float32 constants.
    graph64, module64 = graph.to(torch.float64), module.double()
    assert all(b.dtype == torch.float64 for b in graph64.buffers() if b.is_floating_point())
    x = torch.as_tensor(inputs((3, *features), seed=5)).double()
    with torch.no_grad():
        (got,) = graph64(x)
        want = module64(x)
    module.float()
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6 * max(1.0, float(want.abs().max())))
    assert all(b.device.type == "meta" for b in graph.to("meta").buffers())


def test_gradients_through_a_hand_built_graph_equal_torchs() -> None:
    """Padding by -inf, asymmetric conv pads, the dynamic reshape: the gradient of the translation
    is the gradient of the same computation written in torch."""
    W, b, V = w(4, 3, 3, 3), w(4), w(4 * 5 * 5, 3)
    nodes = [N("Conv", ["x", "W", "b"], ["c"], pads=[0, 1, 2, 1]),
             N("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[2, 2, 2, 2]),
             N("Shape", ["p"], ["s"]), N("Gather", ["s", "zero"], ["n"], axis=0),
             N("Concat", ["n", "minus1"], ["shape"], axis=0), N("Reshape", ["p", "shape"], ["r"]),
             N("Gemm", ["r", "V"], ["y"], alpha=0.5)]
    model = model_of(nodes, X4, {"W": W, "b": b, "V": V, "zero": i64(0), "minus1": i64(-1)})

    def reference(x: torch.Tensor) -> torch.Tensor:
        c = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [1, 1, 0, 2]), torch.as_tensor(W),
                                       torch.as_tensor(b))
        p = torch.nn.functional.max_pool2d(torch.nn.functional.pad(c, [2, 2, 2, 2], value=-torch.inf), 3, 2)
        return 0.5 * p.reshape(len(x), -1) @ torch.as_tensor(V)

    x = inputs(X4, seed=6)
    assert_close(reference(torch.as_tensor(x)).detach().numpy(), run_ort(model, x)[0], what="reference")
    xr, xg = torch.as_tensor(x).requires_grad_(True), torch.as_tensor(x).requires_grad_(True)
    (want,) = torch.autograd.grad(_loss(reference(xr)), xr)
    (got,) = torch.autograd.grad(_loss(OnnxGraph(model)(xg)), xg)
    assert_close(got.numpy(), want.numpy(), what="input gradient")


def test_gather_with_a_scalar_index_of_a_vector_gives_a_scalar() -> None:
    # A scalar index into a 1-D tensor leaves a 0-D result: how exporters take the batch size
    # (x.shape[0]) for a reshape.
    model = model_of([N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["y"], axis=0)], X2,
                     {"zero": np.array(0, dtype=np.int64)}, types=(INT64,))
    x = inputs(X2)
    (want,) = run_ort(model, x)
    assert want.shape == () and int(want) == 3
    assert_close(run_graph(model, x)[0], want)


def test_max_pool_padded_by_hand_drops_windows_that_start_in_the_end_padding() -> None:
    # Pads that F.max_pool cannot take (asymmetric, or more than half the kernel) are applied
    # with F.pad(-inf) first; with ceil_mode a last window lying wholly in the end padding must
    # then be dropped, as ONNX Runtime does (and PyTorch for its own padding): here 3 outputs,
    # not 4. (ONNX's shape inference says 4; the translation is checked against ONNX Runtime.)
    model = model_of([N("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[0, 2], ceil_mode=1)],
                     (2, 1, 6), check=False)
    x = inputs((2, 1, 6))
    (want,) = run_ort(model, x)
    assert want.shape == (2, 1, 3)
    np.testing.assert_array_equal(want, np.stack([x[..., 0:3].max(-1), x[..., 2:5].max(-1),
                                                  x[..., 4:6].max(-1)], axis=-1))
    assert_close(run_graph(model, x)[0], want)


def test_pow_keeps_the_type_of_its_base() -> None:
    # ONNX's Pow has the type of its base; torch.pow promotes an int64 base with a float
    # exponent to float32.
    model = model_of([N("Shape", ["x"], ["s"]), N("Pow", ["s", "p"], ["y"])], X3, {"p": f32(2.0)},
                     types=(INT64,))
    x = inputs(X3)
    (want,) = run_ort(model, x)
    np.testing.assert_array_equal(want, np.array([9, 4, 25]))
    assert_close(run_graph(model, x)[0], want)


def test_tensors_made_by_the_graph_follow_its_device() -> None:
    # The tensors that Shape and Constant make are on the graph's device, so on a GPU the shape
    # arithmetic and the constants meet the input on its device. The "meta" device stands in for
    # CUDA here (no GPU on the test machines; it cannot read values, so no Reshape by a tensor).
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["b"], axis=0),
             N("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
             N("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]), N("Mul", ["x", "c"], ["xc"]),
             N("Mul", ["xc", "bf"], ["y"])]
    model = model_of(nodes, (2, 3), {"zero": i64(0)})
    x = inputs((2, 3))
    assert_close(run_graph(model, x)[0], run_ort(model, x)[0])
    graph = OnnxGraph(model).to("meta")
    (y,) = graph(torch.empty(2, 3, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 3)


# --------------------------------------------------------------------------------- refusals


def test_unknown_operators_are_refused_by_name() -> None:
    nodes = [N("TopK", ["x", "k"], ["v", "i"], axis=-1), N("NonZero", ["x"], ["nz"]), N("Relu", ["v"], ["y"])]
    model = model_of(nodes, X2, {"k": i64(2)})
    with pytest.raises(Unsupported, match=r"NonZero, TopK"):
        OnnxGraph(model)


def test_another_domains_operator_is_refused_by_name(tmp_path: Path) -> None:
    model = model_of([N("FusedMatMul", ["x", "W"], ["y"], domain="com.microsoft")], X2, {"W": w(4, 5)},
                     check=False)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert len(run_ort(model, inputs(X2))[0]) == 3  # a graph ONNX Runtime runs
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(Unsupported, match=r"com\.microsoft\.FusedMatMul"):
        translate(tmp_path / "foreign.onnx")


def test_control_flow_with_subgraphs_is_refused() -> None:
    branch = [helper.make_graph([N("Relu", ["x"], [o])], f"b{o}", [],
                                [helper.make_tensor_value_info(o, FLOAT, None)]) for o in ("t", "e")]
    nodes = [N("ReduceMax", ["x"], ["m"], keepdims=0), N("Greater", ["m", "zero"], ["cond"]),
             N("If", ["cond"], ["y"], then_branch=branch[0], else_branch=branch[1])]
    model = model_of(nodes, X2, {"zero": f32(0.0).reshape(())})
    with pytest.raises(Unsupported, match=r"translation here: If$"):
        OnnxGraph(model)


def test_a_known_operator_with_a_graph_attribute_is_refused() -> None:
    sub = helper.make_graph([], "g", [], [])
    model = model_of([N("Relu", ["x"], ["y"], body=sub)], X2, check=False)
    with pytest.raises(Unsupported, match=r"subgraphs \(Relu\)"):
        OnnxGraph(model)


def test_two_graph_inputs_are_refused() -> None:
    graph = helper.make_graph(
        [N("Add", ["x", "z"], ["y"])], "two",
        [helper.make_tensor_value_info("x", FLOAT, ["batch", 4]), helper.make_tensor_value_info("z", FLOAT, [4])],
        [helper.make_tensor_value_info("y", FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    with pytest.raises(Unsupported, match=r"one graph input expected, got \['x', 'z'\]"):
        OnnxGraph(model)


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    """Older exporters list the initializers among the graph's inputs too: still one input."""
    model = model_of([N("MatMul", ["x", "W"], ["y"])], X2, {"W": w(4, 5)})
    model.graph.input.append(helper.make_tensor_value_info("W", FLOAT, [4, 5]))
    x = inputs(X2)
    assert_close(run_graph(model, x)[0], run_ort(model, x)[0])


@pytest.mark.parametrize("mask_use", ["node", "graph output"])
def test_a_used_dropout_mask_is_refused(mask_use: str) -> None:
    nodes = [N("Dropout", ["x"], ["d", "mask"])]
    if mask_use == "node":
        nodes += [N("Cast", ["mask"], ["m"], to=FLOAT), N("Mul", ["d", "m"], ["y"])]
        outputs, types = ("y",), (FLOAT,)
    else:
        nodes += [N("Identity", ["d"], ["y"])]
        outputs, types = ("y", "mask"), (FLOAT, TensorProto.BOOL)
    model = model_of(nodes, X2, outputs=outputs, types=types)
    with pytest.raises(Unsupported, match=r"second outputs of Dropout"):
        OnnxGraph(model)


def test_unsupported_variants_are_refused_when_run() -> None:
    negative_step = model_of([N("Slice", ["x", "s", "e", "a", "t"], ["y"])], X3,
                             {"s": i64(-1), "e": i64(-BIG), "a": i64(2), "t": i64(-1)}, opset=13)
    with pytest.raises(Unsupported, match="negative step"):
        run_graph(negative_step, inputs(X3))
    training_bn = model_of([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                              training_mode=1)], X4,
                           {"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3))}, opset=15)
    with pytest.raises(Unsupported, match="training mode"):
        run_graph(training_bn, inputs(X4))
    lopsided_average = model_of([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[0, 0, 1, 1])], X4)
    with pytest.raises(Unsupported, match="AveragePool with asymmetric pads"):
        run_graph(lopsided_average, inputs(X4))


# ------------------------------------------------------------------------- largest_difference


def _scaled(factor: float) -> onnx.ModelProto:
    """Two outputs: x * factor and tanh(x)."""
    return model_of([N("Mul", ["x", "k"], ["y"]), N("Tanh", ["x"], ["z"])], X3, {"k": f32(factor)},
                    outputs=("y", "z"))


def test_largest_difference_is_zero_against_onnx_runtime() -> None:
    model = _scaled(10.0)
    x = inputs(X3, seed=7)
    assert largest_difference(OnnxGraph(model), x, run_ort(model, x)) <= 1e-6


@pytest.mark.parametrize("factor", [0.1, 10.0])
@pytest.mark.parametrize("output", [0, 1])
def test_largest_difference_is_the_perturbation_relative_to_the_expected_size(factor: float,
                                                                             output: int) -> None:
    model = _scaled(factor)
    x = inputs(X3, seed=8)
    expected = run_ort(model, x)
    delta = 0.375
    perturbed = [e.copy() for e in expected]
    perturbed[output][1, 1, 2] += delta
    scale = max(1.0, float(np.abs(perturbed[output]).max()))
    got = largest_difference(OnnxGraph(model), x, perturbed)
    assert got == pytest.approx(delta / scale, rel=1e-5, abs=1e-6)
    if factor == 10.0 and output == 0:
        assert scale > 10.0  # the division by the expected size did matter


def test_largest_difference_detects_another_models_outputs() -> None:
    x = inputs(X3, seed=9)
    relu = model_of([N("Relu", ["x"], ["y"])], X3)
    sigmoid = model_of([N("Sigmoid", ["x"], ["y"])], X3)
    want = float(np.abs(np.maximum(x, 0) - 1 / (1 + np.exp(-x.astype(np.float64)))).max())
    assert largest_difference(OnnxGraph(relu), x, run_ort(sigmoid, x)) == pytest.approx(want, rel=1e-5)


def test_largest_difference_is_not_zero_when_the_translation_gives_nan() -> None:
    # Python's max(0.0, nan) is 0.0: a translation that gives NaN where the expected outputs are
    # finite must not measure as a perfect match (OnnxMember.check_gradients refuses any
    # difference that is not <= its threshold, NaN included).
    model = model_of([N("Log", ["x"], ["y"])], X2)
    x = -inputs(X2, positive=True)  # log of negatives: NaN in torch
    expected = [np.zeros(X2, dtype=np.float32)]
    worst = largest_difference(OnnxGraph(model), x, expected)
    assert not worst <= 1e-3, worst
