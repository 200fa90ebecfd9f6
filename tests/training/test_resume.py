"""A crash mid-training resumes from the last epoch's checkpoint and ends where an
uninterrupted run ends."""

from pathlib import Path

import pytest
import torch

from training.config import ModelConfig, OptimConfig
from training.networks import HydraNet, NetSpec
from training.runtime import Runtime, fit, load_checkpoint


class Crash(RuntimeError):
    pass


def _setup() -> tuple[HydraNet, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    net = HydraNet(ModelConfig(hidden=(16,)), NetSpec("classification", (8,), 3), 1)
    X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    return net, (X, y)


def _loss(calls: list[int], crash_at: int | None):
    def loss(model, batch):
        calls.append(1)
        if crash_at is not None and len(calls) == crash_at:
            raise Crash("simulated crash")
        return torch.nn.functional.cross_entropy(model(batch[0])[:, 0], batch[1])
    return loss


def test_resume_after_crash_matches_uninterrupted_run(tmp_path: Path) -> None:
    rt = Runtime(torch.device("cpu"))
    optim = OptimConfig(epochs=4, batch_size=16)  # 4 steps per epoch
    reference, tensors = _setup()
    fit(reference, tensors, _loss([], None), optim, rt, checkpoint=None, key="k", desc="ref", seed=1)

    crashed, _ = _setup()
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Crash):
        fit(crashed, tensors, _loss([], crash_at=11), optim, rt, checkpoint=ckpt, key="k", desc="a", seed=1)
    assert load_checkpoint(ckpt, "k")["epoch"] == 2  # two whole epochs survived the crash

    resumed, _ = _setup()
    calls: list[int] = []
    fit(resumed, tensors, _loss(calls, None), optim, rt, checkpoint=ckpt, key="k", desc="b", seed=1)
    assert len(calls) == 8  # only epochs 3 and 4 ran again
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_stale_or_corrupt_checkpoint_is_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    torch.save({"key": "other", "epoch": 3}, ckpt)
    assert load_checkpoint(ckpt, "k") is None
    ckpt.write_bytes(b"not a checkpoint")
    assert load_checkpoint(ckpt, "k") is None
