"""The ResNet-body Hydra with both head types, side by side, distilled from the same members.

    .venv/bin/python benchmarks/resnet_heads.py [--set KEY=VALUE ...] [--json PATH]

Runs ``configs/digits_resnet.toml`` (the digits as 3x32x32 images) twice through
``hydra-train run``: ``model.head = "linear"`` (M linear layers on the shared body) and
``model.head = "block"`` (each head its own copy of the last residual block). Both runs share
one checkpoint folder, and members do not depend on the head type, so the second run loads
the first run's members: the two Hydras imitate the same ensemble. It prints and writes
(default ``benchmarks/results/resnet_heads.json``, from which ``render`` makes the ``resnet``
table of docs/results.md) per head type: test accuracy and NLL of ensemble, KD student and Hydra, the OOD AUROC
of model uncertainty per OOD set with its Hydra/ensemble ratio, parameter counts and the
training samples/s of each stage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_run import (fidelity, fidelity_line, gap_points, goals_sentence, judged, run_goal,  # noqa: E402
                       train_and_publish, write_result)
from training.report_md import fmt, table  # noqa: E402

CONFIG = ROOT / "configs" / "digits_resnet.toml"
HEADS = ("linear", "block")


def run(head: str, overrides: list[str], tmp: Path) -> dict:
    started = time.perf_counter()
    version, report = train_and_publish(CONFIG, tmp / f"models-{head}", tmp / "runs",
                                        [f'model.head="{head}"', *overrides])
    members_loaded = not any(k.startswith("member") for k in report["training_samples_per_s"])
    return {
        "head": head,
        "wall_s": round(time.perf_counter() - started, 1),
        "members_loaded_from_first_run": members_loaded,
        **fidelity(report),
    }


def render(summary: dict) -> list[str]:
    """The ``resnet`` table from what ``main`` writes; figures that miss a goal in bold."""
    runs = summary["runs"]
    first = runs[0]
    overrides = f" with {', '.join(summary['overrides'])}" if summary["overrides"] else ""
    lines = [f"`{summary['config']}`{overrides}, distilled with each head type from the same members "
             f"(device {first['device']}; one member has {first['parameters']['member']:,} parameters). "
             f"{goals_sentence(runs)}.", ""]
    ood = list(first["ood_auroc_model"])
    header = ["heads", "Hydra parameters", "ensemble accuracy", "Hydra accuracy", "gap (points)",
              *(f"AUROC ratio, {k.replace('_', ' ')}" for k in ood)]
    rows = []
    for run in runs:
        t = run["test"]
        gap = gap_points(run)
        ratios = [run["ood_auroc_model"][k]["ratio"] for k in ood]
        rows.append([run["head"], f"{run['parameters']['hydra']:,}", fmt(t["ensemble"]["accuracy"], 4),
                     fmt(t["hydra"]["accuracy"], 4),
                     judged(f"{gap:.2f}", gap, run_goal(run, "accuracy_gap_points")),
                     *(judged(fmt(r, 3), r, run_goal(run, f"auroc_ratio_model_ood/{k}")) for k, r in zip(ood, ratios))])
    return lines + table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "resnet_heads.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hydra-resnet-heads-") as name:
        rows = [run(head, args.overrides, Path(name)) for head in HEADS]
    if rows[0]["test"]["ensemble"] != rows[1]["test"]["ensemble"]:
        raise SystemExit("the two runs distilled different ensembles: their test figures differ")
    result = {"config": str(CONFIG.relative_to(ROOT)), "overrides": args.overrides, "runs": rows}
    for row in rows:
        print(fidelity_line(f"{row['head']} heads", row))
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
