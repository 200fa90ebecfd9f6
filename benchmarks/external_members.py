"""The worked example's ensemble trained elsewhere, distilled three ways: what the member file
format and the disagreement ascent do to the Hydra's OOD detection.

    .venv/bin/python benchmarks/external_members.py [--json PATH]

Makes the example data if ``examples/data`` is not there yet (``examples/make_example_data.py``:
PNG class folders, inverted digits as the OOD folder, 5 CNN members trained by a plain PyTorch
script on the other half of the digits, as ``.onnx`` and ``.pt2``), then runs
``configs/example_members.toml`` through ``hydra-train run`` four ways: the ONNX member files
and the same members as ``torch.export`` files (``.pt2``), each without and with the
disagreement ascent (``distill.transfer.perturb_steps``, the config's default), which moves
transfer inputs toward more member disagreement through the members' gradients (for the ONNX
files, through their graphs translated to PyTorch).

It prints and writes (default ``benchmarks/results/external_members.json``, from which
``render`` makes the ``members`` table of docs/your-data.md) per run: test accuracy of ensemble and Hydra and the OOD AUROC of
model uncertainty with its Hydra/ensemble ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_run import (fidelity, fidelity_line, gap_points, goals_sentence, judged, run_goal,  # noqa: E402
                       train_and_publish, write_result)
from training.report_md import fmt, table  # noqa: E402

CONFIG = ROOT / "configs" / "example_members.toml"
DATA = ROOT / "examples" / "data"
PT2 = "ensemble.models=[" + ", ".join(f'"examples/data/members/member_{m}.pt2"' for m in range(5)) + "]"
with CONFIG.open("rb") as f:
    ASCENT_STEPS = tomllib.load(f)["distill"]["transfer"]["perturb_steps"]
NO_ASCENT = "distill.transfer.perturb_steps=0"
RUNS = {
    "ONNX members": [NO_ASCENT],
    ".pt2 members": [PT2, NO_ASCENT],
    f"ONNX members, ascent ({ASCENT_STEPS} steps)": [],
    f".pt2 members, ascent ({ASCENT_STEPS} steps)": [PT2],
}


def render(summary: dict) -> list[str]:
    """The ``members`` table from what ``main`` writes; figures that miss a goal in bold."""
    runs = summary["runs"]
    ood = list(runs[0]["ood_auroc_model"])
    lines = [f"`{summary['config']}` (members trained elsewhere, on other digits) distilled "
             f"{len(runs)} ways on {runs[0]['device']}. {goals_sentence(runs)}.", ""]
    header = ["members", "ensemble accuracy", "Hydra accuracy", "gap (points)"]
    for k in ood:
        name = k.replace("_", " ")
        header += [f"AUROC {name}, ensemble", f"AUROC {name}, Hydra", "ratio"]
    header.append("run wall time (s)")
    rows = []
    for run in runs:
        t = run["test"]
        gap = gap_points(run)
        cells = [run["run"], fmt(t["ensemble"]["accuracy"], 4), fmt(t["hydra"]["accuracy"], 4),
                 judged(f"{gap:.2f}", gap, run_goal(run, "accuracy_gap_points"))]
        for k in ood:
            entry = run["ood_auroc_model"][k]
            cells += [fmt(entry["ensemble"], 3), fmt(entry["hydra"], 3),
                      judged(fmt(entry["ratio"], 3), entry["ratio"], run_goal(run, f"auroc_ratio_model_ood/{k}"))]
        cells.append(f"{run['wall_s']:.0f}")
        rows.append(cells)
    return lines + table(header, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "external_members.json")
    args = parser.parse_args()
    if not (DATA / "members" / "member_4.pt2").exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "make_example_data.py")], cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hydra-external-members-") as name:
        tmp = Path(name)
        for i, (label, overrides) in enumerate(RUNS.items()):
            started = time.perf_counter()
            _, report = train_and_publish(CONFIG, tmp / f"models-{i}", tmp / f"runs-{i}", overrides)
            rows.append({"run": label, "overrides": overrides,
                         "wall_s": round(time.perf_counter() - started, 1), **fidelity(report)})
    result = {"config": str(CONFIG.relative_to(ROOT)), "runs": rows}
    for row in rows:
        print(fidelity_line(row["run"], row))
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
