"""The whole pipeline: teachers, transfer set, two-phase distillation, evaluation, calibration,
export and publication, composed from the stages' modules. Every stage checkpoints into
``runs/<name>/`` so a rerun (or a rerun after a crash) picks up where the last one stopped.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from training.checkpoints import Checkpoints
from training.config import RunConfig
from training.data import Dataset
from training.datasets import load_dataset
from training.device import Runtime, setup_runtime, teardown_runtime
from training.distill import Students, distill
from training.evaluate import SplitOutputs, evaluate, parameter_counts
from training.export import export_models
from training.networks import Ensemble
from training.publish import check_publishable, publish
from training.report import write_report
from training.teachers import Teachers, teachers
from training.stream import TransferStream
from training.transfer import TransferSet

log = logging.getLogger(__name__)

STAGES = ("ensemble", "distill", "evaluate", "export")


@dataclass(frozen=True)
class Trained:
    """What training gives the evaluation: the data, the teachers and the students."""

    data: Dataset
    teachers: Teachers
    students: Students


@dataclass(frozen=True)
class Evaluation:
    """The report of a trained run, but for what export adds, and every model's raw outputs
    (model -> split -> outputs), for the plots and the calibration."""

    report: dict[str, Any]
    outputs: dict[str, dict[str, SplitOutputs]]
    # What each published model's metadata says about its training, by kind.
    summaries: dict[str, dict[str, Any]]


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


def near_transfer(data: Dataset, transfer: TransferSet | TransferStream) -> dict[str, str]:
    """OOD sets drawn like a part of the transfer set: the student was distilled on inputs of
    their kind, so their figures say little about inputs of a kind it never saw."""
    out = {}
    if transfer.summary.get("uniform_rows", 0) > 0:
        for name, how in data.ood_drawn_like.items():
            if how == "uniform" and name in data.ood:
                out[name] = "drawn uniformly over the feature range, like the transfer set's uniform inputs"
    return out


def train(config: RunConfig, rt: Runtime, checkpoints: Checkpoints,
          publish_to: Path | None = None) -> Trained:
    """Load the data and train; with ``publish_to``, first make sure the run may publish there
    (before any training time is spent)."""
    data = load_dataset(config.data)
    if publish_to is not None:
        check_publishable(publish_to, config.name, data.task, data.class_labels, data.feature_shape,
                          config.export.replace_model)
    taught = teachers(data, config.model, config.ensemble, config.distill, rt, checkpoints)
    students = distill(data, taught.transfer, config.model, config.distill, rt, checkpoints)
    return Trained(data, taught, students)


def evaluate_trained(config: RunConfig, trained: Trained, rt: Runtime) -> Evaluation:
    """Evaluate ensemble, KD student and Hydra, and add what the run itself tells the report."""
    data, teacher, students = trained.data, trained.teachers.ensemble, trained.students
    transfer = trained.teachers.transfer
    models: dict[str, torch.nn.Module] = {"kd": students.kd, "hydra": students.hydra}
    if teacher is not None:
        models["ensemble"] = teacher
    params = parameter_counts(teacher, students.kd, students.hydra)
    measured, outputs = evaluate(data, models, rt, params)
    summary = {"name": config.name, "data": data.name, "members": students.hydra.num_heads,
               "transfer_size": len(transfer), "body": config.model.body,
               "head": config.model.head, "temperature": config.distill.temperature,
               "test": measured["test"]["hydra"], "device": str(rt.device),
               "world_size": rt.world_size}
    report = {
        **measured,
        "transfer": {**transfer.summary, "ood_values_inside_transfer_range": {
            name: transfer.range_share(X) for name, X in data.ood.items()},
            "near_transfer_ood_sets": near_transfer(data, transfer)},
        "machine": machine(),
        # Stages loaded from a finished checkpoint were not fitted in this run: not listed.
        "training_samples_per_s": {k: round(v, 1) for k, v in rt.throughput.items()},
        "name": config.name, "config": config.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(rt.device), "world_size": rt.world_size}
    summaries = {"hydra": summary}
    if "ensemble" in measured["test"]:
        summaries["ensemble"] = {**summary, "test": measured["test"]["ensemble"]}
    return Evaluation(report, outputs, summaries)


def write_version(folder: Path, config: RunConfig, trained: Trained, evaluation: Evaluation,
                  started: float) -> None:
    """Export into ``folder``, then write the full report and the config beside the models."""
    teacher = trained.teachers.ensemble
    exported = export_models(folder, trained.data, trained.students.hydra,
                             # members given as files are the user's to keep
                             teacher if isinstance(teacher, Ensemble) else None,
                             evaluation.outputs, evaluation.summaries, config.calibration, config.export)
    report = {**evaluation.report, "export": exported.files, "calibration": exported.calibration,
              "duration_s": round(time.time() - started, 1)}
    write_report(report, evaluation.outputs, trained.data, folder)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))


def run_pipeline(config: RunConfig, repository: Path | None, stop_after: str = "export") -> Path | None:
    """Run up to ``stop_after``; returns the published version folder when exporting."""
    if stop_after not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stop_after!r}")
    started = time.time()
    rt = setup_runtime(config.device)
    checkpoints = Checkpoints.of_run(config)
    try:
        if stop_after == "ensemble":  # trains, or checks a user's
            teachers(load_dataset(config.data), config.model, config.ensemble, config.distill, rt,
                     checkpoints)
            return None
        repository = repository or Path("models")
        trained = train(config, rt, checkpoints, repository if stop_after == "export" else None)
        if stop_after == "distill" or not rt.is_main:
            return None
        write = partial(write_version, config=config, trained=trained,
                        evaluation=evaluate_trained(config, trained, rt), started=started)
        if stop_after == "evaluate":
            folder = checkpoints.folder / "report"
            folder.mkdir(parents=True, exist_ok=True)
            write(folder)
            return folder
        return publish(repository, config.name, write)
    finally:
        teardown_runtime(rt)
