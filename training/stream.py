"""A transfer set that streams (``distill.transfer.stream = true``): bounded memory for image
data sets of real size.

The materialized transfer set (``training.transfer``) holds ``copies`` x N inputs and the
teachers' outputs on all of them. Streamed, nothing but the training rows is kept: a
``DataLoader`` (``distill.loader_workers`` worker processes) yields each batch's inputs, made
on the fly from the training rows by the same recipe (the training rows themselves, then
``copies`` augmented copies of every row: random crop + flip, mixup, noise; then uniform
inputs), and the teachers label each batch on the training device in float32 (never under
autocast) just before the student's step. An epoch holds as many inputs as the materialized
set; its order comes from ``distill.seed`` and the epoch, and every batch's random draws from
``distill.transfer.seed``, the epoch, the rank and the batch's number, so a run resumed after
an epoch, or run with another number of workers, sees the same inputs. Under DDP each rank
takes its share of every epoch (``DistributedSampler``). Each epoch draws new copies, so the
student sees ``epochs`` x ``copies`` augmented versions of each row instead of ``copies``.

With the disagreement ascent (``distill.transfer.perturb_steps``) each batch's copies are
moved by the signed-gradient steps through the teachers on the training device before they
are labelled, as the materialized set's copies are once: streamed, on every batch of every
epoch, so the ascent's cost is paid ``epochs`` times. What cannot stream is refused by the
config check: a file of member predictions (its inputs are fixed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from training.config import TransferConfig
from training.device import Runtime
from training.transfer import augment_images, copies_of, disagreement_ascent, image_augmented

log = logging.getLogger(__name__)


class TransferInputs(torch.utils.data.Dataset):
    """Transfer inputs by batch. Item ``(epoch, rank, number, indices)`` -> (x [B, *shape]
    float32, y [B, ...], labelled [B] bool, copy [B] bool): index i < N is training row i
    (labelled), N <= i < N(1 + copies) a copy of row (i - N) mod N (copy), the rest uniform
    inputs inside the training rows' per-feature range."""

    def __init__(self, X: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 cfg: TransferConfig) -> None:
        self.X, self.y, self.cfg = X, y, cfg
        self.n = int(X.shape[0])
        self.shape = tuple(X.shape[1:])
        self.images = image_augmented(cfg, self.shape)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        flat = X.reshape(self.n, -1)
        self.lo, self.hi = flat.min(axis=0), flat.max(axis=0)
        self.copies = copies_of(cfg, self.images)
        self.uniform = int(round(cfg.uniform_fraction * self.n)) if cfg.uniform_fraction > 0 else 0

    def __len__(self) -> int:
        return self.n * (1 + self.copies) + self.uniform

    def _augmented(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Normalized [k, d] inputs of the training rows ``rows``, cropped and flipped if asked."""
        base = self.X[rows]
        if self.images:
            base = augment_images(base, self.cfg, rng)
        return (base.reshape(len(rows), -1) - self.mean) / self.std

    def __getitem__(self, item: tuple[int, int, int, np.ndarray]) -> tuple[torch.Tensor, ...]:
        epoch, rank, number, idx = item
        rng = np.random.default_rng([self.cfg.seed, epoch, rank, number])
        idx = np.asarray(idx, dtype=np.int64)
        n, cfg = self.n, self.cfg
        x = np.empty((len(idx), int(np.prod(self.shape))), dtype=np.float32)
        y = np.zeros((len(idx), *self.y.shape[1:]), dtype=self.y.dtype)
        original = idx < n
        copy = (idx >= n) & (idx < n * (1 + self.copies))
        uniform = idx >= n * (1 + self.copies)
        x[original] = self.X[idx[original]].reshape(int(original.sum()), x.shape[1])
        y[original] = self.y[idx[original]]
        k = int(copy.sum())
        if k:
            z = self._augmented((idx[copy] - n) % n, rng)
            if cfg.mixup_alpha > 0:  # a blend with another training row, augmented alike
                lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, size=(k, 1)).astype(np.float32)
                z = lam * z + (1 - lam) * self._augmented(rng.integers(0, n, size=k), rng)
            if cfg.noise_std > 0:
                z = z + rng.normal(0.0, cfg.noise_std, size=z.shape).astype(np.float32)
            x[copy] = z * self.std + self.mean
        u = int(uniform.sum())
        if u:
            x[uniform] = rng.uniform(self.lo, self.hi, size=(u, x.shape[1]))
        return (torch.from_numpy(x.reshape(len(idx), *self.shape)), torch.from_numpy(y),
                torch.from_numpy(original), torch.from_numpy(copy))


class EpochBatches(torch.utils.data.Sampler):
    """This rank's batches of one epoch, as (epoch, rank, number, indices); ``epoch`` is set
    before each pass."""

    def __init__(self, size: int, batch_size: int, rt: Runtime, seed: int) -> None:
        self.size, self.batch_size, self.rt, self.seed = size, batch_size, rt, seed
        self.epoch = 0

    def _order(self) -> np.ndarray:
        if self.rt.distributed:
            sampler = DistributedSampler(range(self.size), num_replicas=self.rt.world_size,
                                         rank=self.rt.rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(self.epoch)
            return np.fromiter(iter(sampler), dtype=np.int64)
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return torch.randperm(self.size, generator=generator).numpy()

    def __iter__(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        order = self._order()
        for number, start in enumerate(range(0, len(order), self.batch_size)):
            yield self.epoch, self.rt.rank, number, order[start:start + self.batch_size]

    def __len__(self) -> int:
        per_rank = -(-self.size // self.rt.world_size) if self.rt.distributed else self.size
        return -(-per_rank // self.batch_size)


@torch.no_grad()
def label(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teachers' outputs on a batch already on the device, in float32, never autocast."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return teacher(x.float()).float()


@dataclass
class TransferStream:
    """The streamed transfer set: the training rows, the recipe, and the teachers that label
    each batch. Stands where a ``TransferSet`` does; ``len`` is one epoch's inputs."""

    inputs: TransferInputs
    teacher: nn.Module
    num_heads: int
    key: str
    summary: dict[str, Any] = field(default_factory=dict)
    ascent: bool = False  # move each batch's copies by the disagreement ascent before labelling

    def __len__(self) -> int:
        return len(self.inputs)

    def range_share(self, X: np.ndarray) -> float:
        """Share of X's feature values inside the training rows' per-feature [min, max] (the
        range of the uniform inputs; the streamed copies themselves are not kept)."""
        flat = X.reshape(X.shape[0], -1)
        return float(((flat >= self.inputs.lo) & (flat <= self.inputs.hi)).mean())

    def source(self, workers: int) -> StreamSource:
        return StreamSource(self, workers)


class StreamSource:
    """What ``training.fit.fit`` trains on instead of tensors: per epoch, batches of
    (x, teacher outputs, y, labelled) on the device."""

    def __init__(self, stream: TransferStream, workers: int) -> None:
        self.stream, self.workers = stream, workers
        self.rows = len(stream)

    def epoch(self, epoch: int, batch_size: int, rt: Runtime, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
        sampler = EpochBatches(self.rows, batch_size, rt, seed)
        sampler.epoch = epoch
        loader = DataLoader(self.stream.inputs, batch_size=None, sampler=sampler,
                            num_workers=self.workers, pin_memory=rt.device.type == "cuda")
        teacher = self.stream.teacher.eval()
        inputs = self.stream.inputs
        # The ascent's normalized units, the materialized set's: on the device once an epoch.
        mean = torch.as_tensor(inputs.mean, device=rt.device)
        std = torch.as_tensor(inputs.std, device=rt.device)
        for x, y, labelled, copy in loader:
            x = x.to(rt.device, non_blocking=True)
            if self.stream.ascent and bool(copy.any()):  # the copies moved before they are labelled
                flat = x.reshape(len(x), -1).clone()
                copy = copy.to(rt.device)
                moved = disagreement_ascent(teacher, (flat[copy] - mean) / std, inputs.cfg, rt)  # type: ignore[arg-type]
                flat[copy] = moved * std + mean
                x = flat.reshape(x.shape)
            yield (x, label(teacher, x), y.to(rt.device, non_blocking=True),
                   labelled.to(rt.device, non_blocking=True))
