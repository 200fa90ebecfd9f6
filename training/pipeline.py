"""The whole pipeline: teachers, transfer set, two-phase distillation, evaluation, calibration,
export and publication. Every stage checkpoints into ``runs/<name>/`` so a rerun (or a rerun
after a crash) picks up where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.model import ModelMetadata
from training.config import RunConfig, TransferConfig
from training.data import Dataset, DataError, load_dataset
from training.distill import distill
from training.ensemble import MemberPredictions, load_member_predictions, train_ensemble
from training.evaluate import Outputs, evaluate, parameter_counts
from training.export import calibrate, export_checked
from training.networks import Ensemble, HydraNet
from training.onnx_members import OnnxEnsemble, load_onnx_members, parameter_count
from training.publish import publish
from training.report import write_report
from training.runtime import Runtime, config_key, predict, setup_runtime, teardown_runtime
from training.transfer import TransferSet, build_transfer_inputs, row_keys, transfer_range_share

log = logging.getLogger(__name__)

STAGES = ("ensemble", "distill", "evaluate", "export")


@dataclass
class Trained:
    data: Dataset
    teacher: Ensemble | OnnxEnsemble | None
    kd: HydraNet
    hydra: HydraNet
    transfer: TransferSet


def teachers(config: RunConfig, data: Dataset, rt: Runtime,
             run_dir: Path) -> tuple[Ensemble | OnnxEnsemble | None, TransferSet]:
    """The ensemble (None for a user's member predictions) and the transfer set it labels."""
    if config.ensemble.predictions:
        given = load_member_predictions(Path(config.ensemble.predictions), data, config.ensemble.members)
        return None, external_transfer_set(given, data, config)
    ensemble: Ensemble | OnnxEnsemble
    if config.ensemble.models:
        ensemble = load_onnx_members(config.ensemble.models, data, config.ensemble.members,
                                     config.ensemble.member_output)
        source = "member ONNX files"
        members_key = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in config.ensemble.models]
    else:
        ensemble = train_ensemble(config, data, rt, run_dir)
        source, members_key = "members trained here", []
    X, original = build_transfer_inputs(data.train.X, ensemble, config.distill.transfer, rt)
    outputs = predict(ensemble, torch.as_tensor(X), rt).numpy()
    y = np.zeros((len(X), *data.train.y.shape[1:]), dtype=data.train.y.dtype)
    y[original] = data.train.y
    summary: dict[str, Any] = {
        "source": source, "rows": int(len(X)),
        "training_rows": int(original.sum()), "added_rows": int((~original).sum()),
        "uniform_rows": int(round(config.distill.transfer.uniform_fraction * len(data.train)))}
    if isinstance(ensemble, OnnxEnsemble) and config.distill.transfer.perturb_steps > 0:
        summary["ignored_settings"] = ["distill.transfer.perturb_steps (no gradients through ONNX Runtime)"]
        log.warning("member ONNX files: distill.transfer.perturb_steps cannot apply (no gradients "
                    "through ONNX Runtime): ignored")
    parts = (config.ensemble, config.distill.transfer, data.digest(), *members_key)
    key = config_key(*parts)
    return ensemble, TransferSet(X, outputs, y, original, key, summary)


# Transfer settings that need the teachers themselves, which a predictions file does not give.
_TEACHER_ONLY = ("copies", "noise_std", "mixup_alpha", "perturb_steps", "uniform_fraction")


def external_transfer_set(given: MemberPredictions, data: Dataset, config: RunConfig) -> TransferSet:
    """A user's member predictions as a transfer set, without the held-out rows.

    Rows equal to a calibration or test row are dropped (and counted): distilling on them
    would leak the inputs the OOD threshold and the report are computed on. Rows equal to a
    training row get that row's label, for ``distill.gt_weight``.
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
        raise DataError(f"{config.ensemble.predictions}: every row of X is a calibration or test "
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
               if getattr(config.distill.transfer, name) != getattr(defaults, name)]
    if config.distill.gt_weight > 0 and not labelled.any():
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


def machine() -> dict[str, Any]:
    """What decides training's floating-point results besides the code and the config: runs on
    the same CPU model, torch build and thread count reproduce a model bit for bit."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "cache size") and key not in info:
                info[key] = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if info:  # family, model and cache size decide the kernels' blocking, and so the rounding
        cpu = (f"{info.get('model name', cpu)} family {info.get('cpu family', '?')} model "
               f"{info.get('model', '?')}, {info.get('cache size', '?')} cache, {os.cpu_count()} CPUs")
    # The vector instruction sets decide which kernels torch picks, and so the rounding.
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return {"cpu": cpu, "arch": platform.machine(), "isa": " ".join(isa), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def near_transfer(data: Dataset, transfer: TransferSet) -> dict[str, str]:
    """OOD sets drawn like a part of the transfer set: the student was distilled on inputs of
    their kind, so their figures say little about inputs of a kind it never saw."""
    out = {}
    if transfer.summary.get("uniform_rows", 0) > 0:
        for name, how in data.ood_drawn_like.items():
            if how == "uniform" and name in data.ood:
                out[name] = "drawn uniformly over the feature range, like the transfer set's uniform inputs"
    return out


def train(config: RunConfig, rt: Runtime, run_dir: Path) -> Trained:
    data = load_dataset(config.data)
    teacher, transfer = teachers(config, data, rt, run_dir)
    kd, hydra = distill(config, data, transfer, rt, run_dir)
    return Trained(data, teacher, kd, hydra, transfer)


def _metadata(config: RunConfig, data: Dataset, kind: str, num_heads: int, calibration: Outputs,
              summary: dict[str, Any]) -> ModelMetadata:
    ood, drift = calibrate(calibration.derived, config.calibration)
    return ModelMetadata(
        task=data.task, kind=kind, num_heads=num_heads, feature_shape=data.feature_shape,  # type: ignore[arg-type]
        class_labels=data.class_labels, output_dim=data.output_dim,
        preprocessing={**data.preprocessing, "normalization": "per-feature standardization inside the graph"},
        training=summary, ood=ood, drift=drift)


def run_pipeline(config: RunConfig, repository: Path | None, stop_after: str = "export") -> Path | None:
    """Run up to ``stop_after``; returns the published version folder when exporting."""
    if stop_after not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stop_after!r}")
    started = time.time()
    rt = setup_runtime(config.device)
    run_dir = Path(config.runs_dir) / config.name
    try:
        if stop_after == "ensemble":
            teachers(config, load_dataset(config.data), rt, run_dir)  # trains, or checks a user's
            return None
        trained = train(config, rt, run_dir)
        if stop_after == "distill" or not rt.is_main:
            return None
        data, teacher = trained.data, trained.teacher
        models: dict[str, nn.Module] = {"kd": trained.kd, "hydra": trained.hydra}
        if teacher is not None:
            models["ensemble"] = teacher
        if isinstance(teacher, OnnxEnsemble):
            params = parameter_counts(None, None, trained.kd, trained.hydra)
            per_member = [parameter_count(p) for p in teacher.paths]
            params.update(member=per_member[0], ensemble=sum(per_member))
        else:
            params = parameter_counts(teacher.members[0] if teacher else None, teacher, trained.kd,
                                      trained.hydra)
        report, outputs = evaluate(data, models, rt, params)
        summary = {"name": config.name, "data": data.name, "members": trained.hydra.num_heads,
                   "transfer_size": len(trained.transfer), "body": config.model.body,
                   "head": config.model.head, "temperature": config.distill.temperature,
                   "test": report["test"]["hydra"], "device": str(rt.device),
                   "world_size": rt.world_size}
        report["transfer"] = {**trained.transfer.summary, "ood_values_inside_transfer_range": {
            name: transfer_range_share(trained.transfer.X, X) for name, X in data.ood.items()},
            "near_transfer_ood_sets": near_transfer(data, trained.transfer)}
        report["machine"] = machine()
        # Stages loaded from a finished checkpoint were not fitted in this run: not listed.
        report["training_samples_per_s"] = {k: round(v, 1) for k, v in rt.throughput.items()}
        report.update(name=config.name, config=config.to_dict(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      device=str(rt.device), world_size=rt.world_size)

        def write(folder: Path) -> None:
            report["export"] = {}
            to_export: dict[str, tuple[nn.Module, str]] = {"model.onnx": (trained.hydra, "hydra")}
            if isinstance(teacher, Ensemble):  # members given as files are the user's to keep
                to_export["ensemble.onnx"] = (teacher, "ensemble")
            for filename, (net, kind) in to_export.items():
                meta = _metadata(config, data, kind, net.num_heads, outputs[kind]["calibration"],
                                 summary if kind == "hydra" else {**summary, "test": report["test"]["ensemble"]})
                report["export"][filename] = export_checked(net, meta, config.export, data.test.X, folder / filename)
                report["export"][filename]["ood_threshold"] = meta.ood.threshold if meta.ood else None
                if kind == "hydra":
                    report["calibration"] = _calibration_summary(meta, outputs["hydra"], config)
            report["duration_s"] = round(time.time() - started, 1)
            write_report(report, outputs, data, folder)
            (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))

        if stop_after == "evaluate":
            (run_dir / "report").mkdir(parents=True, exist_ok=True)
            write(run_dir / "report")
            return run_dir / "report"
        return publish(repository or Path("models"), config.name, write)
    finally:
        teardown_runtime(rt)


def _calibration_summary(meta: ModelMetadata, hydra: dict[str, Outputs], config: RunConfig) -> dict[str, Any]:
    """The OOD threshold and the rate at which it flags test and OOD inputs."""
    if meta.ood is None:
        return {}
    rates = {split: float(meta.ood.is_ood(o.derived[meta.ood.score]).mean())
             for split, o in hydra.items() if split == "test" or split.startswith("ood/")}
    return {"score": meta.ood.score, "alpha": meta.ood.alpha, "threshold": meta.ood.threshold,
            "n_calibration": meta.ood.n_calibration, "flag_rate": rates,
            "drift_bins": {c: len(r.expected) for c, r in meta.drift.items()}}

