"""The GPU check, prepared for a machine with CUDA (run it there; a few minutes):

    .venv/bin/python benchmarks/gpu_check.py          # or PYTHONPATH=. python3 benchmarks/gpu_check.py

1. a tiny pipeline run on CUDA (bf16 autocast for the training steps): members, both
   distillation phases, export with its own ONNX Runtime vs PyTorch parity check, publication
   into a temporary repository, training samples/s from the report;
2. the ResNet config with block heads (digits as 3x32x32 images), shortened, on CUDA;
3. each published model.onnx loaded by the service's own loader on ONNX Runtime's CUDA
   provider (TF32 off, as the service does by default) and on TF32 for comparison: the
   active provider and the parity with the CPU provider per output, which must be within
   1e-4 with TF32 off.
It prints what it finds and exits non-zero when CUDA is missing or the outputs disagree.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from app.serving.sessions import load_model
from training.config import load_config
from training.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _train(config_name: str, overrides: list[str], tmp: str) -> Path:
    config = load_config(ROOT / "configs" / config_name, ['device="cuda"', f'runs_dir="{tmp}/runs"', *overrides])
    start = time.time()
    version = run_pipeline(config, Path(tmp) / "models")
    report = json.loads((version / "report.json").read_text())
    print(f"{config_name} on CUDA: {time.time() - start:.1f} s, published {version}; "
          f"samples/s {report.get('training_samples_per_s')}")
    return version


def _parity(version: Path) -> bool:
    ok = True
    for tf32 in (False, True):
        model = load_model(version.parent.name, int(version.name), version / "model.onnx",
                           providers=PROVIDERS, cuda_tf32=tf32)
        worst = max((model.parity or {"none": float("nan")}).values())
        print(f"  {version.parent.name}: provider {model.provider}, TF32 {'on' if tf32 else 'off'}: "
              f"largest |diff| from the CPU provider {worst:.2e}")
        if not tf32:
            ok &= model.provider == "CUDAExecutionProvider" and worst <= TOLERANCE
    return ok


def main() -> int:
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, available {torch.cuda.is_available()}")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"device: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        versions = [
            _train("tiny.toml", [], tmp),
            _train("digits_resnet.toml", ["ensemble.members=3", "ensemble.optim.epochs=3",
                                          "distill.phase1.epochs=2", "distill.phase2.epochs=2"], tmp),
        ]
        ok = all([_parity(v) for v in versions])
    print("GPU check passed" if ok else "GPU check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
