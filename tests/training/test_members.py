"""An ensemble trained elsewhere, given as ONNX member files: teacher outputs computed on the
whole transfer set, the ensemble evaluated beside the students, bad files refused with a
message. PyTorch member files: test_member_files_torch.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from training.config import RunConfig
from training.data import DataError
from training.datasets import load_dataset
from training.members import load_member_files as load_onnx_members
from training.checkpoints import Checkpoints
from training.device import Runtime
from training.pipeline import run_pipeline
from training.teachers import teachers


def linear_member(path: Path, W: np.ndarray, b: np.ndarray, softmax: bool = False) -> Path:
    """logits = x W + b as an ONNX file, with a dynamic batch (what any framework exports)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "member",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", W.shape[0]])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", W.shape[1]])],
        initializer=[numpy_helper.from_array(W.astype(np.float32), "W"),
                     numpy_helper.from_array(b.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _members(tmp_path: Path, data, count: int = 3, softmax: bool = False) -> list[str]:  # noqa: ANN001
    """Least-squares linear classifiers on the training rows, each on a bootstrap sample."""
    rng = np.random.default_rng(0)
    X, y = data.train.X, data.train.y
    onehot = np.eye(data.num_classes)[y]
    paths = []
    for m in range(count):
        rows = rng.integers(0, len(X), len(X))
        A = np.c_[X[rows], np.ones(len(rows))]
        coef, *_ = np.linalg.lstsq(A, 8.0 * (onehot[rows] - 0.5), rcond=None)
        paths.append(str(linear_member(tmp_path / f"m{m}.onnx", coef[:-1], coef[-1], softmax)))
    return paths


def test_teacher_outputs_are_the_files_outputs_on_the_whole_transfer_set(
        tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    paths = _members(tmp_path, data)
    config = replace(tiny_config, ensemble=replace(tiny_config.ensemble, models=tuple(paths)),
                     distill=replace(tiny_config.distill, transfer=replace(
                         tiny_config.distill.transfer, uniform_fraction=0.5, perturb_steps=2)))
    transfer = teachers(data, config.model, config.ensemble, config.distill, Runtime(torch.device("cpu")),
                        Checkpoints.of_run(config)).transfer
    # The training rows, the noisy copies and the uniform inputs: all labelled by the files.
    assert len(transfer) == 2 * len(data.train) + round(0.5 * len(data.train))
    for m, path in enumerate(paths):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (want,) = session.run(None, {"x": transfer.X})
        np.testing.assert_allclose(transfer.teacher[:, m], want, rtol=1e-6, atol=1e-6)
    assert transfer.summary["source"] == "member ONNX files"
    # The ascent ran through the members' graphs translated to torch: the copies moved off
    # the noisy copies a run without it makes (the same draws otherwise).
    assert "ignored_settings" not in transfer.summary
    plain = teachers(data, config.model, config.ensemble, replace(config.distill, transfer=replace(
        config.distill.transfer, perturb_steps=0)), Runtime(torch.device("cpu")), Checkpoints.of_run(config)).transfer
    n = len(data.train)
    np.testing.assert_array_equal(transfer.X[:n], plain.X[:n])
    assert not np.allclose(transfer.X[n:2 * n], plain.X[n:2 * n])


def test_probability_outputs_are_read_as_log_probabilities(tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    logits = load_onnx_members(tuple(_members(tmp_path, data, 2)), data, 2, "logits")
    (tmp_path / "softmax").mkdir()
    probs = load_onnx_members(tuple(_members(tmp_path / "softmax", data, 2, softmax=True)),
                              data, 2, "probabilities")
    x = torch.as_tensor(data.test.X[:20])
    np.testing.assert_allclose(torch.softmax(probs(x), -1).numpy(), torch.softmax(logits(x), -1).numpy(),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(DataError, match=r"member outputs are not probabilities"):
        load_onnx_members(tuple(_members(tmp_path, data, 2)), data, 2, "probabilities")


def test_bad_member_files_are_refused(tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    good = _members(tmp_path, data, 2)
    with pytest.raises(DataError, match=r"2 member files given, the config says ensemble.members = 3"):
        load_onnx_members(tuple(good), data, 3, "logits")
    with pytest.raises(DataError, match=r"member file\(s\) .*nope.onnx do not exist"):
        load_onnx_members((good[0], str(tmp_path / "nope.onnx")), data, 2, "logits")
    narrow = str(linear_member(tmp_path / "narrow.onnx", np.zeros((10, 10)), np.zeros(10)))
    with pytest.raises(DataError, match=r"narrow.onnx: running it on two training rows of shape \[2, 64\] failed"):
        load_onnx_members((good[0], narrow), data, 2, "logits")
    nine = str(linear_member(tmp_path / "nine.onnx", np.zeros((64, 9)), np.zeros(9)))
    with pytest.raises(DataError, match=r"nine.onnx: outputs of shape \[2, 9\] for 2 rows, expected \[2, 10\]"):
        load_onnx_members((good[0], nine), data, 2, "logits")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(DataError, match=r"junk.onnx: not a model ONNX Runtime can load"):
        load_onnx_members((good[0], str(tmp_path / "junk.onnx")), data, 2, "logits")


@pytest.mark.slow
def test_onnx_members_are_distilled_and_evaluated(tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    paths = _members(tmp_path, data)
    config = replace(tiny_config, ensemble=replace(tiny_config.ensemble, models=tuple(paths)))
    version = run_pipeline(config, tmp_path / "models")
    assert (version / "model.onnx").is_file() and not (version / "ensemble.onnx").exists()
    report = json.loads((version / "report.json").read_text())
    assert set(report["test"]) == {"ensemble", "kd", "hydra"}
    # The ensemble's test accuracy is the files' own, computed independently here.
    logits = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"x": data.test.X})[0]
              for p in paths]
    mean_probs = np.mean([np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
                          for z in logits], axis=0)
    assert report["test"]["ensemble"]["accuracy"] == pytest.approx(float((mean_probs.argmax(1) == data.test.y).mean()))
    assert report["parameters"]["member"] == 64 * 10 + 10
    assert report["parameters"]["ensemble"] == 3 * (64 * 10 + 10)
    assert "spearman" in report["fidelity"]["hydra"]["test"]["model"]
