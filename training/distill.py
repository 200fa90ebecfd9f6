"""Stage 2: Hydra distillation in two phases (docs/design.md, "The method").

Phase 1 trains body + one head on the ensemble mean at temperature T: the classic KD student,
kept as the baseline. Phase 2 copies that head M times and trains body + heads so head m
imitates member m.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from training.checkpoints import Checkpoints
from training.config import DistillConfig, ModelConfig, OptimConfig
from training.data import Dataset
from training.device import Runtime
from training.fit import BatchSource, LossFn, fit
from training.losses import distill_loss, ground_truth_loss
from training.networks import HydraNet, build_network
from training.stream import TransferStream
from training.transfer import TransferSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Students:
    """What distillation gives: the KD student (one head, the baseline) and the Hydra (M heads)."""

    kd: HydraNet
    hydra: HydraNet


def distill_loss_fn(config: DistillConfig, task: str) -> LossFn:
    """Distillation at ``config.temperature``, plus ``config.gt_weight`` times the ground-truth
    loss on the labelled rows of a batch."""
    t, w = config.temperature, config.gt_weight

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, teacher, y, labelled = batch
        student = model(x)
        value = distill_loss(task, student, teacher, t)
        if w > 0 and bool(labelled.any()):
            value = value + w * ground_truth_loss(task, student[labelled], y[labelled])
        return value

    return loss


def distill(data: Dataset, transfer: TransferSet | TransferStream, model: ModelConfig,
            config: DistillConfig, rt: Runtime, checkpoints: Checkpoints) -> Students:
    """The KD student and the Hydra, both fitted on ``transfer`` (or loaded when finished);
    a streamed transfer set is made and labelled batch by batch."""
    num_heads = transfer.num_heads
    tensors: tuple[torch.Tensor, ...] | BatchSource
    if isinstance(transfer, TransferStream):
        tensors = transfer.source(config.loader_workers)
    else:
        tensors = (torch.as_tensor(transfer.X), torch.as_tensor(transfer.teacher),
                   torch.as_tensor(transfer.y), torch.as_tensor(transfer.labelled))
    # The number of loader workers changes nothing but speed: not part of the key.
    base = (model, replace(config, loader_workers=0), transfer.key, data.digest())
    loss = distill_loss_fn(config, data.task)

    def phase(net: HydraNet, name: str, key: str, optim: OptimConfig, label: str) -> HydraNet:
        def train(partial: Path) -> None:
            fit(net, tensors, loss, optim, rt, checkpoint=partial, key=key, desc=f"hydra {label}",
                seed=config.seed)
        return checkpoints.fit_or_load(net, name, key, rt, train, label=label)

    torch.manual_seed(config.seed)
    kd = phase(build_network(model, data, 1), "kd.pt", checkpoints.key(*base, "phase1"),
               config.phase1, "phase 1")

    hydra = build_network(model, data, num_heads)
    hydra.body.load_state_dict(kd.body.state_dict())
    hydra.heads = kd.heads.replicate(num_heads)
    hydra.set_stats(kd.x_mean, kd.x_std, kd.y_mean, kd.y_std)
    hydra = phase(hydra, "hydra.pt", checkpoints.key(*base, "phase2", num_heads), config.phase2,
                  "phase 2")
    return Students(kd, hydra)
