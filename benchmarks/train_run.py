"""``hydra-train run`` as a benchmark step: a config, overrides and scratch folders in, the
published version folder and its report out (training runs in its own process), the figures
of a report that the benchmarks compare, and the goals those figures are judged by."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from training.report_md import meets

ROOT = Path(__file__).resolve().parents[1]


def train_and_publish(config: Path, repository: Path, runs_dir: Path, overrides: list[str]) -> tuple[Path, dict]:
    cmd = [sys.executable, "-m", "training.cli", "run", "--config", str(config), "--repository", str(repository),
           "--set", f'runs_dir="{runs_dir}"']
    for item in overrides:
        cmd += ["--set", item]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"hydra-train run --config {config.name} {' '.join(overrides)} failed "
                         f"({done.returncode}):\n{done.stderr[-3000:]}")
    version = Path(done.stdout.strip().splitlines()[-1])  # hydra-train prints the published folder
    return version, json.loads((version / "report.json").read_text())


def fidelity_line(label: str, row: dict) -> str:
    """One printed line of a ``fidelity`` row: accuracies, the gap and the AUROC ratios."""
    t = row["test"]
    gap = 100 * (t["ensemble"]["accuracy"] - t["hydra"]["accuracy"])
    ratios = ", ".join(f"{k} {v['ensemble']:.3f} -> {v['hydra']:.3f} ({v['ratio']:.3f})"
                       for k, v in row["ood_auroc_model"].items())
    return (f"{label}: accuracy ensemble {t['ensemble']['accuracy']:.4f}, Hydra {t['hydra']['accuracy']:.4f} "
            f"(gap {gap:.2f} points); OOD AUROC of model uncertainty, ensemble -> Hydra (ratio): {ratios}; "
            f"parameters Hydra {row['parameters']['hydra']:,} / member {row['parameters']['member']:,}")


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def fidelity(report: dict) -> dict:
    """Test accuracy and NLL of ensemble, KD student and Hydra; the OOD AUROC of model
    uncertainty per OOD set with its Hydra/ensemble ratio; parameters and samples/s."""
    return {
        "test": {m: {k: report["test"][m][k] for k in ("accuracy", "nll")} for m in ("ensemble", "kd", "hydra")},
        "ood_auroc_model": {
            name: {"ensemble": entry["ensemble"]["model_uncertainty"]["auroc"],
                   "hydra": entry["hydra"]["model_uncertainty"]["auroc"],
                   "ratio": entry["hydra_over_ensemble_auroc"]["model_uncertainty"]}
            for name, entry in report["ood_detection"].items()},
        "parameters": report["parameters"],
        "training_samples_per_s": report["training_samples_per_s"],
        "machine": report["machine"],
        "device": report["device"],
        # The goal policy as the run's report states it (training.evaluate writes it).
        "goals": report["goals"],
    }


def run_goal(run: dict, key: str) -> dict | None:
    """Goal ``key`` as the run's own ``report.json`` states it (title, target, direction);
    None for files written before runs kept their goals."""
    return (run.get("goals") or {}).get(key)


def judged(text: str, value: float, goal: dict | None) -> str:
    """A table cell, in bold when ``value`` misses ``goal`` (as is when there is no goal)."""
    if goal is None or not goal.get("is_goal", True):
        return text
    return text if meets(value, goal["target"], goal["higher_is_better"]) else f"**{text}**"


def gap_points(run: dict) -> float:
    """How many accuracy points the Hydra is below the ensemble on the test split."""
    t = run["test"]
    return 100 * (t["ensemble"]["accuracy"] - t["hydra"]["accuracy"])


def goals_sentence(runs: list[dict]) -> str:
    """What the fidelity rows are judged by: the targets the runs' reports give, or, for runs
    recorded without their goals, that nothing is judged."""
    if not all(run.get("goals") for run in runs):
        return ("These runs were recorded before a run kept its goals beside its figures, so no "
                "figure is judged here; every model's report.json states the targets")
    sign = {True: "≥", False: "≤"}
    accuracy = run_goal(runs[0], "accuracy_gap_points") or {}
    ood = next(iter(runs[0]["ood_auroc_model"]))
    auroc = run_goal(runs[0], f"auroc_ratio_model_ood/{ood}") or {}
    return (f"Goals, as each run's report.json states them: accuracy gap ensemble − Hydra "
            f"{sign[accuracy['higher_is_better']]} {accuracy['target']:g} points, OOD AUROC of model "
            f"uncertainty Hydra / ensemble {sign[auroc['higher_is_better']]} {auroc['target']:g} "
            "(figures in bold miss them)")
