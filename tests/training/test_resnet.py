"""The ResNet body for images of any size, and block heads that copy its last residual block."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.config import ConfigError, ExportConfig, ModelConfig, load_config
from training.export import export_checked
from training.networks import HydraNet, NetSpec, count_parameters
from training.pipeline import run_pipeline
from tests.training.test_export import _meta

ROOT = Path(__file__).resolve().parents[2]


def _net(head: str, shape: tuple[int, ...], heads: int = 4, classes: int = 10,
         blocks: tuple[int, ...] = (1, 2)) -> HydraNet:
    cfg = ModelConfig(body="resnet", channels=(8, 16), blocks=blocks, image_shape=shape, head=head)
    return HydraNet(cfg, NetSpec("classification", (int(np.prod(shape)),), classes), heads)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 20), (3, 9, 9)])
@pytest.mark.parametrize("head", ["linear", "block"])
def test_images_of_any_size(shape: tuple[int, ...], head: str) -> None:
    net = _net(head, shape).eval()
    out = net(torch.randn(5, int(np.prod(shape))))
    assert out.shape == (5, 4, 10) and torch.isfinite(out).all()


def test_block_heads_hold_one_residual_block_and_a_linear_layer_each() -> None:
    linear, block = _net("linear", (3, 16, 16)), _net("block", (3, 16, 16))
    c, m, classes = 16, 4, 10
    per_block = 2 * (c * c * 9) + 2 * (2 * c)  # two 3x3 convs without bias, two BatchNorms
    # The block body drops its last block; each of the M heads gets a copy of it.
    assert count_parameters(block.body) == count_parameters(linear.body) - per_block
    assert count_parameters(block.heads) == m * (per_block + c * classes + classes)
    assert count_parameters(linear.heads) == m * (c * classes + classes)


def test_replicated_block_heads_are_exact_copies() -> None:
    torch.manual_seed(0)
    one = _net("block", (3, 16, 16), heads=1)
    one.train()
    for _ in range(3):  # move the BatchNorm running statistics away from their start
        one(torch.randn(8, 3 * 16 * 16))
    one.eval()
    maps = one.body(torch.randn(6, 3 * 16 * 16))
    many = one.heads.replicate(5).eval()
    single = one.heads(maps)  # [B, 1, C]
    torch.testing.assert_close(many(maps), single.expand(-1, 5, -1), atol=1e-6, rtol=1e-6)


def test_resnet_settings_errors() -> None:
    with pytest.raises(ConfigError, match=r"model.head = \"block\" copies the last residual block: it needs a ResNet body \(resnet, resnet18, resnet34\), got 'mlp'"):
        HydraNet(ModelConfig(body="mlp", head="block"), NetSpec("classification", (64,), 10), 2)
    with pytest.raises(ConfigError, match=r"model.blocks \[1\] must give at least one block for each of the 2 stages"):
        _net("linear", (3, 8, 8), blocks=(1,))
    with pytest.raises(ConfigError, match=r"the last stage needs at least 2 blocks"):
        _net("block", (3, 8, 8), blocks=(1, 1))


def test_resnet_with_block_heads_exports_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _net("block", (3, 16, 16)).eval()
    real = np.random.default_rng(0).uniform(0, 16, size=(20, 3 * 16 * 16)).astype(np.float32)
    result = export_checked(net, _meta("classification", 4, (3 * 16 * 16,)), ExportConfig(), real,
                            tmp_path / "model.onnx")
    worst = max(max(d.values()) for d in result["max_abs_diff"].values())
    assert worst < 1e-3


@pytest.mark.slow
def test_digits_resnet_config_trains_and_publishes(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "digits_resnet.toml", [
        f'runs_dir="{tmp_path / "runs"}"', "ensemble.members=2", "ensemble.optim.epochs=1",
        "distill.phase1.epochs=1", "distill.phase2.epochs=1", "distill.transfer.copies=1"])
    version = run_pipeline(config, tmp_path / "models")
    report = json.loads((version / "report.json").read_text())
    assert report["parameters"]["hydra"] > report["parameters"]["member"]
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]


def test_fixed_resnet_layouts_have_he_et_al_stage_sizes() -> None:
    spec = NetSpec("classification", (3, 32, 32), 10)
    r18 = HydraNet(ModelConfig(body="resnet18", image_shape=(3, 32, 32)), spec, 1)
    r34 = HydraNet(ModelConfig(body="resnet34", image_shape=(3, 32, 32)), spec, 1)
    # Independent count: CIFAR-style ResNet-18/34 (3x3 stem, no downsampling stem) with a
    # 10-way linear layer: 11,173,962 and 21,282,122 parameters.
    assert count_parameters(r18) == 11_173_962
    assert count_parameters(r34) == 21_282_122
    with pytest.raises(ConfigError, match=r"model.body = 'resnet18' has channels \[64, 128, 256, 512\]"):
        HydraNet(ModelConfig(body="resnet18", channels=(8, 16), blocks=(1, 2), image_shape=(3, 32, 32)), spec, 1)
    block = HydraNet(ModelConfig(body="resnet18", head="block", image_shape=(3, 32, 32)), spec, 4)
    assert block.heads.channels == 512


def test_members_of_a_block_head_hydra_are_whole_networks_with_linear_heads() -> None:
    from training.networks import member_model

    block = ModelConfig(body="resnet", channels=(8, 16), blocks=(1, 2), head="block")
    assert member_model(block) == replace(block, head="linear")
    for head in ("linear", "mlp"):  # heads that are a member's own head stay as they are
        assert member_model(replace(block, head=head)) == replace(block, head=head)
    spec = NetSpec("classification", (3, 16, 16), 10)
    # Same function class: a one-head block bank on the shortened body has exactly the
    # parameters of the whole body with a linear head.
    assert count_parameters(HydraNet(block, spec, 1)) == count_parameters(HydraNet(member_model(block), spec, 1))
