"""Stage 3: ensemble vs KD student vs Hydra, side by side, on test, OOD and shifted data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.model import UNCERTAINTY_COMPONENTS
from training.baseline import linear_baseline
from training.data import Dataset
from training.device import Runtime
from training.eval_metrics import (classification_metrics, fidelity, ood_metrics, regression_metrics,
                                   reliability_bins)
from training.fit import predict_outputs
from training.losses import gaussian_kl
from training.networks import Ensemble, count_parameters
from training.members import FileEnsemble
from training.report_md import meets

log = logging.getLogger(__name__)

# Targets for the default digits model: what a Hydra must keep of its ensemble (docs/design.md).
GOALS = {"accuracy_gap_points": 0.5, "nll_ratio": 1.15, "spearman_model_test": 0.8,
         "spearman_model_ood": 0.9, "auroc_ratio": 0.97, "param_ratio": 1.5,
         # Regression: RMSE within 5% of the ensemble's, NLL at most 0.1 nat worse, and 95%
         # intervals that hold on held-out rows (at least 90%) and as well as the ensemble's.
         "rmse_ratio": 1.05, "nll_gap_nats": 0.1, "coverage_95": 0.90, "coverage_95_gap_points": 5.0}


@dataclass
class SplitOutputs:
    """A model's per-head outputs and derived outputs (numpy) on one named split."""

    heads: np.ndarray
    derived: dict[str, np.ndarray] = field(default_factory=dict)


def run_model(model: nn.Module, X: np.ndarray, task: str, rt: Runtime) -> SplitOutputs:
    heads, derived = predict_outputs(model, torch.as_tensor(X), rt, task)
    return SplitOutputs(heads.numpy(), {k: v.numpy() for k, v in derived.items()})


def splits_of(data: Dataset) -> dict[str, np.ndarray]:
    """Every input set evaluated, by name: test, calibration, ood/<name>, shift/<level>."""
    out = {"test": data.test.X, "calibration": data.calibration.X}
    out.update({f"ood/{k}": v for k, v in data.ood.items()})
    out.update({f"shift/{k:g}": v.X for k, v in data.shift.items()})
    return out


def _quality(task: str, o: SplitOutputs, y: np.ndarray) -> dict[str, float]:
    if task == "classification":
        return classification_metrics(o.derived["mean_probs"], y)
    return regression_metrics(o.derived["mean"], o.derived["variance"], y)


def _per_head(task: str, student: SplitOutputs, teacher: SplitOutputs | None, y: np.ndarray) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    heads = torch.as_tensor(student.heads)
    if task == "classification":
        out["accuracy"] = [float((student.heads[:, m].argmax(-1) == y).mean())
                           for m in range(heads.shape[1])]
        if teacher is not None:
            t = torch.log_softmax(torch.as_tensor(teacher.heads), -1)
            s = torch.log_softmax(heads, -1)
            out["kl_member_to_head"] = (t.exp() * (t - s)).sum(-1).mean(0).tolist()
    else:
        out["rmse"] = [float(np.sqrt(((student.heads[:, m, 0] - y) ** 2).mean()))
                       for m in range(heads.shape[1])]
        if teacher is not None:
            t = torch.as_tensor(teacher.heads)
            kl = gaussian_kl(t[:, :, 0], t[:, :, 1], heads[:, :, 0], heads[:, :, 1])
            out["kl_member_to_head"] = kl.sum(-1).mean(0).tolist()
    return out


def evaluate(data: Dataset, models: dict[str, nn.Module], rt: Runtime,
             parameters: dict[str, int]) -> tuple[dict[str, Any], dict[str, dict[str, SplitOutputs]]]:
    """The report's numbers, and the raw outputs (for plots).

    ``models`` holds "hydra" and "kd", and "ensemble" when the members are available.
    """
    task = data.task
    inputs = splits_of(data)
    outputs = {name: {split: run_model(m, X, task, rt) for split, X in inputs.items()}
               for name, m in models.items()}
    has_ens = "ensemble" in outputs
    report: dict[str, Any] = {"task": task, "parameters": parameters,
                              "splits": {"train": len(data.train),
                                         **{k: int(v.shape[0]) for k, v in inputs.items()}}}
    if data.duplicates_dropped:
        report["duplicates_dropped"] = dict(data.duplicates_dropped)

    report["test"] = {name: _quality(task, o["test"], data.test.y) for name, o in outputs.items()}
    report["baseline"] = linear_baseline(data)
    if task == "classification":
        report["per_class"] = per_class(data, {name: o["test"] for name, o in outputs.items()})
    report["shift"] = {
        f"{level:g}": {
            name: {**_quality(task, o[f"shift/{level:g}"], split.y),
                   **{f"mean_{c}_uncertainty": float(o[f"shift/{level:g}"].derived[f"{c}_uncertainty"].mean())
                      for c in UNCERTAINTY_COMPONENTS}}
            for name, o in outputs.items()}
        for level, split in data.shift.items()}

    if has_ens:
        report["fidelity"] = {student: _fidelity(outputs, student, [s for s in inputs if s != "calibration"])
                              for student in ("hydra", "kd")}
        report["ensemble_spread"] = {
            split: {c: [float(q) for q in np.quantile(o.derived[f"{c}_uncertainty"], (0.1, 0.5, 0.9))]
                    for c in UNCERTAINTY_COMPONENTS}
            for split, o in outputs["ensemble"].items() if split == "test" or split.startswith("ood/")}

    report["ood_detection"] = {}
    for ood_name in data.ood:
        entry: dict[str, Any] = {}
        for name, o in outputs.items():
            entry[name] = {score: ood_metrics(o["test"].derived[score], o[f"ood/{ood_name}"].derived[score])
                           for score in ("model_uncertainty", "total_uncertainty")}
        if has_ens:
            entry["hydra_over_ensemble_auroc"] = {
                score: (entry["hydra"][score]["auroc"] / entry["ensemble"][score]["auroc"]
                        if entry["ensemble"][score]["auroc"] > 0 else None)
                for score in ("model_uncertainty", "total_uncertainty")}
        report["ood_detection"][ood_name] = entry

    teacher_test = outputs["ensemble"]["test"] if has_ens else None
    report["per_head"] = {"hydra": _per_head(task, outputs["hydra"]["test"], teacher_test, data.test.y)}
    if task == "classification":
        report["reliability"] = {name: reliability_bins(o["test"].derived["mean_probs"], data.test.y)
                                 for name, o in outputs.items()}
    if has_ens:
        report["goals"] = check_goals(report)
    return report, outputs


def per_class(data: Dataset, test: dict[str, SplitOutputs]) -> dict[str, Any]:
    """Per class of the evaluated split: its row count and each model's recall (the share of
    its rows predicted as it). Averages hide a rare class: with 99:1 classes an accuracy of
    0.99 is what predicting the common class alone gives."""
    counts = np.bincount(data.test.y, minlength=data.num_classes)
    recall = {}
    for name, o in test.items():
        hit = o.derived["mean_probs"].argmax(-1) == data.test.y
        per = np.bincount(data.test.y, weights=hit, minlength=data.num_classes)
        recall[name] = [float(h / c) if c else None for h, c in zip(per, counts)]
    return {"labels": list(data.class_labels), "count": counts.tolist(), "recall": recall}


def _fidelity(outputs: dict[str, dict[str, SplitOutputs]], student: str, splits: list[str]) -> dict[str, Any]:
    """Per split, and pooled over test + every OOD set (the range a monitor sees)."""
    def values(model: str, split: str, c: str) -> np.ndarray:
        return outputs[model][split].derived[f"{c}_uncertainty"]

    result: dict[str, Any] = {split: {c: fidelity(values(student, split, c), values("ensemble", split, c))
                                      for c in UNCERTAINTY_COMPONENTS} for split in splits}
    pooled = [s for s in splits if s == "test" or s.startswith("ood/")]
    result["pooled_test_and_ood"] = {
        c: fidelity(np.concatenate([values(student, s, c) for s in pooled]),
                    np.concatenate([values("ensemble", s, c) for s in pooled]))
        for c in UNCERTAINTY_COMPONENTS}
    return result


def _ratio(a: float, b: float) -> float | None:
    """a / b; 1 when both are 0 (an ensemble and a Hydra both perfect), undefined (None) when
    only b is (an NLL of 0 happens when every test probability rounds to 1 in float32)."""
    if b > 0:
        return a / b
    return 1.0 if a == 0 else None


def _readable(name: str) -> str:
    return name.replace("_", " ")


def check_goals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal with a readable title, its measured value, its target, its direction and
    whether it is met: the goal policy, written once into ``report.json`` for every reader.

    Classification: the accuracy gap and the NLL ratio. Regression: the RMSE ratio, the NLL
    gap and the held-out coverage of the 95% interval, absolute and beside the ensemble's.
    Both: the fidelity of the model uncertainty, OOD detection against the ensemble's and the
    parameter ratio. A figure reported beside the goals but not one of them has ``is_goal``
    false and no target.
    """
    test = report["test"]
    goals: dict[str, dict[str, Any]] = {}

    def goal(name: str, title: str, value: float | None, target: float | None,
             higher_is_better: bool, **beside: Any) -> None:
        is_goal = target is not None
        met = is_goal and meets(value, target, higher_is_better)
        goals[name] = {"title": title, "value": value, "target": target, "is_goal": is_goal,
                       "met": bool(met) if is_goal else None, "higher_is_better": higher_is_better,
                       **beside}

    hydra, ensemble = test["hydra"], test["ensemble"]
    if report["task"] == "classification":
        goal("accuracy_gap_points", "accuracy gap ensemble − Hydra (points)",
             100 * (ensemble["accuracy"] - hydra["accuracy"]), GOALS["accuracy_gap_points"], False)
        goal("nll_ratio", "NLL Hydra / ensemble", _ratio(hydra["nll"], ensemble["nll"]),
             GOALS["nll_ratio"], False)
    else:
        goal("rmse_ratio", "RMSE Hydra / ensemble", _ratio(hydra["rmse"], ensemble["rmse"]),
             GOALS["rmse_ratio"], False)
        goal("nll_gap_nats", "NLL Hydra − ensemble (nats)", hydra["nll"] - ensemble["nll"],
             GOALS["nll_gap_nats"], False)
        goal("coverage_95", "95% interval coverage, Hydra", hydra["coverage_95"], GOALS["coverage_95"],
             True, ensemble=ensemble["coverage_95"])
        goal("coverage_95_gap_points", "95% interval coverage, Hydra vs ensemble (points apart)",
             100 * abs(hydra["coverage_95"] - ensemble["coverage_95"]), GOALS["coverage_95_gap_points"],
             False)
    fid = report["fidelity"]["hydra"]
    goal("spearman_model_test", "Spearman(model unc.), test", fid["test"]["model"]["spearman"],
         GOALS["spearman_model_test"], True)
    for split in fid:
        if split.startswith("ood/"):
            goal(f"spearman_model_{split}", f"Spearman(model unc.), OOD {_readable(split[4:])}",
                 fid[split]["model"]["spearman"], GOALS["spearman_model_ood"], True)
    # Reported beside the goals, not one of them: the same correlation over test and OOD together.
    goal("spearman_model_pooled_test_and_ood", "Spearman(model unc.), test + all OOD pooled",
         fid["pooled_test_and_ood"]["model"]["spearman"], None, True)
    for ood_name, entry in report["ood_detection"].items():
        goal(f"auroc_ratio_model_ood/{ood_name}", f"OOD AUROC (model unc.) Hydra / ensemble, {_readable(ood_name)}",
             entry["hydra_over_ensemble_auroc"]["model_uncertainty"], GOALS["auroc_ratio"], True)
    p = report["parameters"]
    goal("param_ratio_hydra_over_member", "parameters Hydra / one member", p["hydra"] / p["member"],
         GOALS["param_ratio"], False)
    return goals


def parameter_counts(teacher: Ensemble | FileEnsemble | None, kd: nn.Module,
                     hydra: nn.Module) -> dict[str, int]:
    """Parameters of the KD student and the Hydra, and of one member and the whole ensemble
    when the members are known (trained here, or given as files: then each file too)."""
    counts = {"kd": count_parameters(kd), "hydra": count_parameters(hydra)}
    if isinstance(teacher, FileEnsemble):
        per_member = [f.parameters for f in teacher.files]
        counts.update(member=per_member[0], ensemble=sum(per_member))
        counts.update({f"member {m} ({f.path.name}, {f.format})": f.parameters
                       for m, f in enumerate(teacher.files)})
    elif teacher is not None:
        counts["member"] = count_parameters(teacher.members[0])
        counts["ensemble"] = count_parameters(teacher)
    return counts
