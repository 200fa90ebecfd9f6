"""Peak memory of the distillation stage with a materialized and a streamed transfer set, on a
synthetic CIFAR-sized image set (50,000 x 3x32x32 uint8 pixels, 10 classes).

The npz is written to a temporary folder; each mode then runs in its own process (data
loading, two tiny members, the transfer set, both distillation phases with a tiny student:
a few hundred optimizer steps), which reports its peak resident set size
(``VmHWM``, the kernel's high-water mark of its RSS) after each stage. Both modes use the same
transfer recipe (4 copies with random crop + flip and noise, 0.5 x N uniform inputs) and
``distill.loader_workers = 0``, so the streamed figure holds the batches' making too.

    .venv/bin/python benchmarks/bench_transfer_memory.py [--rows 50000] [--out benchmarks/results/transfer_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERRIDES = [
    'name="bench"', 'data.source="npz"', 'data.task="classification"', "device=\"cpu\"",
    'model.body="mlp"', "model.hidden=[16]",
    "ensemble.members=2", "ensemble.optim.epochs=1", "ensemble.optim.batch_size=512",
    "distill.transfer.copies=4", "distill.transfer.flip=true", "distill.transfer.crop_padding=4",
    "distill.transfer.noise_std=0.1", "distill.transfer.uniform_fraction=0.5",
    "distill.phase1.epochs=1", "distill.phase2.epochs=1",
    "distill.phase1.batch_size=1024", "distill.phase2.batch_size=1024"]


def peak_mb() -> float:
    """This process's peak resident set size: VmHWM of /proc/self/status, which starts afresh
    at exec (``ru_maxrss`` can carry a launcher's peak across fork and exec); ru_maxrss where
    there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def child(mode: str, npz: Path, runs: Path) -> None:
    import torch

    from training.checkpoints import Checkpoints
    from training.config import load_config
    from training.datasets import load_dataset
    from training.device import setup_runtime
    from training.distill import distill
    from training.teachers import teachers

    stream = "true" if mode == "streamed" else "false"
    config = load_config(None, [*OVERRIDES, f'data.path="{npz}"', f'runs_dir="{runs}"',
                                f"distill.transfer.stream={stream}"])
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rt = setup_runtime(config.device)
    checkpoints = Checkpoints.of_run(config)
    marks = {"start": peak_mb()}
    started = time.perf_counter()
    data = load_dataset(config.data)
    marks["after loading the data"] = peak_mb()
    taught = teachers(data, config.model, config.ensemble, config.distill, rt, checkpoints)
    marks["after members and transfer set"] = peak_mb()
    distill(data, taught.transfer, config.model, config.distill, rt, checkpoints)
    marks["after both distillation phases"] = peak_mb()
    steps = sum(-(-len(taught.transfer) // 1024) for _ in range(2))
    print(json.dumps({"mode": mode, "peak_rss_mb": round(peak_mb(), 1),
                      "peak_rss_mb_by_stage": {k: round(v, 1) for k, v in marks.items()},
                      "transfer_inputs_per_epoch": len(taught.transfer),
                      "training_rows": len(data.train), "distillation_steps": steps,
                      "samples_per_s": {k: round(v, 1) for k, v in rt.throughput.items()},
                      "seconds": round(time.perf_counter() - started, 1)}))


def render(summary: dict) -> list[str]:
    """The ``memory`` table from what ``main`` writes."""
    from training.report_md import table

    results = summary["results"]
    machine = summary["machine"]
    shape = "x".join(map(str, summary["image_shape"]))
    lines = [f"Peak resident memory of one training process on {summary['rows']:,} x {shape} uint8 "
             f"images, {summary['classes']} classes ({machine['cpus']} CPUs, {machine['cpu']}, Python "
             f"{machine['python']}), with the transfer set materialized (the default) and streamed "
             "(`distill.transfer.stream = true`):", ""]
    stages = list(next(iter(results.values()))["peak_rss_mb_by_stage"])[1:]
    rows = [[mode, *(f"{r['peak_rss_mb_by_stage'][k]:,.0f} MB" for k in stages),
             f"{r['transfer_inputs_per_epoch']:,}"] for mode, r in results.items()]
    lines += table(["transfer set", *(f"peak {k}" for k in stages), "transfer inputs an epoch"], rows)
    return lines + ["", "Materialized / streamed peak: "
                        f"**{summary['peak_rss_ratio_materialized_over_streamed']:.2f}x**."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_memory.json")
    parser.add_argument("--child", choices=("materialized", "streamed"))
    parser.add_argument("--npz", type=Path)
    parser.add_argument("--runs", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.npz, args.runs)
        return 0
    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "cifar_sized.npz"
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, size=args.rows)
        X = rng.integers(0, 256, size=(args.rows, 3, 32, 32), dtype=np.uint8)
        X[np.arange(args.rows), y % 3] //= 2  # a little class structure: one channel darker per class group
        np.savez(npz, X=X, y=y)
        del X
        print(f"wrote {npz} ({npz.stat().st_size / 1e6:.0f} MB, uint8)", file=sys.stderr)
        load_before = os.getloadavg()[0]
        for mode in ("materialized", "streamed"):
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--npz", str(npz),
                                   "--runs", str(Path(tmp) / f"runs-{mode}")],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{mode}: peak RSS {results[mode]['peak_rss_mb']:.0f} MB in "
                  f"{results[mode]['seconds']:.0f} s", file=sys.stderr)
        load_after = os.getloadavg()[0]
    mat, st = results["materialized"]["peak_rss_mb"], results["streamed"]["peak_rss_mb"]
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"rows": args.rows, "image_shape": [3, 32, 32], "classes": 10, "overrides": OVERRIDES,
           "machine": {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average_1min": [load_before, load_after]},
           "results": results, "peak_rss_ratio_materialized_over_streamed": round(mat / st, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'mode':<14}{'peak RSS MB':>12}{'inputs/epoch':>14}{'steps':>8}{'seconds':>9}")
    for mode, r in results.items():
        print(f"{mode:<14}{r['peak_rss_mb']:>12.0f}{r['transfer_inputs_per_epoch']:>14}"
              f"{r['distillation_steps']:>8}{r['seconds']:>9.0f}")
    print(f"ratio materialized / streamed: {mat / st:.2f}  (written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
