"""ONNX Runtime throughput of the Hydra (model.onnx) against the ensemble (ensemble.onnx).

Both files of a published version are timed side by side in one run (interleaved rounds, so
machine noise hits both alike) at batch sizes 1, 32 and 256, and the ratio is printed. An ORT
profile of the Hydra shows where its time goes, by operator type.

    .venv/bin/python benchmarks/bench_onnx.py [MODEL_VERSION_DIR ...]

Without arguments it benchmarks the newest versions of models/digits and models/digits-cnn,
training them first if they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.layout import versions

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"digits": "configs/digits.toml", "digits-cnn": "configs/digits_cnn.toml"}
BATCHES = (1, 32, 256)


def latest(repo: Path, name: str) -> Path | None:
    found = versions(repo / name)
    return repo / name / str(found[-1]) if found else None


def session(path: Path, threads: int, profile_dir: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Two sessions in one process: spinning thread pools would steal each other's cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "hydra")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def throughput(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> float:
    """Samples per second over repeated runs lasting about ``seconds``."""
    feed = {"input": x}
    sess.run(None, feed)
    runs, start = 0, time.perf_counter()
    while True:
        sess.run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return runs * x.shape[0] / elapsed


def compare(version: Path, threads: int, rounds: int, seconds: float) -> list[dict[str, float]]:
    hydra, ensemble = session(version / "model.onnx", threads), session(version / "ensemble.onnx", threads)
    meta = json.loads(hydra.get_modelmeta().custom_metadata_map["hydra.feature_shape"])
    heads = int(hydra.get_modelmeta().custom_metadata_map["hydra.num_heads"])
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCHES:
        x = rng.uniform(0, 16, size=(batch, *meta)).astype(np.float32)
        h, e = [], []
        for _ in range(rounds):  # interleaved, so drift in machine load hits both
            h.append(throughput(hydra, x, seconds))
            e.append(throughput(ensemble, x, seconds))
        hs, es = float(np.median(h)), float(np.median(e))
        rows.append({"batch": batch, "hydra_per_s": hs, "ensemble_per_s": es, "ratio": hs / es,
                     "heads": heads})
    return rows


def where_time_goes(version: Path, threads: int, batch: int = 256, runs: int = 200) -> dict[str, float]:
    """Share of the Hydra's operator time by op type, from ONNX Runtime's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(version / "model.onnx", threads, tmp)
        shape = json.loads(sess.get_modelmeta().custom_metadata_map["hydra.feature_shape"])
        x = np.random.default_rng(0).uniform(0, 16, size=(batch, *shape)).astype(np.float32)
        for _ in range(runs):
            sess.run(None, {"input": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            by_op[ev["args"].get("op_name", "?")] += ev["dur"]
    total = sum(by_op.values()) or 1.0
    return {op: dur / total for op, dur in sorted(by_op.items(), key=lambda kv: -kv[1])}


def ensure_default(name: str) -> Path:
    found = latest(ROOT / "models", name)
    if found is None:
        print(f"training {name} first ({DEFAULTS[name]})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "training.cli", "run", "--config", DEFAULTS[name]],
                       cwd=ROOT, check=True)
        found = latest(ROOT / "models", name)
    if found is None:
        raise SystemExit(f"training {name} published nothing under models/{name}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version_dirs", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    dirs = args.version_dirs or [ensure_default(n) for n in DEFAULTS]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"onnxruntime {ort.__version__} (CPUExecutionProvider, {args.threads} threads)")
    print("| model | batch | Hydra samples/s | ensemble samples/s | ratio | ratio / M |")
    print("|---|---|---|---|---|---|")
    for version in dirs:
        for row in compare(version, args.threads, args.rounds, args.seconds):
            print(f"| {version.parent.name}/{version.name} | {row['batch']} | {row['hydra_per_s']:,.0f} | "
                  f"{row['ensemble_per_s']:,.0f} | {row['ratio']:.2f}x | {row['ratio'] / row['heads']:.2f} |")
    for version in dirs:
        shares = where_time_goes(version, args.threads)
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:8])
        print(f"\nwhere the Hydra's time goes ({version.parent.name}, batch 256, ORT profile): {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
