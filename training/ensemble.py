"""Stage 1: the teachers' own sources. M members trained here from different seeds (one
checkpoint per member; a rerun skips finished members and resumes the one in progress), or a
user's precomputed member predictions on the transfer set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.checkpoints import Checkpoints
from training.config import EnsembleConfig, ModelConfig
from training.data import Dataset, DataError
from training.device import Runtime
from training.fit import fit
from training.losses import ground_truth_loss
from training.networks import Ensemble, build_network, member_model

log = logging.getLogger(__name__)


def train_ensemble(data: Dataset, model: ModelConfig, ensemble: EnsembleConfig, rt: Runtime,
                   checkpoints: Checkpoints) -> Ensemble:
    """Train (or load) the M members; member m is seeded with ensemble.seed + m."""
    model = member_model(model)  # the same members whatever the Hydra's head type
    key = checkpoints.key(model, ensemble, data.digest(), "member")
    members = []
    X, y = torch.as_tensor(data.train.X), torch.as_tensor(data.train.y)
    for m in range(ensemble.members):
        torch.manual_seed(ensemble.seed + m)
        net = build_network(model, data, 1)  # fresh weights under this member's seed

        def train(partial: Path) -> None:  # called at once, by fit_or_load
            fit(net, (X, y),
                lambda module, batch: ground_truth_loss(data.task, module(batch[0]), batch[1]),
                ensemble.optim, rt, checkpoint=partial, key=key,
                desc=f"member {m + 1}/{ensemble.members}", seed=ensemble.seed + m)

        members.append(checkpoints.fit_or_load(net, f"members/member_{m:03d}.pt", key, rt, train,
                                               label=f"member {m + 1}"))
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
