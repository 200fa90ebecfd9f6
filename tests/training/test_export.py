"""Export: one self-contained file under the contract, parity with PyTorch for every output."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from contract.model import ModelMetadata, output_names
from contract.drift import DriftReference
from contract.ood import OodCalibration
from training.config import ExportConfig, ModelConfig
from training.export import ContractModule, ExportError, check_parity, export_checked, to_onnx
from training.networks import Ensemble, HydraNet, NetSpec


def _meta(task: str, heads: int, shape: tuple[int, ...], classes: int = 10) -> ModelMetadata:
    scores = np.linspace(0, 1, 200)
    return ModelMetadata(task=task, num_heads=heads, feature_shape=shape,
                         class_labels=tuple(map(str, range(classes))) if task == "classification" else (),
                         output_dim=1 if task == "classification" else classes,
                         ood=OodCalibration.from_scores(scores),
                         drift={c: DriftReference.from_scores(scores, 5) for c in ("total", "data", "model")})


@pytest.mark.parametrize("task, body, out_dim", [("classification", "mlp", 10),
                                                 ("classification", "cnn", 10),
                                                 ("regression", "mlp", 2)])
def test_export_matches_pytorch_for_every_output(tmp_path: Path, task: str, body: str, out_dim: int) -> None:
    torch.manual_seed(0)
    net = HydraNet(ModelConfig(body=body, hidden=(32,), channels=(8, 8), image_shape=(1, 8, 8)),
                   NetSpec(task, (64,), out_dim), 4)
    net.set_stats(np.full(64, 8.0), np.full(64, 4.0))
    meta = _meta(task, 4, (64,), out_dim)
    real = np.random.default_rng(0).uniform(0, 16, size=(37, 64)).astype(np.float32)
    result = export_checked(net, meta, ExportConfig(), real, tmp_path / "model.onnx")

    path = tmp_path / "model.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # self-contained, no .onnx.data
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    blob = path.read_bytes()
    assert b"/work/" not in blob and b".py" not in blob  # no local source paths left behind
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == output_names(task, 4)
    assert ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map) == meta
    # Independently of export_checked: run the file and PyTorch on a batch of 5.
    x = real[:5]
    got = session.run(None, {"input": x})
    with torch.no_grad():
        want = ContractModule(net, task)(torch.as_tensor(x))
    for name, g, w in zip(output_names(task, 4), got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-3, err_msg=name)
    assert set(result["max_abs_diff"]) == {"random", "real", "single"}


def test_ensemble_export_has_member_outputs(tmp_path: Path) -> None:
    members = [HydraNet(ModelConfig(hidden=(16,)), NetSpec("classification", (64,), 10), 1) for _ in range(3)]
    ens = Ensemble(members)
    model = to_onnx(ens, _meta("classification", 3, (64,)), ExportConfig())
    assert [o.name for o in model.graph.output][:3] == ["head_0", "head_1", "head_2"]


def test_parity_check_catches_a_wrong_graph() -> None:
    net = HydraNet(ModelConfig(hidden=(16,)), NetSpec("classification", (64,), 10), 2)
    meta = _meta("classification", 2, (64,))
    model = to_onnx(net, meta, ExportConfig())
    with torch.no_grad():
        net.heads.biases[0].add_(0.5)  # the file no longer matches the network
    with pytest.raises(ExportError, match=r"output head_0: ONNX Runtime differs from PyTorch"):
        check_parity(model, net, meta, np.ones((4, 64), np.float32), ExportConfig())
