"""The OOD threshold in a published file is the served graph's: taken from ONNX Runtime's
scores of the calibration inputs, so no batch the service makes flags more than alpha of
them, and the input that defines the threshold is never flagged, alone or in company."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract.model import ModelMetadata
from contract.onnxrt import session_options
from training.config import RunConfig
from training.datasets import load_dataset
from training.export import SERVED_LAYOUTS
from training.pipeline import run_pipeline


def _scores(session: ort.InferenceSession, X: np.ndarray, batches: list[np.ndarray], name: str) -> np.ndarray:
    out = np.empty(len(X))
    for rows in batches:
        out[rows] = session.run([name], {"input": X[rows]})[0]
    return out


@pytest.mark.slow
def test_no_batch_flags_more_than_alpha_of_the_calibration_inputs(tiny_config: RunConfig,
                                                                   tmp_path: Path) -> None:
    version = run_pipeline(tiny_config, tmp_path / "models")
    assert version is not None
    session = ort.InferenceSession(str(version / "model.onnx"), session_options(),
                                   providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    assert meta.ood is not None
    X = load_dataset(tiny_config.data).calibration.X
    n, score = len(X), meta.ood.score

    # Independently: each input's largest score over the same layouts, its "higher" quantile.
    largest = np.full(n, -np.inf)
    for size, rotation in SERVED_LAYOUTS:
        order = np.roll(np.arange(n), rotation)
        size = size or n
        got = _scores(session, X, [order[i:i + size] for i in range(0, n, size)], score)
        largest = np.maximum(largest, got)
    assert meta.ood.threshold == float(np.quantile(largest, 1 - meta.ood.alpha, method="higher"))
    assert meta.ood.n_calibration == n

    # Served in batches the layouts never tried: random sizes (2-256) and positions.
    defining = int(np.flatnonzero(largest == meta.ood.threshold)[0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        order = rng.permutation(n)
        cuts = np.cumsum(rng.integers(2, 257, size=n))
        batches = [b for b in np.split(order, cuts[cuts < n]) if len(b)]
        flagged = meta.ood.is_ood(_scores(session, X, batches, score))
        assert flagged.mean() <= meta.ood.alpha
        assert not flagged[defining]
    alone = session.run([score], {"input": X[defining:defining + 1]})[0]
    assert not meta.ood.is_ood(alone)[0]

    report = json.loads((version / "report.json").read_text())["calibration"]
    assert report["served_flag_rate_calibration"] <= meta.ood.alpha
    assert 0 <= report["score_jitter"]["max_abs"] < 1e-5
    assert "as served" in (version / "report.md").read_text()
