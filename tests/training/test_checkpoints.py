"""Checkpoint files: stale and corrupt ones are ignored; a finished one is loaded instead of
fitting; a fit leaves the finished file and no partial one."""

import logging
from pathlib import Path

import pytest
import torch

from training.checkpoints import Checkpoints, config_key, load_checkpoint, partial_path
from training.config import ModelConfig
from training.device import Runtime
from training.networks import HydraNet, NetSpec


def test_stale_or_corrupt_checkpoint_is_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    torch.save({"key": "other", "epoch": 3}, ckpt)
    assert load_checkpoint(ckpt, "k") is None
    ckpt.write_bytes(b"not a checkpoint")
    assert load_checkpoint(ckpt, "k") is None


def test_keys_include_the_scope_and_differ_with_any_part(tmp_path: Path) -> None:
    store = Checkpoints(tmp_path, ("data",), {})
    assert store.key("a", 1) == config_key("data", "a", 1)
    assert store.key("a", 1) != store.key("a", 2) != Checkpoints(tmp_path, ("other",), {}).key("a", 2)


def _net(seed: int) -> HydraNet:
    torch.manual_seed(seed)
    return HydraNet(ModelConfig(hidden=(4,)), NetSpec("classification", (3,), 2), 1)


def test_fit_or_load_fits_once_then_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Checkpoints(tmp_path, (), {"name": "run"})
    rt = Runtime(torch.device("cpu"))
    fits: list[Path] = []

    def fit(net: HydraNet):  # noqa: ANN202
        def train(partial: Path) -> None:
            fits.append(partial)
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(b"in progress")
            with torch.no_grad():
                net.heads.biases[0].fill_(7.0)
        return train

    first = _net(0)
    store.fit_or_load(first, "sub/a.pt", "k", rt, fit(first), label="a")
    assert fits == [partial_path(tmp_path / "sub" / "a.pt")]
    assert not fits[0].exists()  # the partial file is dropped once the finished one is written
    saved = load_checkpoint(tmp_path / "sub" / "a.pt", "k")
    assert saved is not None and saved["config"] == {"name": "run"}

    second = _net(1)
    with caplog.at_level(logging.INFO):
        loaded = store.fit_or_load(second, "sub/a.pt", "k", rt, fit(second), label="a")
    assert len(fits) == 1 and "a: loaded finished checkpoint" in caplog.text
    assert not loaded.training
    for x, y in zip(first.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(x, y)

    store.fit_or_load(_net(2), "sub/a.pt", "other key", rt, fit(_net(2)), label="a")
    assert len(fits) == 2  # written for another configuration: fitted again
