"""What each choice of transfer set buys: distil the default digits ensemble with several
transfer sets (members are trained once and reused) and print the goal figures side by side.

Every variant is evaluated on a validation split carved from the training rows, with its own
OOD draws (``data.evaluate_on = "validation"``): settings are chosen without looking at the
test and OOD sets that the published report uses. The rows are also written as JSON
(``--out``), from which ``render`` makes the ``ablation`` table of docs/results.md.

    .venv/bin/python benchmarks/ablate_transfer.py [--config configs/digits.toml]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.report_md import fmt, table

# Each variant is the default config (configs/digits.toml) with these overrides.
VARIANTS: dict[str, list[str]] = {
    "training inputs only, T=1": ["distill.transfer.copies=0", "distill.transfer.uniform_fraction=0.0",
                                  "distill.transfer.perturb_steps=0", "distill.temperature=1.0"],
    "+ noise + mixup copies": ["distill.transfer.uniform_fraction=0.0", "distill.transfer.perturb_steps=0",
                               "distill.temperature=1.0"],
    "+ uniform noise inputs": ["distill.transfer.perturb_steps=0", "distill.temperature=1.0"],
    "+ disagreement ascent": ["distill.temperature=1.0"],
    "+ T=2 (the default)": [],
    "default, 2x phase-2 epochs": ["distill.phase2.epochs=120"],
}


def render(summary: dict) -> list[str]:
    """The ``ablation`` table from what ``main`` writes."""
    rows = summary["rows"]
    keys = [k for k in rows[0] if k != "variant"]
    lines = [f"Evaluated on a {summary['evaluated_on']} split of the training rows, with its own OOD "
             "draws (the test and OOD sets above played no part).", ""]
    return lines + table(["transfer set", *(k.replace("_", " ") for k in keys)],
                         [[r["variant"], *(fmt(r[k], 3) for k in keys)] for r in rows])


def main() -> int:
    from training.config import load_config
    from training.pipeline import run_pipeline  # torch: only when the benchmark runs

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/digits.toml")
    parser.add_argument("--runs-dir", default="runs/ablation")
    parser.add_argument("--only", nargs="*", help="variant names to run")
    parser.add_argument("--out", default="benchmarks/results/ablation.json",
                        help="where to write the rows (JSON), for tools/results.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        config = load_config(args.config, [f'runs_dir="{args.runs_dir}"', 'data.evaluate_on="validation"',
                                           *overrides])
        folder = run_pipeline(config, None, stop_after="evaluate")
        report = json.loads((Path(folder) / "report.json").read_text())
        goals = report["goals"]
        fid = report["fidelity"]["hydra"]
        row = {"variant": name, "acc_gap": goals["accuracy_gap_points"]["value"],
               "nll_ratio": goals["nll_ratio"]["value"],
               "rho_test": fid["test"]["model"]["spearman"]}
        for split in fid:
            if split.startswith("ood/"):
                row[f"rho_{split[4:]}"] = fid[split]["model"]["spearman"]
        for ood, entry in report["ood_detection"].items():
            row[f"auroc_ratio_{ood}"] = entry["hydra_over_ensemble_auroc"]["model_uncertainty"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"config": args.config, "evaluated_on": "validation", "rows": rows},
                              indent=2) + "\n")
    tmp.replace(out)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
