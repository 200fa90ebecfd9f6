"""Markdown of an evaluation report, from its ``report.json`` alone: the whole ``report.md``
(``markdown``), the short form the documentation shows (``summary``) and a one-table headline
(``headline``). One renderer for every reader: ``training.report`` writes ``report.md`` with
it, and ``tools/results.py`` renders the documentation's sections with it.

It imports neither torch nor matplotlib, so rendering never loads the training stack. The goal policy (titles,
targets, directions, which figures are goals) is not repeated here: ``training.evaluate``
writes it into ``report.json`` (``"goals"``), and the tables read it from there.
"""

from __future__ import annotations

import math
from typing import Any

from contract.model import UNCERTAINTY_COMPONENTS

MODELS = ("ensemble", "kd", "hydra")
# Test-set metrics, in the order tables show them, with their printed names.
METRICS = {"accuracy": "accuracy", "rmse": "RMSE", "nll": "NLL", "ece": "ECE", "brier": "Brier",
           "coverage_95": "95% interval coverage"}


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` places, None as "undefined", booleans as yes/no."""
    if v is None:
        return "undefined"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; cells that are not strings are formatted by ``fmt``."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [*table(header, rows), ""]


def meets(value: float | None, target: float, higher_is_better: bool) -> bool:
    """Whether a measured value meets a goal's target in the goal's direction."""
    return value is not None and (value >= target if higher_is_better else value <= target)


def model_names(report: dict[str, Any]) -> dict[str, str]:
    """Printed names of the report's models; the ensemble's with its member count."""
    heads = next(iter(report.get("per_head", {}).get("hydra", {}).values()), None)
    members = f" ({len(heads)} members)" if heads else ""
    return {"ensemble": f"ensemble{members}", "kd": "KD student", "hydra": "Hydra"}


def baseline_beats(report: dict[str, Any]) -> list[str]:
    """The metrics on which the baseline is better than the Hydra, as sentences (empty when
    it is better on none)."""
    baseline, hydra = report["baseline"]["test"], report["test"]["hydra"]
    lower_is_better = ("nll", "rmse", "ece", "brier")
    out = []
    for key in ("accuracy", "nll") if report["task"] == "classification" else ("rmse", "nll"):
        b, h = baseline[key], hydra[key]
        if (b < h) if key in lower_is_better else (b > h):
            out.append(f"{key} {b:.4g} against the Hydra's {h:.4g}")
    return out


def test_table(report: dict[str, Any]) -> list[str]:
    """Each model's test-set metrics, and the linear baseline's when the report has one."""
    names = model_names(report)
    models = [m for m in MODELS if m in report["test"]]
    present = report["test"][models[0]]
    keys = [k for k in METRICS if k in present] + [k for k in present if k not in METRICS]
    rows = [[names[m], *(report["test"][m][k] for k in keys)] for m in models]
    baseline = report.get("baseline")
    if baseline:
        rows.append([f"baseline: {baseline['model']}", *(baseline["test"][k] for k in keys)])
    return _table(["model", *(METRICS.get(k, k) for k in keys)], rows)


def _target(goal: dict[str, Any]) -> str:
    if not goal.get("is_goal", True):
        return "(not a goal)"
    return f"{'≥' if goal['higher_is_better'] else '≤'} {goal['target']:g}"


def _verdict(goal: dict[str, Any]) -> str:
    if not goal.get("is_goal", True):
        return ""
    return "met" if goal["met"] else "**missed**"


def goals_table(goals: dict[str, dict[str, Any]]) -> list[str]:
    """Each goal as ``training.evaluate`` wrote it: title, measured value (and the ensemble's
    where the goal has one), target with its direction, and whether it is met."""
    beside = any("ensemble" in g for g in goals.values())
    rows = [[g.get("title", key), fmt(g["value"], 3), *([fmt(g.get("ensemble"), 3) if "ensemble" in g
                                                         else ""] if beside else []),
             _target(g), _verdict(g)] for key, g in goals.items()]
    return _table(["goal", "measured", *(["ensemble"] if beside else []), "target", ""], rows)


def provenance(report: dict[str, Any]) -> str:
    """Where the figures come from: the machine that decides training's floating-point
    results, and the model file they describe."""
    m = report.get("machine") or {}
    sha = ((report.get("export") or {}).get("model.onnx") or {}).get("sha256", "")
    return (f"Trained on {report['device']} ({m.get('cpu', '?')}, {m.get('arch', '?')} with "
            f"{m.get('isa') or 'no'} vector extensions, torch {m.get('torch', '?')}, "
            f"{m.get('threads', '?')} threads); `model.onnx` sha256 `{sha[:16]}`.")


def _ood_names(report: dict[str, Any]) -> list[str]:
    return list(report["ood_detection"])


def ood_table(report: dict[str, Any]) -> list[str]:
    """Per OOD set, each model's AUROC of model uncertainty against the test inputs."""
    names = model_names(report)
    models = [m for m in MODELS if m in report["test"]]
    return _table(["OOD set: AUROC of model uncertainty", *(names[m] for m in models)],
                  [[o.replace("_", " "), *(report["ood_detection"][o][m]["model_uncertainty"]["auroc"]
                                           for m in models)] for o in _ood_names(report)])


def headline(report: dict[str, Any]) -> list[str]:
    """One small table: parameters, test quality and the OOD AUROC of model uncertainty for
    ensemble, KD student and Hydra."""
    names = model_names(report)
    models = [m for m in MODELS if m in report["test"]]
    quality = ["accuracy", "nll"] if report["task"] == "classification" else ["rmse", "nll"]
    oods = _ood_names(report)
    rows = [[names[m], f"{report['parameters'][m]:,}", *(report["test"][m][k] for k in quality),
             *(report["ood_detection"][o][m]["model_uncertainty"]["auroc"] for o in oods)]
            for m in models]
    header = ["model", "parameters", *(f"test {METRICS[k]}" for k in quality),
              *(f"OOD AUROC, {o.replace('_', ' ')}" for o in oods)]
    return _table(header, rows)


def summary(report: dict[str, Any]) -> list[str]:
    """The short form: provenance, test set, OOD detection, goals, OOD flag rates and
    near-transfer sets."""
    lines = [f"Evaluated on {report['splits']['test']} rows never trained on. {provenance(report)}", ""]
    lines += test_table(report)
    lines += ood_table(report)
    if report.get("goals"):
        lines += goals_table(report["goals"])
    calibration = report.get("calibration") or {}
    if calibration:
        rates = ", ".join(f"{k.removeprefix('ood/').replace('_', ' ')} {100 * v:.1f}%"
                          for k, v in calibration["flag_rate"].items())
        lines += [f"OOD threshold at α = {calibration['alpha']:g} (from {calibration['n_calibration']} "
                  f"calibration inputs): flagged {rates}.", ""]
    near = (report.get("transfer") or {}).get("near_transfer_ood_sets") or {}
    for name, why in near.items():
        lines += [f"Near-transfer: {name.replace('_', ' ')} is {why}, so its figures say how "
                  "well the Hydra imitates the ensemble on inputs like its transfer set, not on "
                  "an unseen kind of input.", ""]
    return lines


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
    lines += test_table(report)
    baseline = report.get("baseline")
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
        lines += goals_table(report["goals"])
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
