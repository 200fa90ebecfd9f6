"""The evaluation report: ``report.json`` (every number), ``report.md`` (the tables a reader
wants) and PNG plots, ensemble vs KD vs Hydra side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from contract.model import UNCERTAINTY_COMPONENTS  # noqa: E402
from training.baseline import baseline_beats  # noqa: E402
from training.data import Dataset  # noqa: E402

MODELS = ("ensemble", "kd", "hydra")
COLORS = {"ensemble": "tab:blue", "kd": "tab:orange", "hydra": "tab:green"}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out + [""]


def _ood_hint(report: dict[str, Any]) -> str | None:
    """What to try when the Hydra detects an OOD set worse than the ensemble does and the run
    made no ascent inputs: that is where the members' disagreement far from the training rows
    reaches the Hydra."""
    missed = [k.split("/", 1)[1] for k, g in report["goals"].items()
              if k.startswith("auroc_ratio_model_ood/") and g["met"] is False]
    transfer = report.get("transfer", {})
    steps = report.get("config", {}).get("distill", {}).get("transfer", {}).get("perturb_steps", 0)
    applied = steps > 0 and not any("perturb_steps" in s for s in transfer.get("ignored_settings", []))
    if not missed or applied or "rows_given" in transfer:  # a predictions file has no members to ascend
        return None
    return (f"The Hydra detects {', '.join(missed)} worse than the ensemble, and this run made no "
            "disagreement-ascent inputs. The ascent (`distill.transfer.perturb_steps`, for example 3) "
            "moves transfer inputs toward more member disagreement, which is where inputs far from "
            "the training rows get their uncertainty; it needs members with gradients (trained here, "
            "PyTorch files, or ONNX files whose operators translate to PyTorch: the report's "
            "ignored settings say why not); with a streamed transfer set it runs every epoch.")


def _per_class(report: dict[str, Any]) -> list[str]:
    """Recall per class and model, and the share of each class's evaluated rows the OOD flag
    fires on, with a line for each class the flag singles out."""
    pc = report["per_class"]
    models = [m for m in MODELS if m in pc["recall"]]
    flags = (report.get("calibration") or {}).get("flag_rate_by_class")
    header = ["class", "rows", *(f"{m} recall" for m in models)] + (["flagged as OOD"] if flags else [])
    rows = [[label, count, *(pc["recall"][m][i] for m in models), *([flags[i]] if flags else [])]
            for i, (label, count) in enumerate(zip(pc["labels"], pc["count"]))]
    lines = ["## Per class (evaluated split)", ""] + _table(header, rows)
    if flags:
        overall = report["calibration"]["flag_rate"]["test"]
        alpha = report["calibration"]["alpha"]
        for label, count, rate in zip(pc["labels"], pc["count"], flags):
            if rate is not None and count >= 5 and rate > max(2 * alpha, 2 * overall):
                lines.append(f"The OOD flag fires on {rate:.0%} of the held-out rows of class "
                             f"{label!r} ({count} rows) against {overall:.1%} overall: the threshold "
                             "holds α over all classes together, and a rare class's rows look unusual "
                             "to the model. More rows of that class, or class weights, help.")
        lines.append("")
    return lines


def markdown(report: dict[str, Any]) -> str:
    models = [m for m in MODELS if m in report["test"]]
    lines = [f"# Evaluation report: {report.get('name', '')}", "",
             f"Task: {report['task']}. Device: {report.get('device', '?')} "
             f"(world size {report.get('world_size', 1)}). Created {report.get('created', '?')}.", ""]
    metric_names = list(next(iter(report["test"].values())).keys())
    splits = report.get("splits", {})
    if "train" in splits:
        lines += [f"Rows: {splits['train']} training, {splits.get('calibration', 0)} calibration, "
                  f"{splits.get('test', 0)} evaluated (never trained on)."]
        dropped = report.get("duplicates_dropped", {})
        if dropped:
            lines.append("Held-out rows whose inputs equal a row of an earlier split were dropped: "
                         + ", ".join(f"{v} {k}" for k, v in dropped.items()) + ".")
        lines.append("")
    lines += ["## Test set", ""]
    rows = [[m, *report["test"][m].values()] for m in models]
    baseline = report.get("baseline")
    if baseline:
        rows.append([f"baseline: {baseline['model']}", *(baseline["test"][k] for k in metric_names)])
    lines += _table(["model", *metric_names], rows)
    if baseline:
        beats = baseline_beats(report)
        if not baseline["converged"]:
            lines += ["The baseline did not converge; its figures are a lower bound of what a linear "
                      "model reaches.", ""]
        if beats:
            lines += [f"**The linear baseline beats the Hydra** on this split ({'; '.join(beats)}): "
                      "the networks add nothing a linear model does not give here. Check the data "
                      "(rows, features, leakage) and the training settings before serving it.", ""]
    if "per_class" in report:
        lines += _per_class(report)
    p = report["parameters"]
    lines += ["## Parameters", ""]
    lines += _table(["model", "parameters"], [[k, v] for k, v in p.items()])
    if "member" in p:
        lines += [f"Hydra has {p['hydra'] / p['member']:.2f}x the parameters of one member "
                  f"and {p['hydra'] / p['ensemble']:.3f}x those of the ensemble.", ""]
    if report.get("training_samples_per_s"):
        lines += ["## Training throughput", "", f"On {report.get('device', '?')} (world size "
                  f"{report.get('world_size', 1)}); stages loaded from a checkpoint are not listed.", ""]
        lines += _table(["stage", "samples/s"],
                        [[k, f"{v:,.0f}"] for k, v in report["training_samples_per_s"].items()])
    if "goals" in report and report["goals"]:
        lines += ["## Goals", ""]
        goals = report["goals"]
        if any("ensemble" in g for g in goals.values()):
            lines += _table(["goal", "Hydra", "ensemble", "target", "met"],
                            [[k, g["value"], g.get("ensemble", ""), g["target"], g["met"]]
                             for k, g in goals.items()])
        else:
            lines += _table(["goal", "value", "target", "met"],
                            [[k, g["value"], g["target"], g["met"]] for k, g in goals.items()])
        hint = _ood_hint(report)
        if hint:
            lines += [hint, ""]
    if "fidelity" in report:
        lines += ["## Fidelity to the ensemble's uncertainty (per input)", "",
                  "Mean absolute error and Spearman correlation between each student's and the "
                  "ensemble's uncertainty. The KD student has one head, so its model uncertainty is "
                  "identically 0 and its Spearman correlation is undefined.", ""]
        rows = []
        for student in ("hydra", "kd"):
            for split, comps in report["fidelity"][student].items():
                rows.append([student, split] + [x for c in UNCERTAINTY_COMPONENTS
                                                for x in (comps[c]["mae"], comps[c]["spearman"])])
        lines += _table(["student", "split", "total MAE", "total ρ", "data MAE", "data ρ",
                         "model MAE", "model ρ"], rows)
        lines += ["How much the ensemble's uncertainty varies inside each set (10th, 50th, 90th "
                  "percentile): a rank correlation inside a set where the ensemble's value barely "
                  "moves measures noise, not fidelity.", ""]
        lines += _table(["split", *UNCERTAINTY_COMPONENTS],
                        [[split, *(" / ".join(f"{q:.3f}" for q in v[c]) for c in UNCERTAINTY_COMPONENTS)]
                         for split, v in report.get("ensemble_spread", {}).items()])
    lines += ["## OOD detection (test set vs OOD set)", ""]
    rows = []
    for ood, entry in report["ood_detection"].items():
        for m in models:
            for score, v in entry[m].items():
                rows.append([ood, m, score, v["auroc"], v["aupr"], v["fpr_at_95_tpr"]])
    lines += _table(["OOD set", "model", "score", "AUROC", "AUPR", "FPR@95%TPR"], rows)
    if "calibration" in report and report["calibration"]:
        c = report["calibration"]
        lines += ["## OOD calibration (Hydra)", "",
                  f"Score {c['score']}, threshold {c['threshold']:.5g} at target false-positive rate "
                  f"{c['alpha']} from {c['n_calibration']} calibration inputs never trained on.", ""]
        if "score_jitter" in c:
            j = c["score_jitter"]
            lines += [f"The threshold and the drift references come from the exported graph run in "
                      f"ONNX Runtime, as served. A calibration input's score moves by up to "
                      f"{j['max_abs']:.2g} ({j['max_rel']:.2g} of its value) between batch layouts "
                      f"({j['layouts']} tried); the threshold is taken over each input's largest, so "
                      f"{c['served_flag_rate_calibration']:.2%} of the calibration inputs are flagged "
                      "under any of them.", ""]
        if "alpha_held" in c and c["alpha_held"] > c["alpha"] * (1 + 1e-9):
            lines += [f"**{c['n_calibration']} calibration inputs cannot hold α = {c['alpha']}**: the "
                      f"smallest p-value they give is 1/{c['n_calibration'] + 1}, the threshold is "
                      f"their maximum, and the rate it holds is {c['alpha_held']:.3g}. At least "
                      f"{math.ceil(1 / c['alpha'] - 1)} are needed: more rows, or a larger "
                      "`data.calibration_fraction`.", ""]
        lines += _table(["split", "flagged as OOD"], [[k, v] for k, v in c["flag_rate"].items()])
    if "transfer" in report:
        t = report["transfer"]
        lines += ["## Transfer set", "", f"Source: {t['source']}; {t['rows']} inputs, "
                  f"{t['training_rows']} of them training rows."]
        if t.get("mode") == "streamed":
            steps = t.get("ascent_steps_per_batch", 0)
            moved = f"; the copies of every batch moved by {steps} disagreement-ascent steps" if steps else ""
            lines.append(f"Streamed: the inputs are made and labelled batch by batch ({t['rows']} an "
                         f"epoch, new augmented copies every epoch; {t.get('loader_workers', 0)} loader "
                         f"workers{moved}); the per-feature range below is the training rows'.")
        if "dropped_held_out_rows" in t:
            d = t["dropped_held_out_rows"]
            lines.append(f"Of {t['rows_given']} rows given, {d['calibration']} calibration and "
                         f"{d['test']} test rows were dropped: held-out inputs are never distilled on.")
        for f in t.get("member_files", []):
            lines.append(f"Member file {f['file']} ({f['format']}, {f['parameters']:,} parameters, run on "
                         f"{f.get('runs_on', 'not recorded')}; gradients for the disagreement ascent: "
                         f"{f.get('gradients', 'not recorded')}).")
        if t.get("ignored_settings"):
            lines.append("Settings that need the members themselves and were not applied: "
                         + ", ".join(t["ignored_settings"]) + ".")
        for name, why in t.get("near_transfer_ood_sets", {}).items():
            lines.append(f"Near-transfer OOD set: {name}, {why}; its figures say little about inputs "
                         "of a kind the student never saw.")
        shares = t.get("ood_values_inside_transfer_range", {})
        if shares:
            lines += ["", "Share of each OOD set's feature values inside the transfer inputs' "
                      "per-feature [min, max] (near 1: the set is near-transfer, and imitating the "
                      "teachers there says little about inputs of a kind the student never saw):", ""]
            lines += _table(["OOD set", "share inside"], [[k, v] for k, v in shares.items()])
        else:
            lines.append("")
    lines += ["## Covariate shift (test inputs corrupted with increasing intensity)", ""]
    first = next(iter(report["shift"].values()))
    cols = list(first[models[0]].keys())
    lines += _table(["intensity", "model", *cols],
                    [[lvl, m, *vals[m].values()] for lvl, vals in report["shift"].items() for m in models])
    if "per_head" in report:
        lines += ["## Hydra heads", ""]
        ph = report["per_head"]["hydra"]
        keys = list(ph.keys())
        lines += _table(["head", *keys], [[i, *(ph[k][i] for k in keys)] for i in range(len(ph[keys[0]]))])
    if "export" in report:
        lines += ["## Export", ""]
        units = ("; regression outputs in units of the target's std, variances and uncertainties in "
                 "units of its square" if report["task"] == "regression" else "")
        for f, e in report["export"].items():
            worst = max(max(d.values()) for d in e["max_abs_diff"].values())
            lines.append(f"- `{f}`: {e['bytes']} bytes, opset {e['opset']}, ONNX Runtime vs PyTorch "
                         f"max |diff| {worst:.2e} over every output (allowed {e['atol']} + {e['rtol']}·|x|"
                         f"{units}).")
        lines.append("")
    lines += ["Plots: `reliability.png`, `uncertainty_hist.png`, `model_uncertainty_scatter.png`, `shift.png`.", ""]
    return "\n".join(lines)


def _plots(report: dict[str, Any], outputs: dict[str, Any], data: Dataset, folder: Path) -> None:
    models = [m for m in MODELS if m in outputs]
    if "reliability" in report:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for m in models:
            r = report["reliability"][m]
            ax.plot(r["confidence"], r["accuracy"], "o-", color=COLORS[m], label=m)
        ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability (test)")
        ax.legend()
        fig.savefig(folder / "reliability.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    shown = [m for m in ("ensemble", "hydra") if m in outputs]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for ax, m in zip(axes[0], shown):
        sets = {"test": outputs[m]["test"]} | {k: v for k, v in outputs[m].items() if k.startswith("ood/")}
        allv = np.concatenate([o.derived["model_uncertainty"] for o in sets.values()])
        bins = np.linspace(0, max(float(allv.max()), 1e-6), 40)
        for name, o in sets.items():
            ax.hist(o.derived["model_uncertainty"], bins=bins, histtype="step", density=True, label=name)
        ax.set(title=f"{m}: model uncertainty", xlabel="model uncertainty", ylabel="density", yscale="log")
        ax.legend(fontsize=7)
    fig.savefig(folder / "uncertainty_hist.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    if "ensemble" in outputs:
        fig, ax = plt.subplots(figsize=(5, 5))
        for split in ["test", *(k for k in outputs["hydra"] if k.startswith("ood/"))]:
            ax.scatter(outputs["ensemble"][split].derived["model_uncertainty"],
                       outputs["hydra"][split].derived["model_uncertainty"], s=4, alpha=0.5, label=split)
        top = max(max(float(o.derived["model_uncertainty"].max()) for o in outputs[m].values())
                  for m in ("ensemble", "hydra"))
        ax.plot([0, top], [0, top], "k:", lw=1)
        ax.set(xlabel="ensemble model uncertainty", ylabel="hydra model uncertainty",
               title="Per-input model uncertainty")
        ax.legend(fontsize=7)
        fig.savefig(folder / "model_uncertainty_scatter.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    levels = list(report["shift"].keys())
    quality = "accuracy" if data.task == "classification" else "rmse"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for m in models:
        x = [float(lvl) for lvl in levels]
        axes[0].plot(x, [report["shift"][lvl][m][quality] for lvl in levels], "o-", color=COLORS[m], label=m)
        axes[1].plot(x, [report["shift"][lvl][m]["mean_total_uncertainty"] for lvl in levels], "o-", color=COLORS[m], label=m)
        axes[2].plot(x, [report["shift"][lvl][m]["mean_model_uncertainty"] for lvl in levels], "o-", color=COLORS[m], label=m)
    for ax, title in zip(axes, (quality, "mean total uncertainty", "mean model uncertainty")):
        ax.set(xlabel="shift intensity", title=title)
        ax.legend()
    fig.savefig(folder / "shift.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_report(report: dict[str, Any], outputs: dict[str, Any], data: Dataset, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=True))
    (folder / "report.md").write_text(markdown(report))
    _plots(report, outputs, data, folder)
