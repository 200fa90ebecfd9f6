"""A small model repository for the live tests, built with the service engineer's contract
models (tests/app/contract_models.py): a digits classifier whose model uncertainty is low on
digits and high on far-away inputs, calibrated at alpha = 0.05."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests.app...` from any working directory
    sys.path.insert(0, str(REPO))

MODEL_NAME = "digits"


def build_repository(root: Path) -> dict[str, np.ndarray]:
    """Write ``root/digits/1/model.onnx``; return in-distribution and OOD inputs [N, 64]."""
    from tests.app.contract_models import build_classifier, digits_split, far_inputs, write_version

    split = digits_split()
    built = build_classifier(split["train_x"], split["train_y"], split["calib_x"], alpha=0.05)
    write_version(root, MODEL_NAME, 1, built.data)
    return {"in_distribution": np.asarray(split["test_x"]), "ood": far_inputs(400)}
