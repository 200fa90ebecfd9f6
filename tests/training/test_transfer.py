"""The materialized transfer set, made block by block of training rows into one float32 array:
the same bits as the one-shot recipe (every copy whole, held as float64, concatenated), for
every kind of copy, with a fraction of its memory."""

from __future__ import annotations

import tracemalloc
import numpy as np
import pytest
import torch

from training import transfer
from training.config import TransferConfig, load_config
from training.data import Dataset, Split
from training.device import Runtime
from training.networks import Ensemble, build_network
from training.transfer import augment_images, build_transfer_inputs, copies_of, image_augmented

CPU = Runtime(torch.device("cpu"))


def _teacher(X: np.ndarray, y: np.ndarray, classes: int = 3) -> Ensemble:
    split = Split(X, y)
    data = Dataset(name="t", task="classification", feature_shape=tuple(X.shape[1:]),
                   class_labels=tuple(str(i) for i in range(classes)), train=split, calibration=split,
                   test=split)
    torch.manual_seed(0)
    return Ensemble([build_network(load_config().model, data, 1) for _ in range(2)]).eval()


def one_shot(X_train: np.ndarray, teacher: Ensemble, cfg: TransferConfig) -> np.ndarray:
    """The recipe written plainly: each copy made whole, the parts concatenated, then float32."""
    rng = np.random.default_rng(cfg.seed)
    n, shape = X_train.shape[0], X_train.shape[1:]
    flat = X_train.reshape(n, -1)
    mean, std = teacher.members[0].x_mean.numpy(), teacher.members[0].x_std.numpy()
    images = image_augmented(cfg, shape)
    parts = [flat]
    for _ in range(copies_of(cfg, images)):
        base = augment_images(X_train, cfg, rng).reshape(n, -1) if images else flat
        z = (base - mean) / std
        if cfg.mixup_alpha > 0:
            lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, size=(n, 1))
            z = lam * z + (1 - lam) * z[rng.permutation(n)]
        if cfg.noise_std > 0:
            z = z + rng.normal(0.0, cfg.noise_std, size=z.shape)
        if cfg.perturb_steps > 0:
            z = transfer.disagreement_ascent(teacher, torch.as_tensor(z, dtype=torch.float32), cfg, CPU).numpy()
        parts.append(z * std + mean)
    if cfg.uniform_fraction > 0:
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        parts.append(rng.uniform(lo, hi, size=(int(round(cfg.uniform_fraction * n)), flat.shape[1])))
    return np.concatenate(parts).astype(np.float32).reshape(-1, *shape)


RECIPES = {
    "images: flip, crop, noise, mixup, uniform": ((2, 6, 5), TransferConfig(
        copies=3, flip=True, crop_padding=1, noise_std=0.2, mixup_alpha=0.4, uniform_fraction=0.5, seed=3)),
    "images: flip and crop only": ((2, 6, 5), TransferConfig(copies=2, flip=True, crop_padding=2,
                                                              noise_std=0.0, uniform_fraction=0.0, seed=1)),
    "features: noise, mixup, uniform": ((7,), TransferConfig(copies=4, noise_std=0.3, mixup_alpha=0.2,
                                                               uniform_fraction=0.25, seed=5)),
    "features: noise and ascent": ((7,), TransferConfig(copies=2, noise_std=0.1, perturb_steps=2,
                                                          perturb_step_size=0.05, seed=9)),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_blocks_give_the_one_shot_recipe_bit_for_bit(recipe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, cfg = RECIPES[recipe]
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(53, *shape)).astype(np.float32)
    y = rng.integers(0, 3, size=53)
    teacher = _teacher(X, y)
    expected = one_shot(X, teacher, cfg)
    monkeypatch.setattr(transfer, "TRANSFER_ROWS", 8)  # 7 blocks a copy, the last one short
    got, original = build_transfer_inputs(X, teacher, cfg, CPU)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    assert original.tolist() == [True] * 53 + [False] * (len(got) - 53)
    # and with one block for everything
    monkeypatch.setattr(transfer, "TRANSFER_ROWS", 10**6)
    assert build_transfer_inputs(X, teacher, cfg, CPU)[0].tobytes() == expected.tobytes()


def test_the_set_is_made_in_little_more_than_its_own_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak allocations while making 4 noisy, mixed copies and 0.5 x N uniform inputs of
    3,000 x 3x16x16 images, in blocks of 256 rows (the default block is for sets ten times
    this size): the set itself (float32) plus one augmented copy (with its padded crops) and a
    few blocks, where the one-shot recipe holds every copy in float64 and then the
    concatenation too."""
    monkeypatch.setattr(transfer, "TRANSFER_ROWS", 256)
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(3000, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 3, size=3000)
    teacher = _teacher(X, y)
    cfg = TransferConfig(copies=4, flip=True, crop_padding=2, noise_std=0.1, mixup_alpha=0.2,
                         uniform_fraction=0.5, seed=0)

    def peak(fn) -> tuple[int, np.ndarray]:  # type: ignore[no-untyped-def]
        tracemalloc.start()
        try:
            out = fn()
            return tracemalloc.get_traced_memory()[1], out
        finally:
            tracemalloc.stop()

    blocks, (got, _) = peak(lambda: build_transfer_inputs(X, teacher, cfg, CPU))
    whole, expected = peak(lambda: one_shot(X, teacher, cfg))
    print(f"peak allocations: blocks {blocks / 1e6:.0f} MB, one shot {whole / 1e6:.0f} MB, "
          f"set {got.nbytes / 1e6:.0f} MB")
    assert got.tobytes() == expected.tobytes()
    assert blocks < 1.8 * got.nbytes
    assert whole > 3 * blocks
