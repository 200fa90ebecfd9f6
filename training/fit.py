"""The one generic fit loop every stage uses (AdamW, cosine schedule, per-epoch checkpoints
that let a crashed run resume where it stopped), and batched float32 prediction.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from tqdm import tqdm

from training.checkpoints import load_checkpoint, save_atomic
from training.config import OptimConfig
from training.device import Runtime
from training.uncertainty import derived_outputs, network_outputs

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]


class BatchSource(Protocol):
    """Batches made per epoch instead of held as tensors (the streamed transfer set)."""

    rows: int  # inputs per epoch, all ranks together

    def epoch(self, epoch: int, batch_size: int, rt: Runtime,
              seed: int) -> Iterator[tuple[torch.Tensor, ...]]: ...


def batches(tensors: tuple[torch.Tensor, ...], batch_size: int, rt: Runtime, seed: int,
            epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch of shuffled batches on ``rt``'s device; under DDP, this rank's share."""
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


def fit(model: nn.Module, tensors: tuple[torch.Tensor, ...] | BatchSource, loss_fn: LossFn,
        optim: OptimConfig, rt: Runtime, *, checkpoint: Path | None, key: str, desc: str,
        seed: int) -> nn.Module:
    """Train ``model`` in place with AdamW and a cosine schedule; resumable per epoch.

    ``tensors`` are CPU tensors sharing their first axis, or a ``BatchSource`` that makes each
    epoch's batches; ``loss_fn(module, batch)`` returns a scalar. Under DDP the wrapped module
    is passed to ``loss_fn``; the plain module is returned and checkpointed, so checkpoints
    load anywhere.
    """
    model.to(rt.device)
    source = None if isinstance(tensors, tuple) else tensors
    rows = source.rows if source is not None else int(tensors[0].shape[0])
    epochs = epochs_for(optim, rows, rt.world_size)
    if epochs > optim.epochs:
        log.info("%s: %d epochs to reach %d optimizer steps on %d rows", desc, epochs, optim.min_steps,
                 rows)
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
        epoch_batches = (source.epoch(epoch, optim.batch_size, rt, seed) if source is not None
                         else batches(tensors, optim.batch_size, rt, seed, epoch))
        for batch in epoch_batches:
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


@torch.no_grad()
def predict_outputs(model: nn.Module, X: torch.Tensor, rt: Runtime, task: str,
                    batch_size: int = 1024) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-head outputs (as ``predict``) and the derived outputs as the exported graph
    computes them: a regression network that standardizes its targets gets them from its
    standardized heads (``training.uncertainty.network_outputs``); classification outputs are
    derived from the gathered heads on the CPU."""
    if task == "regression":
        model.eval()
        parts = [network_outputs(model, X[i : i + batch_size].to(rt.device).float(), task)
                 for i in range(0, X.shape[0], batch_size)]
        heads = torch.cat([h.float().cpu() for h, _ in parts])
        return heads, {k: torch.cat([d[k].float().cpu() for _, d in parts]) for k in parts[0][1]}
    heads = predict(model, X, rt, batch_size)
    return heads, derived_outputs(task, heads)
