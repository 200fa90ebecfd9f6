"""The streamed transfer set: inputs made batch by batch by the materialized set's recipe,
labelled by the teachers in float32 on the yielded batch, deterministic per epoch (so resuming
reproduces an uninterrupted run), refused where it cannot apply."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from training.config import ConfigError, OptimConfig, RunConfig, TransferConfig, load_config
from training.datasets import load_dataset
from training.device import Runtime
from training.fit import fit
from training.networks import Ensemble, build_network
from training.pipeline import run_pipeline
from training.stream import EpochBatches, TransferInputs, TransferStream
from training.transfer import build_transfer_inputs, copies_of, image_augmented

ROOT = Path(__file__).resolve().parents[2]
CPU = Runtime(torch.device("cpu"))


def images(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n, 2, 6, 5)).astype(np.float32)
    return X, rng.integers(0, 3, size=n)


def all_views(image: np.ndarray, p: int) -> list[np.ndarray]:
    """Every crop (padding p) of the image and of its mirror."""
    out = []
    for img in (image, image[..., ::-1]):
        padded = np.pad(img, ((0, 0), (p, p), (p, p)))
        h, w = img.shape[1:]
        out += [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    return out


def test_refused_options_name_themselves() -> None:
    base = ROOT / "configs" / "tiny.toml"
    with pytest.raises(ConfigError, match=r"distill.transfer.stream needs the members themselves: a member "
                                          r"predictions file"):
        load_config(base, ["distill.transfer.stream=true", 'ensemble.predictions="p.npz"'])
    with pytest.raises(ConfigError, match=r"distill.loader_workers applies to a streamed transfer set only"):
        load_config(base, ["distill.loader_workers=2"])
    with pytest.raises(ConfigError, match=r"distill.loader_workers must be >= 0, got -1"):
        load_config(base, ["distill.transfer.stream=true", "distill.loader_workers=-1"])
    assert load_config(base, ["distill.transfer.stream=true", "distill.loader_workers=2"]).distill.loader_workers == 2


def test_batches_follow_the_recipe_row_by_row() -> None:
    X, y = images()
    n = len(X)
    cfg = TransferConfig(copies=3, flip=True, crop_padding=1, uniform_fraction=0.5, seed=4)
    mean, std = X.reshape(n, -1).mean(0), X.reshape(n, -1).std(0) + 1.0
    inputs = TransferInputs(X, y, mean, std, cfg)
    assert len(inputs) == n * 4 + 20
    # As many inputs an epoch as the materialized set holds.
    teacher = Ensemble([build_network(load_config().model, _fake_data(X, y), 1)])
    X_mat, _ = build_transfer_inputs(X, teacher, cfg, CPU)
    assert len(X_mat) == len(inputs)
    idx = np.arange(len(inputs))
    x, yy, labelled, copy = inputs[(0, 0, 0, idx)]
    assert copy.numpy().tolist() == [False] * n + [True] * 3 * n + [False] * 20
    x = x.numpy()
    np.testing.assert_array_equal(x[:n], X)  # the training rows themselves, labelled
    np.testing.assert_array_equal(yy.numpy()[:n], y)
    assert labelled.numpy().tolist() == [True] * n + [False] * (len(inputs) - n)
    flipped = 0
    for i in range(n, 4 * n):
        row = X[(i - n) % n]
        views = all_views(row, 1)
        match = [k for k, v in enumerate(views) if np.allclose(v, x[i], rtol=0, atol=1e-3)]
        assert match, f"copy {i} is no crop or flip of its row"
        flipped += match[0] >= 9
    assert 0.25 < flipped / (3 * n) < 0.75  # each copy mirrored with probability 1/2
    uniform = x[4 * n:].reshape(20, -1)
    flat = X.reshape(n, -1)
    assert np.all(uniform >= flat.min(0)) and np.all(uniform <= flat.max(0))
    assert len(np.unique(uniform[:, 0])) == 20
    # Deterministic in (seed, epoch, rank, batch number); another epoch draws other copies.
    again = inputs[(0, 0, 0, idx)][0].numpy()
    np.testing.assert_array_equal(again, x)
    other = inputs[(1, 0, 0, idx)][0].numpy()
    np.testing.assert_array_equal(other[:n], X)
    assert not np.array_equal(other[n:], x[n:])


def test_noise_and_mixup_in_normalized_units() -> None:
    X, y = images(400)
    n = len(X)
    flat = X.reshape(n, -1)
    mean, std = flat.mean(0), np.full(flat.shape[1], 10.0, dtype=np.float32)
    noisy = TransferInputs(X, y, mean, std, TransferConfig(copies=1, noise_std=0.5))
    x = noisy[(0, 0, 0, np.arange(n, 2 * n))][0].numpy().reshape(n, -1)
    assert np.std((x - flat) / std) == pytest.approx(0.5, rel=0.03)
    mixed = TransferInputs(X, y, mean, std, TransferConfig(copies=1, mixup_alpha=0.4))
    x = mixed[(0, 0, 0, np.arange(n, 2 * n))][0].numpy().reshape(n, -1)
    # a blend of its row and another row, with one weight in [0, 1] for every feature
    lams = []
    for i in range(n):
        d = flat - flat[i]  # [n, d]
        norm = (d * d).sum(1)
        norm[i] = np.inf
        lam = ((x[i] - flat[i]) * d).sum(1) / norm
        residual = np.abs(flat[i] + lam[:, None] * d - x[i]).max(1)
        j = int(np.argmin(residual))
        assert residual[j] < 1e-2, f"copy {i} is no blend of its row with another"
        lams.append(lam[j])
    assert -1e-4 <= min(lams) and max(lams) <= 1 + 1e-4 and np.std(lams) > 0.2


def _fake_data(X: np.ndarray, y: np.ndarray):  # noqa: ANN202
    """A Dataset over the arrays (training rows only matter here)."""
    from training.data import Dataset, Split
    split = Split(X, y)
    return Dataset(name="fake", task="classification", feature_shape=tuple(X.shape[1:]),
                   class_labels=("0", "1", "2"), train=split, calibration=split, test=split)


def _stream(tiny_config: RunConfig, **transfer: object) -> tuple[TransferStream, Ensemble]:
    data = load_dataset(tiny_config.data)
    torch.manual_seed(0)
    teacher = Ensemble([build_network(tiny_config.model, data, 1) for _ in range(3)]).eval()
    cfg = replace(tiny_config.distill.transfer, **transfer)
    m = teacher.members[0]
    inputs = TransferInputs(data.train.X, data.train.y, m.x_mean.numpy(), m.x_std.numpy(), cfg)
    return TransferStream(inputs, teacher, 3, "k", ascent=cfg.perturb_steps > 0), teacher


def _mutual_information(logits: torch.Tensor) -> torch.Tensor:
    """[B, M, C] logits -> [B]: entropy of the mean prediction minus the mean entropy."""
    p = torch.softmax(logits, -1)
    mean = p.mean(1)
    total = -(mean * torch.log(mean)).sum(-1)
    data = -(p * torch.log(p)).sum(-1).mean(1)
    return total - data


def test_streamed_copies_are_moved_by_the_ascent_before_they_are_labelled(tiny_config: RunConfig) -> None:
    steps, size = 2, 0.3
    plain, teacher = _stream(tiny_config, uniform_fraction=0.25, perturb_steps=0)
    pushed, _ = _stream(tiny_config, uniform_fraction=0.25, perturb_steps=steps, perturb_step_size=size)
    mean = torch.as_tensor(plain.inputs.mean)
    std = torch.as_tensor(plain.inputs.std)
    n_copies = 0
    # Even inside an autocast region (as in a bf16 step) the ascent and the labels are float32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pairs = list(zip(plain.source(0).epoch(1, 96, CPU, seed=0), pushed.source(0).epoch(1, 96, CPU, seed=0)))
    for (x0, _, y0, l0), (x1, t1, y1, l1) in pairs:
        z = ((x0.reshape(len(x0), -1) - mean) / std).clone()
        # By hand: signed-gradient steps on the members' mutual information, in normalized units.
        for _ in range(steps):
            z.requires_grad_(True)
            (g,) = torch.autograd.grad(_mutual_information(teacher.forward_normalized(z)).sum(), z)
            z = (z + size * g.sign()).detach()
        by_hand = (z * std + mean).reshape(x0.shape)
        moved = (x1 != x0).reshape(len(x0), -1).any(1)
        torch.testing.assert_close(y1, y0)
        torch.testing.assert_close(l1, l0)
        assert not bool(moved[l0].any())  # the training rows stay as they are
        torch.testing.assert_close(x1[moved], by_hand[moved], rtol=1e-5, atol=1e-4)
        n_copies += int(moved.sum())
        with torch.no_grad():
            torch.testing.assert_close(t1, teacher(x1), rtol=0, atol=0)  # labelled where they moved to
    # Every copy moved (the uniform inputs did not: counted with them, this would be larger).
    assert plain.inputs.uniform > 0
    assert n_copies == plain.inputs.copies * len(plain.inputs.X)


def test_teacher_outputs_are_the_teachers_on_the_yielded_batch_in_float32(tiny_config: RunConfig) -> None:
    stream, teacher = _stream(tiny_config, uniform_fraction=0.25)
    source = stream.source(0)
    seen = 0
    labelled_rows = 0
    # Even inside an autocast region the teachers run in float32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batches = list(source.epoch(0, 100, CPU, seed=0))
    for x, t, y, labelled in batches:
        with torch.no_grad():
            want = teacher(x)
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, want, rtol=0, atol=0)
        seen += len(x)
        labelled_rows += int(labelled.sum())
    assert seen == len(stream) and labelled_rows == len(stream.inputs.X)


def test_loader_workers_yield_the_same_batches(tiny_config: RunConfig) -> None:
    stream, _ = _stream(tiny_config)
    inline = list(stream.source(0).epoch(2, 64, CPU, seed=1))
    workers = list(stream.source(2).epoch(2, 64, CPU, seed=1))
    assert len(inline) == len(workers)
    for a, b in zip(inline, workers):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    # another epoch: another order and other copies
    later = next(iter(stream.source(0).epoch(3, 64, CPU, seed=1)))
    assert not torch.equal(later[0], inline[0][0])


def test_ranks_share_an_epoch() -> None:
    order = [np.concatenate([idx for *_, idx in EpochBatches(103, 10, Runtime(torch.device("cpu"), r, 2), 5)])
             for r in range(2)]
    assert len(order[0]) == len(order[1]) == 52  # DistributedSampler pads to equal shares
    assert set(order[0]) | set(order[1]) == set(range(103))
    assert len(EpochBatches(103, 10, Runtime(torch.device("cpu"), 0, 2), 5)) == 6


def test_a_resumed_streamed_fit_equals_an_uninterrupted_one(tiny_config: RunConfig, tmp_path: Path) -> None:
    stream, _ = _stream(tiny_config, perturb_steps=1)  # the ascent too is a function of the batch
    data = load_dataset(tiny_config.data)
    optim = OptimConfig(epochs=3, batch_size=128)

    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, t, *_ = batch
        return ((model(x)[:, 0] - t.mean(1)) ** 2).mean()

    def student() -> nn.Module:
        torch.manual_seed(7)
        return build_network(tiny_config.model, data, 1)

    firsts: list[float] = []

    def recording(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        firsts.append(float(batch[0].sum()))
        return loss(model, batch)

    whole = fit(student(), stream.source(0), recording, optim, CPU, checkpoint=None, key="k", desc="a", seed=3)
    per_epoch = np.array(firsts).reshape(3, -1)  # every epoch its own batches
    assert not np.array_equal(per_epoch[0], per_epoch[1]) and not np.array_equal(per_epoch[1], per_epoch[2])
    calls = {"n": 0}

    def crashing(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 12:  # in the second epoch
            raise KeyboardInterrupt
        return loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        fit(student(), stream.source(0), crashing, optim, CPU, checkpoint=tmp_path / "p.pt", key="k",
            desc="b", seed=3)
    resumed = fit(student(), stream.source(0), loss, optim, CPU, checkpoint=tmp_path / "p.pt", key="k",
                  desc="b", seed=3)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_a_tiny_streamed_run_publishes_a_model(tiny_config: RunConfig, tmp_path: Path) -> None:
    config = replace(tiny_config, distill=replace(
        tiny_config.distill, loader_workers=2,
        transfer=replace(tiny_config.distill.transfer, stream=True, mixup_alpha=0.4, uniform_fraction=0.5,
                         perturb_steps=1)))
    version = run_pipeline(config, tmp_path / "models")
    assert (version / "model.onnx").is_file() and (version / "ensemble.onnx").is_file()
    report = json.loads((version / "report.json").read_text())
    t = report["transfer"]
    assert t["mode"] == "streamed" and t["loader_workers"] == 2
    n = report["splits"]["calibration"] and t["training_rows"]
    assert t["rows"] == 2 * n + round(0.5 * n)
    assert {"hydra phase 1", "hydra phase 2"} <= set(report["training_samples_per_s"])
    assert t["ascent_steps_per_batch"] == 1
    md = (version / "report.md").read_text()
    assert "Streamed: the inputs are made and labelled batch by batch" in md
    assert "the copies of every batch moved by 1 disagreement-ascent steps" in md
    assert report["test"]["hydra"]["accuracy"] > 0.5


def test_both_transfer_paths_share_the_image_and_copy_rules() -> None:
    flip = TransferConfig(flip=True, copies=3)
    assert image_augmented(flip, (3, 8, 8)) and not image_augmented(TransferConfig(), (64,))
    message = r"need image features \[C, H, W\], the data has \[64\]"
    with pytest.raises(ConfigError, match=message):
        image_augmented(flip, (64,))
    X, y = np.zeros((4, 64), dtype=np.float32), np.zeros(4, dtype=np.int64)
    with pytest.raises(ConfigError, match=message):  # the streamed set
        TransferInputs(X, y, np.zeros(64), np.ones(64), flip)
    with pytest.raises(ConfigError, match=message):  # the materialized set
        teacher = SimpleNamespace(x_mean=np.zeros(64), x_std=np.ones(64))  # members given as files
        build_transfer_inputs(X, teacher, flip, None)  # type: ignore[arg-type]
    # Copies only when something makes a copy differ from its row.
    assert copies_of(TransferConfig(copies=3), images=False) == 0
    assert copies_of(TransferConfig(copies=3, noise_std=0.1), images=False) == 3
    assert copies_of(flip, images=True) == 3
    assert len(TransferInputs(np.zeros((4, 3, 8, 8), np.float32), y, np.zeros(192), np.ones(192), flip)) == 4 * 4
