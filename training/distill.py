"""Stage 2: Hydra distillation in two phases (docs/design.md, "The method").

Phase 1 trains body + one head on the ensemble mean at temperature T: the classic KD student,
kept as the baseline. Phase 2 copies that head M times and trains body + heads so head m
imitates member m.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from training.config import RunConfig
from training.data import Dataset
from training.ensemble import new_network
from training.losses import distill_loss, ground_truth_loss
from training.networks import HydraNet
from training.runtime import Runtime, config_key, fit, load_checkpoint, save_atomic
from training.transfer import TransferSet

log = logging.getLogger(__name__)


def _loss_fn(config: RunConfig, task: str):  # noqa: ANN202 - a closure over the config
    t, w = config.distill.temperature, config.distill.gt_weight

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, teacher, y, labelled = batch
        student = model(x)
        value = distill_loss(task, student, teacher, t)
        if w > 0 and bool(labelled.any()):
            value = value + w * ground_truth_loss(task, student[labelled], y[labelled])
        return value

    return loss


def _stage(config: RunConfig, data: Dataset, rt: Runtime, path: Path, key: str, net: HydraNet,
           tensors: tuple[torch.Tensor, ...], phase: str) -> HydraNet:
    state = load_checkpoint(path, key)
    if state is not None:
        net.load_state_dict(state["model"])
        log.info("%s: loaded finished checkpoint %s", phase, path)
        return net.to(rt.device).eval()
    optim = config.distill.phase1 if phase == "phase 1" else config.distill.phase2
    fit(net, tensors, _loss_fn(config, data.task), optim, rt,
        checkpoint=path.with_suffix(".partial.pt"), key=key, desc=f"hydra {phase}",
        seed=config.distill.seed)
    if rt.is_main:
        save_atomic({"key": key, "model": net.state_dict(), "config": config.to_dict()}, path)
        path.with_suffix(".partial.pt").unlink(missing_ok=True)
    rt.barrier()
    return net.eval()


def distill(config: RunConfig, data: Dataset, transfer: TransferSet, rt: Runtime,
            run_dir: Path) -> tuple[HydraNet, HydraNet]:
    """Returns (kd_student with one head, hydra with M heads), both fitted on ``transfer``."""
    num_heads = transfer.teacher.shape[1]
    tensors = (torch.as_tensor(transfer.X), torch.as_tensor(transfer.teacher),
               torch.as_tensor(transfer.y), torch.as_tensor(transfer.labelled))
    base = (config.data, config.model, config.distill, transfer.key, data.digest())

    torch.manual_seed(config.distill.seed)
    kd = _stage(config, data, rt, run_dir / "kd.pt", config_key(*base, "phase1"),
                new_network(config, data, 1), tensors, "phase 1")

    hydra = new_network(config, data, num_heads)
    hydra.body.load_state_dict(kd.body.state_dict())
    hydra.heads = kd.heads.replicate(num_heads)
    hydra.set_stats(kd.x_mean, kd.x_std, kd.y_mean, kd.y_std)
    hydra = _stage(config, data, rt, run_dir / "hydra.pt", config_key(*base, "phase2", num_heads),
                   hydra, tensors, "phase 2")
    return kd, hydra
