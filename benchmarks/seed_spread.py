"""How much the digits goals move with the distillation seed alone: the same members, the
same transfer set, phases 1 and 2 started from other seeds (``distill.seed``), each evaluated
on the final report's test and OOD sets. A figure that moves a lot here is noise at the
precision docs/results.md prints it.

Writes ``benchmarks/results/seed_spread.json``, from which ``render`` makes the ``seeds``
table of docs/results.md.

    .venv/bin/python benchmarks/seed_spread.py [--config configs/digits.toml] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.report_md import fmt, table


def render(summary: dict) -> list[str]:
    """The ``seeds`` table from what ``main`` writes. Each figure is named by the title its
    report gives it; a file written before the titles were kept shows each figure's key in
    report.json instead."""
    runs = summary["runs"]
    titles = summary.get("titles") or {}
    seeds = ", ".join(str(r["distill_seed"]) for r in runs)
    lines = [f"The same members and transfer set, distilled with seeds {seeds} (seed 0 is the "
             "published model), each evaluated on the test and OOD sets above:", ""]
    rows = []
    for key in runs[0]["goals"]:
        values = [r["goals"][key] for r in runs]
        if any(v is None for v in values):
            continue
        rows.append([titles.get(key, f"`{key}`"), *(fmt(v, 3) for v in values), fmt(max(values) - min(values), 3)])
    return lines + table(["figure", *(f"seed {r['distill_seed']}" for r in runs), "spread"], rows)


def main() -> int:
    from training.config import load_config
    from training.pipeline import run_pipeline  # torch: only when the benchmark runs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits.toml")
    parser.add_argument("--runs-dir", default="runs/seed-spread")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/seed_spread.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = []
    titles: dict[str, str] = {}
    for seed in args.seeds:
        config = load_config(args.config, [f'runs_dir="{args.runs_dir}"', f"distill.seed={seed}"])
        folder = run_pipeline(config, None, stop_after="evaluate")
        report = json.loads((Path(folder) / "report.json").read_text())
        goals = {k: g["value"] for k, g in report["goals"].items()}
        titles.update({k: g["title"] for k, g in report["goals"].items()})
        runs.append({"distill_seed": seed, "goals": goals})
        print(json.dumps(runs[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"config": args.config, "titles": titles, "runs": runs}, indent=2) + "\n")
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
