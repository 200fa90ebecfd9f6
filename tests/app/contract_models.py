"""Small ONNX models that follow the contract of contract/model.py, built without torch.

A random-feature body (tanh of a fixed projection of the normalised input) feeds M linear
heads, each a ridge regression fitted on its own bootstrap sample and feature subset, so the
heads agree on data like the training set and drift apart far from it: model uncertainty is
small in distribution and large out of distribution, which the OOD and drift tests need.
Every derived output is computed inside the graph with plain ONNX ops (opset 18), and the
metadata carries an OOD calibration and drift references computed from a calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from contract.model import INPUT_NAME, UNCERTAINTY_COMPONENTS, ModelMetadata, head_names
from contract.drift import DriftReference
from contract.ood import OodCalibration

OPSET = 18
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BuiltModel:
    """A serialised model and what the tests need to know about it."""

    data: bytes
    meta: ModelMetadata


class _Graph:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        self._n += 1
        name = out or f"t{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=f"n{self._n}", **attrs))
        return name


def _ridge(feats: FloatArray, targets: FloatArray, lam: float) -> tuple[FloatArray, FloatArray]:
    """Least squares with an L2 penalty and an unpenalised bias: weights [H, K], bias [K]."""
    mu_f, mu_t = feats.mean(0), targets.mean(0)
    f, t = feats - mu_f, targets - mu_t
    w = np.linalg.solve(f.T @ f + lam * np.eye(f.shape[1]), f.T @ t)
    return w.astype(np.float32), (mu_t - mu_f @ w).astype(np.float32)


def _body(
    g: _Graph, x_mean: FloatArray, x_scale: FloatArray, w1: FloatArray, b1: FloatArray, nested: bool = False
) -> str:
    x = g.op("Flatten", INPUT_NAME, axis=1) if nested else INPUT_NAME  # [B, F]
    z = g.op("Div", g.op("Sub", x, g.const(x_mean)), g.const(x_scale))  # [B, F]
    return g.op("Tanh", g.op("Add", g.op("MatMul", z, g.const(w1)), g.const(b1)))  # [B, H]


def _features(x: FloatArray, x_mean: FloatArray, x_scale: FloatArray, w1: FloatArray, b1: FloatArray) -> FloatArray:
    return np.tanh(((x - x_mean) / x_scale) @ w1 + b1).astype(np.float32)


def _finish(
    g: _Graph, feature_shape: tuple[int, ...], outputs: dict[str, list[int | str]]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        "contract_model",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *feature_shape])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _attach(model: onnx.ModelProto, meta: ModelMetadata) -> bytes:
    helper.set_model_props(model, meta.to_props())
    return model.SerializeToString()


def _scores(model: onnx.ModelProto, x: FloatArray) -> dict[str, FloatArray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [f"{c}_uncertainty" for c in UNCERTAINTY_COMPONENTS]
    return dict(zip(names, sess.run(names, {INPUT_NAME: x})))


def _calibration(
    model: onnx.ModelProto, calib_x: FloatArray, alpha: float
) -> tuple[OodCalibration, dict[str, DriftReference]]:
    scores = _scores(model, calib_x)
    ood = OodCalibration.from_scores(scores["model_uncertainty"], alpha=alpha)
    drift = {c: DriftReference.from_scores(scores[f"{c}_uncertainty"]) for c in UNCERTAINTY_COMPONENTS}
    return ood, drift


def build_classifier(
    train_x: npt.ArrayLike,
    train_y: npt.ArrayLike,
    calib_x: npt.ArrayLike,
    *,
    num_heads: int = 5,
    hidden: int = 96,
    logit_scale: float = 6.0,
    seed: int = 0,
    alpha: float = 0.05,
    poison: bool = False,
    feature_shape: tuple[int, ...] | None = None,
    nan_above: float | None = None,
    fail_above: float | None = None,
) -> BuiltModel:
    """A classifier over features [F] (raw values; normalisation in the graph).

    ``feature_shape`` declares the input as [B, *feature_shape] (flattened in the graph;
    prod must be F), e.g. (8, 8) for digits. ``poison`` multiplies the logits by NaN:
    structurally valid, fails any warm-up. ``nan_above``: a row holding a value whose
    magnitude exceeds it gets NaN logits (every output of that row non-finite, the other rows
    untouched), as an input far beyond the training range overflows a real network.
    ``fail_above``: ONNX Runtime raises (an out-of-bounds Gather) for a whole call when any
    value of the batch exceeds it, as a kernel that rejects certain values does.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(train_x, dtype=np.float32)
    y = np.asarray(train_y, dtype=np.int64)
    n, f = x.shape
    classes = int(y.max()) + 1
    x_mean = x.mean(0).astype(np.float32)
    x_scale = np.full(f, x.std() + 1e-6, dtype=np.float32)
    w1 = (rng.normal(size=(f, hidden)) / np.sqrt(f) * 1.5).astype(np.float32)
    b1 = rng.normal(scale=0.1, size=hidden).astype(np.float32)
    feats = _features(x, x_mean, x_scale, w1, b1)
    onehot = np.eye(classes, dtype=np.float32)[y] * 2.0 - 1.0

    shape = feature_shape or (f,)
    g = _Graph()
    body = _body(g, x_mean, x_scale, w1, b1, nested=len(shape) > 1)
    flat_x = g.op("Flatten", INPUT_NAME, axis=1)  # [B, F]
    if fail_above is not None:
        # index 0 normally, 7 (out of bounds for a 1-element tensor) when any value is above.
        over = g.op("Cast", g.op("Greater", g.op("ReduceMax", flat_x, keepdims=0), g.const(fail_above)),
                    to=TensorProto.INT64)
        picked = g.op("Gather", g.const([0.0]), g.op("Mul", over, g.const(7, np.int64)), axis=0)
        body = g.op("Add", body, picked)
    row_nan = None
    if nan_above is not None:
        big = g.op("Greater", g.op("ReduceMax", g.op("Abs", flat_x), g.const([1], np.int64), keepdims=1),
                   g.const(nan_above))  # [B, 1]
        row_nan = g.op("Where", big, g.const(np.nan), g.const(0.0))  # [B, 1]
    heads = []
    for m in range(num_heads):
        rows = rng.integers(0, n, size=n)  # bootstrap sample
        mask = (rng.random(hidden) < 0.6).astype(np.float32)  # feature subset
        w, b = _ridge(feats[rows] * mask, onehot[rows], lam=1.0)
        w = w * mask[:, None] * logit_scale
        scale = np.float32(np.nan) if poison else np.float32(1.0)
        logits = g.op("Add", g.op("MatMul", body, g.const(w)), g.const(b * logit_scale))
        if row_nan is not None:
            logits = g.op("Add", logits, row_nan)
        heads.append(g.op("Mul", logits, g.const(scale), out=f"head_{m}"))  # [B, C]

    axis1 = g.const([1], np.int64)
    axis2 = g.const([2], np.int64)
    stacked = g.op("Concat", *[g.op("Unsqueeze", h, axis1) for h in heads], axis=1)  # [B, M, C]
    logp = g.op("LogSoftmax", stacked, axis=2)  # [B, M, C]
    p = g.op("Exp", logp)
    g.op("ReduceMean", p, axis1, keepdims=0, out="mean_probs")  # [B, C]
    # log of the mean probability without a log(0): logsumexp over heads minus log M.
    log_mean = g.op(
        "Sub", g.op("ReduceLogSumExp", logp, axis1, keepdims=1), g.const(np.log(num_heads))
    )  # [B, 1, C]
    neg_total = g.op("ReduceSum", g.op("Mul", g.op("Exp", log_mean), log_mean), axis2, keepdims=0)
    g.op("Neg", g.op("Squeeze", neg_total, axis1), out="total_uncertainty")  # [B]
    head_entropy = g.op("Neg", g.op("ReduceSum", g.op("Mul", p, logp), axis2, keepdims=0))  # [B, M]
    g.op("ReduceMean", head_entropy, axis1, keepdims=0, out="data_uncertainty")
    kl = g.op("ReduceSum", g.op("Mul", p, g.op("Sub", logp, log_mean)), axis2, keepdims=0)
    kl = g.op("Relu", kl, out="head_disagreement")  # [B, M]
    g.op("Relu", g.op("ReduceMean", kl, axis1, keepdims=0), out="model_uncertainty")
    head_arg = g.op("ArgMax", stacked, axis=2, keepdims=0)  # [B, M]
    mean_arg = g.op("ArgMax", "mean_probs", axis=1, keepdims=1)  # [B, 1]
    differs = g.op("Cast", g.op("Not", g.op("Equal", head_arg, mean_arg)), to=TensorProto.FLOAT)
    g.op("ReduceMean", differs, axis1, keepdims=0, out="disagreement_rate")

    meta = ModelMetadata(
        task="classification",
        num_heads=num_heads,
        feature_shape=shape,
        class_labels=tuple(str(c) for c in range(classes)),
        preprocessing={"input": "raw features; standardised inside the graph"},
        training={"source": "tests/app/contract_models.py", "seed": seed},
    )
    outputs = {n: list(s) for n, s in _shapes(meta).items()}
    model = _finish(g, shape, outputs)
    if poison:
        return BuiltModel(_attach(model, meta), meta)
    calib = np.asarray(calib_x, dtype=np.float32).reshape(-1, *shape)
    ood, drift = _calibration(model, calib, alpha)
    meta = ModelMetadata(**{**meta.__dict__, "ood": ood, "drift": drift})
    return BuiltModel(_attach(model, meta), meta)


def build_regressor(
    train_x: npt.ArrayLike,
    train_y: npt.ArrayLike,
    calib_x: npt.ArrayLike,
    *,
    num_heads: int = 4,
    hidden: int = 64,
    seed: int = 0,
    alpha: float = 0.05,
) -> BuiltModel:
    """A Gaussian regressor over flat features [F] with targets [N, D]; heads [B, 2, D]."""
    rng = np.random.default_rng(seed)
    x = np.asarray(train_x, dtype=np.float32)
    y = np.asarray(train_y, dtype=np.float32).reshape(len(x), -1)
    n, f = x.shape
    d = y.shape[1]
    x_mean = x.mean(0).astype(np.float32)
    x_scale = (x.std(0) + 1e-6).astype(np.float32)
    w1 = (rng.normal(size=(f, hidden)) / np.sqrt(f) * 1.5).astype(np.float32)
    b1 = rng.normal(scale=0.1, size=hidden).astype(np.float32)
    feats = _features(x, x_mean, x_scale, w1, b1)

    g = _Graph()
    body = _body(g, x_mean, x_scale, w1, b1)
    axis1 = g.const([1], np.int64)
    heads = []
    for m in range(num_heads):
        rows = rng.integers(0, n, size=n)
        mask = (rng.random(hidden) < 0.6).astype(np.float32)
        w, b = _ridge(feats[rows] * mask, y[rows], lam=1.0)
        resid = y[rows] - (feats[rows] * mask) @ w - b
        mu = g.op("Add", g.op("MatMul", body, g.const(w * mask[:, None])), g.const(b))  # [B, D]
        # A variance that grows with the distance from the data in feature space.
        var_scale = (resid**2).mean(0).astype(np.float32)  # [D]
        spread = g.op("ReduceMean", g.op("Mul", body, body), axis1, keepdims=1)  # [B, 1]
        var = g.op("Mul", g.op("Add", spread, g.const(0.5)), g.const(var_scale))  # [B, D]
        heads.append(
            g.op("Concat", g.op("Unsqueeze", mu, axis1), g.op("Unsqueeze", var, axis1), axis=1,
                 out=f"head_{m}")
        )  # [B, 2, D]
    stacked = g.op("Concat", *[g.op("Unsqueeze", h, axis1) for h in heads], axis=1)  # [B, M, 2, D]
    mus = g.op("Gather", stacked, g.const(0, np.int64), axis=2)  # [B, M, D]
    variances = g.op("Gather", stacked, g.const(1, np.int64), axis=2)  # [B, M, D]
    mean = g.op("ReduceMean", mus, axis1, keepdims=0, out="mean")  # [B, D]
    dev2 = g.op("Pow", g.op("Sub", mus, g.op("Unsqueeze", mean, axis1)), g.const(2.0))  # [B, M, D]
    data_d = g.op("ReduceMean", variances, axis1, keepdims=0)  # [B, D]
    model_d = g.op("ReduceMean", dev2, axis1, keepdims=0)
    g.op("Add", data_d, model_d, out="variance")
    data = g.op("ReduceSum", data_d, axis1, keepdims=0, out="data_uncertainty")  # [B]
    model_u = g.op("ReduceSum", model_d, axis1, keepdims=0, out="model_uncertainty")
    g.op("Add", data, model_u, out="total_uncertainty")
    g.op("ReduceSum", dev2, g.const([2], np.int64), keepdims=0, out="head_disagreement")  # [B, M]

    meta = ModelMetadata(
        task="regression",
        num_heads=num_heads,
        feature_shape=(f,),
        output_dim=d,
        training={"source": "tests/app/contract_models.py", "seed": seed},
    )
    model = _finish(g, (f,), {n: list(s) for n, s in _shapes(meta).items()})
    ood, drift = _calibration(model, np.asarray(calib_x, dtype=np.float32), alpha)
    meta = ModelMetadata(**{**meta.__dict__, "ood": ood, "drift": drift})
    return BuiltModel(_attach(model, meta), meta)


def _shapes(meta: ModelMetadata) -> dict[str, list[int | str]]:
    from contract.model import expected_output_shapes

    shapes = expected_output_shapes(meta)
    return {n: shapes[n] for n in meta.output_names}


def digits_split(seed: int = 0) -> dict[str, FloatArray | npt.NDArray[np.int64]]:
    """sklearn's digits [1797, 64] split into train / calibration / test (shuffled)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x = data.data[order].astype(np.float32)
    y = data.target[order].astype(np.int64)
    return {
        "train_x": x[:900], "train_y": y[:900],
        "calib_x": x[900:1300], "calib_y": y[900:1300],
        "test_x": x[1300:], "test_y": y[1300:],
    }


def far_inputs(n: int, feature_dim: int = 64, seed: int = 1) -> FloatArray:
    """Inputs far from the digits: uniform noise over the pixel range."""
    return np.random.default_rng(seed).uniform(0.0, 16.0, size=(n, feature_dim)).astype(np.float32)


def write_version(root: str | object, name: str, version: int, data: bytes) -> None:
    """Write ``root/name/version/model.onnx`` through a temporary file and a rename."""
    import os
    from pathlib import Path

    folder = Path(str(root)) / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.onnx.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / "model.onnx")


__all__ = [
    "BuiltModel", "build_classifier", "build_regressor", "digits_split", "far_inputs",
    "head_names", "write_version",
]
