"""Where training runs: CUDA when present (bf16 autocast), the CPU otherwise, several processes
under ``torchrun`` (DistributedDataParallel; nccl on GPUs, gloo on the CPU).

Also the one generic fit loop every stage uses, with per-epoch checkpoints that let a crashed
run resume where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from tqdm import tqdm

from contract.files import write_atomic
from training.config import ConfigError, OptimConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    # Training throughput per fitted stage (samples/s, all ranks together), for the report.
    throughput: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's environment (if any) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' was asked for but torch sees no CUDA device")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    log.info("training on %s (rank %d of %d)", dev, rank, world_size)
    return Runtime(dev, rank, world_size)


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def config_key(*parts: Any) -> str:
    """A short hash of whatever decides a checkpoint's content, to refuse stale ones."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written for ``key``; None if absent or stale."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: start that stage over
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.get("key") != key:
        log.warning("ignoring checkpoint %s: written for another configuration", path)
        return None
    return state


LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]


def _batches(tensors: tuple[torch.Tensor, ...], batch_size: int, rt: Runtime, seed: int,
             epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
    dataset = TensorDataset(*tensors)
    if rt.distributed:
        sampler: Any = DistributedSampler(dataset, num_replicas=rt.world_size, rank=rt.rank,
                                          shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False)
    for batch in loader:
        yield tuple(t.to(rt.device, non_blocking=True) for t in batch)


def epochs_for(optim: OptimConfig, rows: int, world_size: int = 1) -> int:
    """``optim.epochs``, or more when that many epochs give fewer than ``optim.min_steps`` steps."""
    steps_per_epoch = max(1, math.ceil(rows / (optim.batch_size * world_size)))
    return max(optim.epochs, math.ceil(optim.min_steps / steps_per_epoch))


def fit(model: nn.Module, tensors: tuple[torch.Tensor, ...], loss_fn: LossFn, optim: OptimConfig,
        rt: Runtime, *, checkpoint: Path | None, key: str, desc: str, seed: int) -> nn.Module:
    """Train ``model`` in place with AdamW and a cosine schedule; resumable per epoch.

    ``tensors`` are CPU tensors sharing their first axis; ``loss_fn(module, batch)`` returns
    a scalar. Under DDP the wrapped module is passed to ``loss_fn``; the plain module is
    returned and checkpointed, so checkpoints load anywhere.
    """
    model.to(rt.device)
    epochs = epochs_for(optim, int(tensors[0].shape[0]), rt.world_size)
    if epochs > optim.epochs:
        log.info("%s: %d epochs to reach %d optimizer steps on %d rows", desc, epochs, optim.min_steps,
                 int(tensors[0].shape[0]))
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    start = 0
    state = load_checkpoint(checkpoint, key) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"])
        log.info("%s: resuming after epoch %d from %s", desc, start, checkpoint)
    wrapped: nn.Module = model
    if rt.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    bar = tqdm(total=epochs, initial=start, desc=desc, unit="ep", disable=not rt.is_main,
               file=sys.stderr, mininterval=1.0, dynamic_ncols=True, leave=True)
    seen, started = 0, time.perf_counter()
    for epoch in range(start, epochs):
        model.train()
        total, count = 0.0, 0
        for batch in _batches(tensors, optim.batch_size, rt, seed, epoch):
            with rt.autocast():
                loss = loss_fn(wrapped, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * batch[0].shape[0]
            count += batch[0].shape[0]
        sched.step()
        seen += count
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        bar.update(1)
        if checkpoint is not None and rt.is_main:
            save_atomic({"key": key, "epoch": epoch + 1, "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, checkpoint)
        rt.barrier()
    bar.close()
    elapsed = time.perf_counter() - started
    if seen and elapsed > 0:
        rt.throughput[desc] = seen * rt.world_size / elapsed
        log.info("%s: %.0f samples/s", desc, rt.throughput[desc])
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, rt: Runtime, batch_size: int = 1024) -> torch.Tensor:
    """Per-head outputs of ``model`` on raw inputs X, in float32 on the CPU.

    Always computed in float32, never under autocast, even when training steps use bf16:
    teacher targets, the report and the OOD calibration must describe the graph that is
    served, which runs in float32.
    """
    model.eval()
    outs = []
    for i in range(0, X.shape[0], batch_size):
        outs.append(model(X[i : i + batch_size].to(rt.device).float()).float().cpu())
    return torch.cat(outs)
