"""The transfer set: inputs on which the student imitates the teachers.

Members agree on the inputs they were trained on, so distilling only there passes on little
of their disagreement (Nam et al. 2021, "Diversity Matters When Learning From Ensembles").
Besides the training inputs we add noisy copies, mixup blends, uniform noise, and inputs
pushed by a few signed-gradient steps toward more member disagreement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.config import ConfigError, TransferConfig
from training.networks import Ensemble
from training.members import FileEnsemble
from training.device import Runtime
from training.uncertainty import network_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferSet:
    """What the student imitates the teachers on.

    X [N, *feature_shape] raw inputs; teacher [N, M, C] logits or [N, M, 2, D] Gaussians;
    y [N] (or [N, D]) ground truth where ``labelled`` [N] is True (training rows), zeros
    elsewhere. ``key`` identifies the content for checkpoints; ``summary`` goes into the report.
    """

    X: np.ndarray
    teacher: np.ndarray
    y: np.ndarray
    labelled: np.ndarray
    key: str
    summary: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.teacher.shape[1])

    def range_share(self, X: np.ndarray) -> float:
        return transfer_range_share(self.X, X)


def row_keys(X: np.ndarray) -> list[bytes]:
    """One hashable key per row: its float32 bytes (rows equal after float32 casting match)."""
    flat = np.ascontiguousarray(X.reshape(X.shape[0], -1).astype(np.float32))
    return [row.tobytes() for row in flat]


def transfer_range_share(X_transfer: np.ndarray, X: np.ndarray) -> float:
    """Share of the feature values of X inside the transfer inputs' per-feature [min, max].

    Near 1 means the set lies among inputs the student was distilled on (near-transfer), so
    imitating the teachers there says little about inputs of a kind it never saw.
    """
    flat_t = X_transfer.reshape(X_transfer.shape[0], -1)
    flat = X.reshape(X.shape[0], -1)
    lo, hi = flat_t.min(axis=0), flat_t.max(axis=0)
    return float(((flat >= lo) & (flat <= hi)).mean())


def ascent_applies(cfg: TransferConfig, teacher: object) -> bool:
    """Whether the disagreement ascent runs: steps asked for, and gradients through every
    member (members trained here always give them; files say so, see ``training.members``)."""
    return cfg.perturb_steps > 0 and getattr(teacher, "differentiable", True)


def disagreement_ascent(teacher: Ensemble | FileEnsemble, z: torch.Tensor, cfg: TransferConfig, rt: Runtime) -> torch.Tensor:
    """Normalized inputs [N, d] moved by sign-gradient steps raising model uncertainty, run on
    the training device in blocks of 512 and returned on ``z``'s device."""
    out = []
    with torch.enable_grad(), torch.autocast(device_type=rt.device.type, enabled=False):
        for i in range(0, z.shape[0], 512):
            zb = z[i : i + 512].to(rt.device).float().clone()
            for _ in range(cfg.perturb_steps):
                zb.requires_grad_(True)
                score = network_outputs(teacher, zb, teacher.spec.task, normalized=True)[1]["model_uncertainty"]
                (grad,) = torch.autograd.grad(score.sum(), zb)
                zb = (zb + cfg.perturb_step_size * grad.sign()).detach()
            out.append(zb.to(z.device))
    return torch.cat(out)


def augment_images(X: np.ndarray, cfg: TransferConfig, rng: np.random.Generator) -> np.ndarray:
    """[N, C, H, W] -> the same images, each mirrored left-right with probability 1/2 (``flip``)
    and shifted by a random crop of the zero-padded image (``crop_padding`` pixels a side)."""
    out = np.array(X, dtype=np.float32, copy=True)
    n, _, h, w = out.shape
    if cfg.flip:
        mirrored = rng.random(n) < 0.5
        out[mirrored] = out[mirrored][..., ::-1]
    p = cfg.crop_padding
    if p > 0:
        padded = np.pad(out, ((0, 0), (0, 0), (p, p), (p, p)))
        dy, dx = rng.integers(0, 2 * p + 1, size=(2, n))
        for i in range(n):
            out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def image_augmented(cfg: TransferConfig, shape: tuple[int, ...]) -> bool:
    """Whether copies are mirrored/shifted; refused for features that are not [C, H, W]."""
    images = cfg.flip or cfg.crop_padding > 0
    if images and len(shape) != 3:
        raise ConfigError(f"distill.transfer.flip and crop_padding need image features [C, H, W], the "
                          f"data has {list(shape)}")
    return images


def copies_of(cfg: TransferConfig, images: bool) -> int:
    """Copies per training row (none when nothing would make a copy differ from its row)."""
    varied = cfg.noise_std > 0 or cfg.mixup_alpha > 0 or cfg.perturb_steps > 0 or images
    return cfg.copies if varied else 0


# Training rows per block while the copies are made: the float64 temporaries of the noise and
# the mixup are this many rows, not copies x N rows, and each copy is written as float32
# straight into the set (it was held as float64 and concatenated: several times the set).
TRANSFER_ROWS = 2048


def build_transfer_inputs(X_train: np.ndarray, teacher: Ensemble | FileEnsemble, cfg: TransferConfig,
                          rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """Raw transfer inputs [N', *feature_shape] and a mask [N'] of the original training rows.

    The rows, copies (augmented images, mixup, noise, ascent) and uniform inputs are drawn in
    the same order and computed with the same dtypes as if each copy were made whole, block by
    block of training rows, so the set has the same bits either way (a test checks)."""
    rng = np.random.default_rng(cfg.seed)
    n = X_train.shape[0]
    shape = X_train.shape[1:]
    flat = X_train.reshape(n, -1)
    if hasattr(teacher, "members"):  # members trained here: their own normalization
        mean = teacher.members[0].x_mean.cpu().numpy()
        std = teacher.members[0].x_std.cpu().numpy()
    else:  # members given as files: the training rows' statistics
        mean, std = teacher.x_mean, teacher.x_std
    ascent = ascent_applies(cfg, teacher)
    images = image_augmented(cfg, shape)
    copies = copies_of(cfg, images)
    k = int(round(cfg.uniform_fraction * n)) if cfg.uniform_fraction > 0 else 0
    X = np.empty((n * (1 + copies) + k, flat.shape[1]), dtype=np.float32)
    X[:n] = flat
    for c in range(copies):
        base = augment_images(X_train, cfg, rng).reshape(n, -1) if images else flat
        lam = perm = None
        if cfg.mixup_alpha > 0:
            lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, size=(n, 1))
            perm = rng.permutation(n)
        into = X[n * (1 + c):n * (2 + c)]
        for start in range(0, n, TRANSFER_ROWS):
            rows = slice(start, start + TRANSFER_ROWS)
            z = (base[rows] - mean) / std  # [b, d]
            if lam is not None and perm is not None:
                z = lam[rows] * z + (1 - lam[rows]) * ((base[perm[rows]] - mean) / std)
            if cfg.noise_std > 0:
                z = z + rng.normal(0.0, cfg.noise_std, size=z.shape)
            # With the ascent, ``into`` holds the normalized float32 inputs it starts from.
            into[rows] = z if ascent else z * std + mean
        if ascent:
            moved = disagreement_ascent(teacher, torch.as_tensor(into), cfg, rt).numpy()
            for start in range(0, n, TRANSFER_ROWS):
                rows = slice(start, start + TRANSFER_ROWS)
                into[rows] = moved[rows] * std + mean
    if k:
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        for start in range(0, k, TRANSFER_ROWS):
            rows = min(TRANSFER_ROWS, k - start)
            X[n * (1 + copies) + start:][:rows] = rng.uniform(lo, hi, size=(rows, flat.shape[1]))
    X = X.reshape(-1, *shape)
    original = np.zeros(X.shape[0], dtype=bool)
    original[:n] = True
    log.info("transfer set: %d inputs (%d training, %d added)", X.shape[0], n, X.shape[0] - n)
    return X, original
