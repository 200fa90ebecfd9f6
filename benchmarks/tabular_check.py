"""Bring your own data, as a new user would: copy the default config, change only ``[data]``
to point at a CSV file, train with ``hydra-train run``, then score the published ONNX files
(Hydra and ensemble) on rows that were never given to training.

Two tabular data sets with mixed feature units, from scikit-learn (they ship offline):
breast cancer (30 features, labels 0/1 as integers) and wine (13 features, labels as class
names). Each keeps 20% of its rows aside (a split of its own seed, unlike the pipeline's);
the rest goes into a CSV with a ``target`` column. Writes ``benchmarks/results/tabular.json``,
from which ``hydra-train results`` renders the README's table.

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

from app.contract import ModelMetadata

HOLDOUT_SEED = 20261128


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
            n_out = int(round(0.2 * len(X)))
            held, kept = order[:n_out], order[n_out:]
            slug = name.replace(" ", "_")
            data_file = tmp / f"{slug}.csv"
            _write_csv(data_file, X[kept], [labels[i] for i in kept])
            config = tmp / f"{slug}.toml"
            config.write_text(_with_data_section(
                Path(args.config).read_text(), f'[data]\nsource = "csv"\npath = "{data_file}"\n'))
            command = [str(hydra_train), "run", "--config", str(config), "--repository", str(tmp / "models"),
                       "--set", f'runs_dir="{tmp / "runs" / slug}"']
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name}: hydra-train exited {done.returncode}")
            version = Path(done.stdout.strip().splitlines()[-1])
            held_labels = [labels[i] for i in held]
            hydra_acc, hydra_nll = _score(version / "model.onnx", X[held], held_labels)
            ens_acc, ens_nll = _score(version / "ensemble.onnx", X[held], held_labels)
            row = {"dataset": name, "rows": int(len(X)), "held_out": int(n_out),
                   "hydra_accuracy": hydra_acc, "ensemble_accuracy": ens_acc,
                   "hydra_nll": hydra_nll, "ensemble_nll": ens_nll}
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
