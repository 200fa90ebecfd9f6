"""The GPU check, prepared for a machine with CUDA (run it there; it takes about a minute):

    .venv/bin/python benchmarks/gpu_check.py

1. a tiny pipeline run on CUDA (bf16 autocast): members, both distillation phases, export
   with its own ONNX Runtime vs PyTorch parity check, publication into a temporary repository;
2. the published model.onnx on ONNX Runtime's CUDA provider: which provider is active and
   how far its outputs are from the CPU provider's.
It prints what it finds and exits non-zero when CUDA is missing or the outputs disagree.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from training.config import load_config
from training.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, available {torch.cuda.is_available()}")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"device: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(ROOT / "configs" / "tiny.toml", ['device="cuda"', f'runs_dir="{tmp}/runs"'])
        start = time.time()
        version = run_pipeline(config, Path(tmp) / "models")
        print(f"tiny pipeline on CUDA: {time.time() - start:.1f} s, published {version}")
        x = np.random.default_rng(0).uniform(0, 16, size=(256, 64)).astype(np.float32)
        cpu = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
        gpu = ort.InferenceSession(str(version / "model.onnx"),
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        print(f"onnxruntime {ort.__version__}: active providers {gpu.get_providers()}")
        worst = max(float(np.abs(a - b).max()) for a, b in zip(cpu.run(None, {"input": x}),
                                                                gpu.run(None, {"input": x})))
        print(f"CUDA vs CPU provider, max |diff| over every output: {worst:.2e}")
        ok = gpu.get_providers()[0] == "CUDAExecutionProvider" and worst < 1e-3
    print("GPU check passed" if ok else "GPU check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
