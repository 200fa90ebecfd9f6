"""``hydra-train run`` as a benchmark step: a config, overrides and scratch folders in, the
published version folder and its report out (training runs in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
