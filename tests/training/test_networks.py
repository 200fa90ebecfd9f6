from pathlib import Path

import pytest
import torch

from training.config import ConfigError, ModelConfig, load_config
from training.networks import HeadBank, HydraNet, NetSpec, count_parameters

ROOT = Path(__file__).resolve().parents[2]
SPEC = NetSpec("classification", (64,), 10)


@pytest.mark.parametrize("hidden", [0, 16])
def test_replicated_heads_are_exact_independent_copies(hidden: int) -> None:
    one = HeadBank(1, 32, 10, hidden)
    many = one.replicate(5)
    features = torch.randn(7, 32)
    single = one(features)  # [7, 1, 10]
    out = many(features)  # [7, 5, 10]
    for dst, src in zip([*many.weights, *many.biases], [*one.weights, *one.biases]):
        for m in range(5):
            assert torch.equal(dst[m], src[0])  # bit-for-bit copies of the parameters
    for m in range(5):
        torch.testing.assert_close(out[:, m], single[:, 0], rtol=0, atol=1e-6)
    # Real copies: training one head leaves the phase-1 bank and the other heads alone.
    with torch.no_grad():
        many.weights[0][2].add_(1.0)
    assert torch.equal(one(features), single)
    assert (many(features)[:, 2] - single[:, 0]).abs().max() > 0.1
    with pytest.raises(ValueError, match="needs a one-head bank"):
        many.replicate(3)


def test_head_bank_equals_separate_linear_layers() -> None:
    bank = HeadBank(3, 8, 4)
    x = torch.randn(5, 8)
    for m in range(3):
        want = x @ bank.weights[0][m] + bank.biases[0][m]
        torch.testing.assert_close(bank(x)[:, m], want)


def test_default_hydra_has_at_most_1_5x_a_members_parameters() -> None:
    config = load_config(ROOT / "configs" / "digits.toml")
    member = HydraNet(config.model, SPEC, 1)
    hydra = HydraNet(config.model, SPEC, config.ensemble.members)
    assert count_parameters(hydra) / count_parameters(member) <= 1.5


def test_cnn_body_and_regression_shapes() -> None:
    cnn = HydraNet(ModelConfig(body="cnn", image_shape=(1, 8, 8), head="mlp"), SPEC, 4)
    assert cnn(torch.rand(3, 64) * 16).shape == (3, 4, 10)
    reg = HydraNet(ModelConfig(hidden=(16,)), NetSpec("regression", (10,), 2), 3)
    out = reg(torch.randn(5, 10))  # [B, M, 2, D]
    assert out.shape == (5, 3, 2, 2)
    assert torch.all(out[:, :, 1] > 0)


def test_unknown_body_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown model.body 'vit'; registered: \['cnn', 'mlp', 'resnet', 'resnet18', 'resnet34'\]"):
        HydraNet(ModelConfig(body="vit"), SPEC, 1)


def test_build_network_carries_the_data_statistics_and_the_callers_seed() -> None:
    from training.config import DataConfig
    from training.datasets import load_dataset
    from training.networks import build_network
    from training.scaling import feature_stats

    data = load_dataset(DataConfig())
    torch.manual_seed(3)
    a = build_network(ModelConfig(hidden=(8,)), data, 2)
    torch.manual_seed(3)
    b = build_network(ModelConfig(hidden=(8,)), data, 2)
    mean, std = feature_stats(data.train.X.reshape(len(data.train), -1))
    torch.testing.assert_close(a.x_mean, torch.as_tensor(mean).flatten().float())
    torch.testing.assert_close(a.x_std, torch.as_tensor(std).flatten().float())
    assert a.num_heads == 2 and a.spec == NetSpec("classification", (64,), 10)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)  # the weights come from the caller's seeding alone
