"""Stage 1: the teachers. Either M members trained from different seeds (one checkpoint per
member; a rerun skips finished members and resumes the one in progress), or a user's
precomputed member predictions on the transfer set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.config import RunConfig
from training.data import Dataset, DataError
from training.scaling import feature_stats, target_stats
from training.losses import ground_truth_loss
from training.networks import Ensemble, HydraNet, NetSpec
from training.runtime import Runtime, config_key, fit, load_checkpoint, save_atomic

log = logging.getLogger(__name__)


def net_spec(data: Dataset) -> NetSpec:
    out = data.num_classes if data.task == "classification" else data.output_dim
    return NetSpec(data.task, data.feature_shape, out)


def new_network(config: RunConfig, data: Dataset, num_heads: int) -> HydraNet:
    """A network with the data's normalization statistics in its buffers."""
    net = HydraNet(config.model, net_spec(data), num_heads)
    x_mean, x_std = feature_stats(data.train.X.reshape(len(data.train), -1))
    if data.task == "regression":
        net.set_stats(x_mean, x_std, *target_stats(data.train.y))
    else:
        net.set_stats(x_mean, x_std)
    return net


def _targets(data: Dataset) -> torch.Tensor:
    return torch.as_tensor(data.train.y)


def train_ensemble(config: RunConfig, data: Dataset, rt: Runtime, run_dir: Path) -> Ensemble:
    """Train (or load) the M members; member m is seeded with ensemble.seed + m."""
    key = config_key(config.data, config.model, config.ensemble, data.digest(), "member")
    members = []
    X, y = torch.as_tensor(data.train.X), _targets(data)
    for m in range(config.ensemble.members):
        final = run_dir / "members" / f"member_{m:03d}.pt"
        torch.manual_seed(config.ensemble.seed + m)
        net = new_network(config, data, 1)  # fresh weights under this member's seed
        state = load_checkpoint(final, key)
        if state is None:
            fit(net, (X, y),
                lambda model, batch: ground_truth_loss(data.task, model(batch[0]), batch[1]),
                config.ensemble.optim, rt, checkpoint=final.with_suffix(".partial.pt"),
                key=key, desc=f"member {m + 1}/{config.ensemble.members}",
                seed=config.ensemble.seed + m)
            if rt.is_main:
                save_atomic({"key": key, "model": net.state_dict(), "config": config.to_dict()}, final)
                final.with_suffix(".partial.pt").unlink(missing_ok=True)
            rt.barrier()
        else:
            net.load_state_dict(state["model"])
            log.info("member %d: loaded finished checkpoint %s", m + 1, final)
        members.append(net.to(rt.device).eval())
    return Ensemble(members)


@dataclass(frozen=True)
class MemberPredictions:
    """A user's ensemble, given as its members' outputs on transfer inputs.

    X [N, *feature_shape]; outputs [N, M, C] logits or [N, M, 2, D] Gaussians.
    """

    X: np.ndarray
    outputs: np.ndarray

    @property
    def num_members(self) -> int:
        return int(self.outputs.shape[1])


def load_member_predictions(path: Path, data: Dataset, expected_members: int) -> MemberPredictions:
    """Read and check an .npz with X and logits (classification) or mean + var (regression)."""
    if not path.is_file():
        raise DataError(f"member predictions file {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: np.asarray(f[k]) for k in f.files}
    if "X" not in arrays:
        raise DataError(f"{path}: expected array 'X' (the transfer inputs), found {sorted(arrays)}")
    X = arrays["X"].astype(np.float32)
    if tuple(X.shape[1:]) != data.feature_shape:
        raise DataError(f"{path}: X rows have shape {list(X.shape[1:])}, expected "
                        f"{list(data.feature_shape)} like the data set")
    if data.task == "classification":
        if "logits" not in arrays:
            raise DataError(f"{path}: expected array 'logits' [N, M, C], found {sorted(arrays)}")
        outputs = arrays["logits"].astype(np.float32)
        if outputs.ndim != 3:
            raise DataError(f"{path}: logits must be [N, M, C], got shape {list(outputs.shape)}")
        if outputs.shape[2] != data.num_classes:
            raise DataError(f"{path}: logits have C={outputs.shape[2]} classes, the data set has "
                            f"{data.num_classes}")
    else:
        if "mean" not in arrays or "var" not in arrays:
            raise DataError(f"{path}: expected arrays 'mean' and 'var' [N, M, D], found {sorted(arrays)}")
        mean, var = arrays["mean"].astype(np.float32), arrays["var"].astype(np.float32)
        if mean.ndim == 2:
            mean, var = mean[..., None], var[..., None]
        if mean.shape != var.shape or mean.ndim != 3:
            raise DataError(f"{path}: mean {list(mean.shape)} and var {list(var.shape)} must both be [N, M, D]")
        if mean.shape[2] != data.output_dim:
            raise DataError(f"{path}: D={mean.shape[2]} outputs, the data set has {data.output_dim}")
        if np.any(var <= 0):
            raise DataError(f"{path}: var must be > 0 everywhere")
        outputs = np.stack([mean, var], axis=2)  # [N, M, 2, D]
    if outputs.shape[0] != X.shape[0]:
        raise DataError(f"{path}: X has {X.shape[0]} rows but the predictions have {outputs.shape[0]}")
    if expected_members and outputs.shape[1] != expected_members:
        raise DataError(f"{path}: predictions of M={outputs.shape[1]} members, the config says "
                        f"ensemble.members = {expected_members}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(outputs))):
        raise DataError(f"{path}: X or the predictions contain NaN/Inf")
    return MemberPredictions(X, outputs)
