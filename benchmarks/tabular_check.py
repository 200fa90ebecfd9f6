"""Bring your own data, as a new user would: copy the default config, change only ``[data]``
to point at a CSV file, train with ``hydra-train run``, then score the published ONNX files
(Hydra and ensemble) on rows that were never given to training.

Two tabular data sets with mixed feature units, from scikit-learn (they ship offline):
breast cancer (30 features, labels 0/1 as integers) and wine (13 features, labels as class
names). Five-fold: each fold keeps 20% of the rows aside (folds of a seed of their own, unlike
the pipeline's splits) and writes the rest into a CSV with a ``target`` column; every row is
held out exactly once, so the accuracy is over every row of the data set, not one small draw.
Writes ``benchmarks/results/tabular.json``, from which ``render`` makes the ``tabular`` table
of docs/your-data.md.

    .venv/bin/python benchmarks/tabular_check.py [--config configs/digits.toml]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.model import ModelMetadata
from training.report_md import fmt, table

HOLDOUT_SEED = 20261128
FOLDS = 5


def _datasets() -> dict[str, tuple[np.ndarray, list[str]]]:
    from sklearn.datasets import load_breast_cancer, load_wine

    cancer, wine = load_breast_cancer(), load_wine()
    return {
        "breast cancer": (cancer.data, [str(int(t)) for t in cancer.target]),
        "wine": (wine.data, [str(wine.target_names[t]) for t in wine.target]),
    }


def _write_csv(path: Path, X: np.ndarray, labels: list[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"f{j}" for j in range(X.shape[1])] + ["target"])
        for row, label in zip(X, labels):
            writer.writerow([repr(float(v)) for v in row] + [label])


def _with_data_section(config_text: str, data_section: str) -> str:
    """The config with its ``[data]`` table replaced, everything else untouched."""
    pattern = re.compile(r"^\[data\]\n(?:(?!\[).*\n)*", re.M)
    if not pattern.search(config_text):
        raise SystemExit("the config has no [data] table to replace")
    return pattern.sub(lambda _: data_section + "\n", config_text, count=1)


def _score(model_path: Path, X: np.ndarray, labels: list[str]) -> tuple[float, float]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    index = {name: k for k, name in enumerate(meta.class_labels)}
    y = np.array([index[label] for label in labels])
    (probs,) = session.run(["mean_probs"], {"input": X.astype(np.float32)})
    accuracy = float((probs.argmax(1) == y).mean())
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return accuracy, nll


def render(summary: dict) -> list[str]:
    """The ``tabular`` table from what ``main`` writes."""
    rows = summary["rows"]
    lines = [f"`{summary['config']}` with only `[data]` changed; {rows[0]['folds']}-fold: each row is "
             f"held out once (folds of seed {summary['holdout_seed']}) and scored by the published files "
             "of the run that never saw it:", ""]
    return lines + table(
        ["data set", "rows", "Hydra accuracy", "worst fold", "ensemble accuracy", "Hydra NLL", "ensemble NLL"],
        [[r["dataset"], str(r["rows"]), *(fmt(r[k], 3) for k in ("hydra_accuracy", "hydra_worst_fold_accuracy",
                                                                 "ensemble_accuracy", "hydra_nll", "ensemble_nll"))]
         for r in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits.toml")
    parser.add_argument("--out", default="benchmarks/results/tabular.json")
    args = parser.parse_args()
    hydra_train = Path(sys.executable).with_name("hydra-train")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name, (X, labels) in _datasets().items():
            order = np.random.default_rng(HOLDOUT_SEED).permutation(len(X))
            folds = np.array_split(order, FOLDS)
            scores: dict[str, list[tuple[float, float, int]]] = {"hydra": [], "ensemble": []}
            for k, held in enumerate(folds):
                kept = np.setdiff1d(order, held)
                slug = f"{name.replace(' ', '_')}_{k}"
                data_file = tmp / f"{slug}.csv"
                _write_csv(data_file, X[kept], [labels[i] for i in kept])
                config = tmp / f"{slug}.toml"
                config.write_text(_with_data_section(
                    Path(args.config).read_text(), f'[data]\nsource = "csv"\npath = "{data_file}"\n'))
                command = [str(hydra_train), "run", "--config", str(config),
                           "--repository", str(tmp / "models" / slug), "--set", f'runs_dir="{tmp / "runs" / slug}"']
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{name}, fold {k}: hydra-train exited {done.returncode}")
                version = Path(done.stdout.strip().splitlines()[-1])
                held_labels = [labels[i] for i in held]
                for kind, file in (("hydra", "model.onnx"), ("ensemble", "ensemble.onnx")):
                    accuracy, nll = _score(version / file, X[held], held_labels)
                    scores[kind].append((accuracy, nll, len(held)))
                print(json.dumps({"dataset": name, "fold": k, "hydra": scores["hydra"][-1],
                                  "ensemble": scores["ensemble"][-1]}), flush=True)

            def pooled(kind: str, i: int) -> float:
                return float(sum(s[i] * s[2] for s in scores[kind]) / len(X))

            row = {"dataset": name, "rows": int(len(X)), "folds": FOLDS,
                   "hydra_accuracy": pooled("hydra", 0), "ensemble_accuracy": pooled("ensemble", 0),
                   "hydra_worst_fold_accuracy": min(s[0] for s in scores["hydra"]),
                   "hydra_nll": pooled("hydra", 1), "ensemble_nll": pooled("ensemble", 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps({"config": args.config, "holdout_seed": HOLDOUT_SEED, "rows": rows},
                                  indent=2) + "\n")
    tmp_out.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
