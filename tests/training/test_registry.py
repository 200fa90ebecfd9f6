"""The body and head registries: built-in parts registered on import, custom parts by
decorator, unknown names refused with the registered ones listed."""

import pytest
import torch
from torch import nn

from training.config import ConfigError, ModelConfig
from training.networks import BODIES, HEADS, HydraNet
from training.registry import NetSpec, Registry


def test_built_in_parts_are_registered() -> None:
    assert sorted(BODIES) == ["cnn", "mlp", "resnet", "resnet18", "resnet34"]
    assert sorted(HEADS) == ["block", "linear", "mlp"]


def test_a_registered_builder_is_found_and_a_second_one_of_that_name_refused() -> None:
    parts: Registry = Registry("body")

    @parts.register("identity")
    def identity(cfg: ModelConfig, spec: NetSpec) -> nn.Module:
        return nn.Identity()

    assert "identity" in parts and parts.get("identity") is identity
    with pytest.raises(ValueError, match="already registered"):
        parts.register("identity")(identity)
    with pytest.raises(ConfigError, match=r"unknown model.body 'vit'; registered: \['identity'\]"):
        parts.get("vit")


def test_unknown_head_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown model.head 'tree'; registered: \['block', 'linear', 'mlp'\]"):
        HydraNet(ModelConfig(head="tree"), NetSpec("classification", (4,), 2), 1)


def test_block_heads_need_the_resnet_body() -> None:
    with pytest.raises(ConfigError, match='model.head = "block" copies the last residual block'):
        HydraNet(ModelConfig(head="block"), NetSpec("classification", (4,), 2), 1)
    net = HydraNet(ModelConfig(body="resnet", head="block", channels=(4, 8), blocks=(1, 2)),
                   NetSpec("classification", (1, 8, 8), 3), 2)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 2, 3)
