"""This project's own exported files (every contract output: Einsum head banks, log-sum-exp,
argmax, masks) run by the torch translation of ONNX graphs: the outputs are ONNX Runtime's,
and the gradient of model uncertainty with respect to the input is the PyTorch network's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contract.model import output_names
from training.config import ExportConfig, ModelConfig
from training.export import ContractModule, to_onnx
from training.networks import HydraNet, NetSpec
from training.onnx_graph import OnnxGraph

from test_export import _meta

MODELS = {
    "mlp classification": (ModelConfig(hidden=(32,)), "classification", (64,), 10),
    "cnn classification": (ModelConfig(body="cnn", channels=(8, 8), image_shape=(1, 8, 8)),
                           "classification", (64,), 10),
    "resnet, block heads": (ModelConfig(body="resnet", channels=(4, 8), blocks=(1, 2), image_shape=(3, 8, 8),
                                        head="block"), "classification", (3, 8, 8), 5),
    "mlp regression": (ModelConfig(hidden=(32,)), "regression", (64,), 2),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_hydra_translates_with_onnx_runtime_outputs_and_pytorch_gradients(name: str) -> None:
    config, task, shape, out_dim = MODELS[name]
    torch.manual_seed(0)
    net = HydraNet(config, NetSpec(task, shape, out_dim), 3)
    features = int(np.prod(shape))
    net.set_stats(np.full(features, 8.0), np.full(features, 4.0))
    net.eval()
    meta = _meta(task, 3, shape, out_dim)
    graph = OnnxGraph(to_onnx(net, meta, ExportConfig()))
    assert list(graph.parameters()) == []  # the weights are fixed buffers

    x = np.random.default_rng(1).uniform(0, 16, size=(6, *shape)).astype(np.float32)
    session = ort.InferenceSession(to_onnx(net, meta, ExportConfig()).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": x})
    with torch.no_grad():
        got = graph(torch.as_tensor(x))
    for out, g, w in zip(output_names(task, 3), got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-5, err_msg=out)

    index = output_names(task, 3).index("model_uncertainty")
    xt = torch.as_tensor(x).requires_grad_(True)
    (through_graph,) = torch.autograd.grad(graph(xt)[index].sum(), xt)
    xt = torch.as_tensor(x).requires_grad_(True)
    (through_net,) = torch.autograd.grad(ContractModule(net, task)(xt)[index].sum(), xt)
    assert float(through_net.abs().max()) > 0
    torch.testing.assert_close(through_graph, through_net, rtol=1e-3, atol=1e-6)
