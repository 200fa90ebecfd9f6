"""The fit loop: a crash mid-training resumes from the last epoch's checkpoint and ends where an
uninterrupted run ends; minimum steps on small data; throughput; float32 predictions."""

from pathlib import Path

import pytest
import torch

from training.checkpoints import load_checkpoint
from training.config import ModelConfig, OptimConfig
from training.device import Runtime
from training.fit import epochs_for, fit, predict
from training.networks import HydraNet, NetSpec


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


def test_small_data_sets_get_min_steps() -> None:
    optim = OptimConfig(epochs=40, batch_size=64, min_steps=500)
    assert epochs_for(optim, 85) == 250  # 2 steps an epoch
    assert epochs_for(optim, 1078) == 40  # 17 steps an epoch: the epochs already give 680
    assert epochs_for(optim, 85, world_size=2) == 500  # one step an epoch on each of 2 ranks
    assert epochs_for(OptimConfig(epochs=40, batch_size=64), 85) == 40  # 0: off


def test_fit_runs_min_steps_on_small_data() -> None:
    torch.manual_seed(0)
    net = HydraNet(ModelConfig(hidden=(8,)), NetSpec("classification", (3,), 2), 1)
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    calls: list[int] = []

    def loss(model, batch):  # noqa: ANN001, ANN202
        calls.append(1)
        return torch.nn.functional.cross_entropy(model(batch[0])[:, 0], batch[1])

    fit(net, (X, y), loss, OptimConfig(epochs=1, batch_size=5, min_steps=12), Runtime(torch.device("cpu")),
        checkpoint=None, key="k", desc="t", seed=0)
    assert len(calls) == 12


def test_fit_reports_its_throughput() -> None:
    net = HydraNet(ModelConfig(hidden=(8,)), NetSpec("classification", (3,), 2), 1)
    rt = Runtime(torch.device("cpu"))
    X, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    fit(net, (X, y), lambda model, batch: torch.nn.functional.cross_entropy(model(batch[0])[:, 0], batch[1]),
        OptimConfig(epochs=2, batch_size=16), rt, checkpoint=None, key="k", desc="stage", seed=0)
    assert set(rt.throughput) == {"stage"} and rt.throughput["stage"] > 0


def test_teacher_outputs_are_float32_under_bf16_training(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = HydraNet(ModelConfig(hidden=(64,)), NetSpec("classification", (32,), 10), 3)
    X = torch.randn(200, 32)
    rt = Runtime(torch.device("cpu"))
    # Training steps under bf16 autocast (as on a GPU); outputs for targets must stay fp32.
    monkeypatch.setattr(Runtime, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    with torch.no_grad():
        want = net(X)
    got = predict(net, X, rt)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0, rtol=0)
