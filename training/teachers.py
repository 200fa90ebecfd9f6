"""Stage 1 as the pipeline sees it: the teachers (members trained here, member files, or a
user's member predictions) and the transfer set they label.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoints import Checkpoints, config_key
from training.config import DistillConfig, EnsembleConfig, ModelConfig, TransferConfig
from training.data import Dataset, DataError
from training.device import Runtime
from training.ensemble import MemberPredictions, load_member_predictions, train_ensemble
from training.fit import predict
from training.networks import Ensemble
from training.members import FileEnsemble, load_member_files
from training.scaling import feature_stats
from training.stream import TransferInputs, TransferStream
from training.transfer import TransferSet, ascent_applies, build_transfer_inputs, row_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teachers:
    """The ensemble (None when a user gave only its predictions) and the transfer set it labels
    (materialized, or streamed: then labelled batch by batch while distilling)."""

    ensemble: Ensemble | FileEnsemble | None
    transfer: TransferSet | TransferStream


def teachers(data: Dataset, model: ModelConfig, ensemble: EnsembleConfig, distill: DistillConfig,
             rt: Runtime, checkpoints: Checkpoints) -> Teachers:
    """Train (or load) the members, or read a user's, then label the transfer set with them."""
    if ensemble.predictions:
        given = load_member_predictions(Path(ensemble.predictions), data, ensemble.members)
        return Teachers(None, external_transfer_set(given, data, ensemble.predictions, distill))
    members: Ensemble | FileEnsemble
    if ensemble.models:
        members = load_member_files(ensemble.models, data, ensemble.members, ensemble.member_output,
                                    ensemble.member_model, rt.device)
        formats = {f.format for f in members.files}
        source = "member ONNX files" if formats == {"onnx"} else "member files"
        members_key = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in ensemble.models]
        # Whether the ascent can run decides the transfer set, so it is part of the key.
        members_key.append(f"gradients: {members.differentiable}")
    else:
        members = train_ensemble(data, model, ensemble, rt, checkpoints)
        source, members_key = "members trained here", []
    key = config_key(ensemble, distill.transfer, data.digest(), *members_key)
    if distill.transfer.stream:
        return Teachers(members, streamed(data, members, source, distill, key))
    X, original = build_transfer_inputs(data.train.X, members, distill.transfer, rt)
    outputs = predict(members, torch.as_tensor(X), rt).numpy()
    y = np.zeros((len(X), *data.train.y.shape[1:]), dtype=data.train.y.dtype)
    y[original] = data.train.y
    summary: dict[str, Any] = {
        "source": source, "mode": "materialized", "rows": int(len(X)),
        "training_rows": int(original.sum()), "added_rows": int((~original).sum()),
        "uniform_rows": int(round(distill.transfer.uniform_fraction * len(data.train)))}
    summary.update(_files_summary(members, distill))
    return Teachers(members, TransferSet(X, outputs, y, original, key, summary))


def _files_summary(members: Ensemble | FileEnsemble, distill: DistillConfig) -> dict[str, Any]:
    """For members given as files: each file, and the ascent listed as not applied when some
    member gives no gradients (with the member and the reason)."""
    if not isinstance(members, FileEnsemble):
        return {}
    out: dict[str, Any] = {"member_files": members.summary()}
    if distill.transfer.perturb_steps > 0 and not ascent_applies(distill.transfer, members):
        why = "; ".join(members.no_gradients())
        out["ignored_settings"] = [f"distill.transfer.perturb_steps (no gradients through {why})"]
        log.warning("distill.transfer.perturb_steps cannot apply, no gradients through %s: ignored", why)
    return out


def streamed(data: Dataset, members: Ensemble | FileEnsemble, source: str, distill: DistillConfig,
             key: str) -> TransferStream:
    """The transfer set as a stream of batches from the training rows (``training.stream``),
    with the noise and mixup in the same normalized units as the materialized set's."""
    if isinstance(members, Ensemble):  # members trained here: their own normalization
        mean, std = members.members[0].x_mean.cpu().numpy(), members.members[0].x_std.cpu().numpy()
    elif isinstance(members, FileEnsemble):
        mean, std = members.x_mean, members.x_std
    else:  # pragma: no cover - the config check refuses streaming without members
        mean, std = feature_stats(data.train.X)
    inputs = TransferInputs(data.train.X, data.train.y, mean, std, distill.transfer)
    n = len(data.train)
    summary: dict[str, Any] = {
        "source": source, "mode": "streamed", "loader_workers": distill.loader_workers,
        "rows": len(inputs), "training_rows": n,
        "added_rows": len(inputs) - n, "uniform_rows": inputs.uniform}
    summary.update(_files_summary(members, distill))
    ascent = ascent_applies(distill.transfer, members)
    summary["ascent_steps_per_batch"] = distill.transfer.perturb_steps if ascent else 0
    log.info("transfer set: streamed, %d inputs an epoch (%d training, %d added), %d loader workers%s",
             len(inputs), n, len(inputs) - n, distill.loader_workers,
             f"; the copies of every batch moved by {distill.transfer.perturb_steps} ascent steps" if ascent else "")
    return TransferStream(inputs, members, members.num_heads, key, summary, ascent)


# Transfer settings that need the teachers themselves, which a predictions file does not give.
_TEACHER_ONLY = ("copies", "noise_std", "mixup_alpha", "perturb_steps", "uniform_fraction")


def external_transfer_set(given: MemberPredictions, data: Dataset, source: str,
                          distill: DistillConfig) -> TransferSet:
    """A user's member predictions as a transfer set, without the held-out rows.

    Rows equal to a calibration or test row are dropped (and counted): distilling on them
    would leak the inputs the OOD threshold and the report are computed on. Rows equal to a
    training row get that row's label, for ``distill.gt_weight``. ``source`` names the file.
    """
    held_out = {"calibration": set(row_keys(data.calibration.X)), "test": set(row_keys(data.test.X))}
    train_rows = {k: i for i, k in enumerate(row_keys(data.train.X))}
    keys = row_keys(given.X)
    keep = np.ones(len(keys), dtype=bool)
    dropped = {name: 0 for name in held_out}
    for i, k in enumerate(keys):
        for name, rows in held_out.items():
            if k in rows:
                dropped[name] += 1
                keep[i] = False
                break
    if not keep.any():
        raise DataError(f"{source}: every row of X is a calibration or test "
                        "row of the data set; give member predictions on training (or other) inputs")
    X, teacher = given.X[keep], given.outputs[keep]
    y = np.zeros((len(X), *data.train.y.shape[1:]), dtype=data.train.y.dtype)
    labelled = np.zeros(len(X), dtype=bool)
    for i, k in enumerate(np.asarray(keys, dtype=object)[keep]):
        j = train_rows.get(k)
        if j is not None:
            y[i], labelled[i] = data.train.y[j], True
    defaults = TransferConfig()
    ignored = [f"distill.transfer.{name}" for name in _TEACHER_ONLY
               if getattr(distill.transfer, name) != getattr(defaults, name)]
    if distill.gt_weight > 0 and not labelled.any():
        ignored.append("distill.gt_weight (no row of the file is a training row)")
    if sum(dropped.values()):
        log.warning("member predictions: dropped %d calibration and %d test rows from the transfer "
                    "set (they must stay unseen)", dropped["calibration"], dropped["test"])
    if ignored:
        log.warning("member predictions: %s cannot apply without the members themselves: ignored",
                    ", ".join(ignored))
    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes() + np.ascontiguousarray(teacher).tobytes())
    summary = {"source": "member predictions file", "rows_given": int(len(keys)),
               "dropped_held_out_rows": dropped, "rows": int(len(X)),
               "training_rows": int(labelled.sum()), "ignored_settings": ignored}
    key = config_key("predictions", digest.hexdigest(), data.digest())
    return TransferSet(X, teacher, y, labelled, key, summary)
