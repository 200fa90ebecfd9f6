"""Fixtures for the service tests: contract models built once per session, repositories in
tmp_path, an in-process client (lifespan runs) and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import contract_models as cm


@pytest.fixture(scope="session")
def digits() -> dict[str, np.ndarray]:
    return cm.digits_split()


@pytest.fixture(scope="session")
def classifier(digits: dict[str, np.ndarray]) -> cm.BuiltModel:
    return cm.build_classifier(digits["train_x"], digits["train_y"], digits["calib_x"])


@pytest.fixture(scope="session")
def classifier_b(digits: dict[str, np.ndarray]) -> cm.BuiltModel:
    """Another seed: different weights, so answers show which version served them."""
    return cm.build_classifier(digits["train_x"], digits["train_y"], digits["calib_x"], seed=7)


@pytest.fixture(scope="session")
def image_classifier(digits: dict[str, np.ndarray]) -> cm.BuiltModel:
    """Input [B, 8, 8]: instances may come nested or flat."""
    return cm.build_classifier(
        digits["train_x"], digits["train_y"], digits["calib_x"], feature_shape=(8, 8), seed=3
    )


@pytest.fixture(scope="session")
def poisoned(digits: dict[str, np.ndarray]) -> cm.BuiltModel:
    return cm.build_classifier(digits["train_x"], digits["train_y"], digits["calib_x"], poison=True)


@pytest.fixture(scope="session")
def diabetes() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x, y = data.data.astype(np.float32), data.target.astype(np.float32)
    return {"train_x": x[:250], "train_y": y[:250], "calib_x": x[250:400], "test_x": x[400:]}


@pytest.fixture(scope="session")
def regressor(diabetes: dict[str, np.ndarray]) -> cm.BuiltModel:
    return cm.build_regressor(diabetes["train_x"], diabetes["train_y"], diabetes["calib_x"])


@pytest.fixture
def repo(tmp_path: Path, classifier: cm.BuiltModel) -> Path:
    """A repository with model 'digits' version 1."""
    root = tmp_path / "models"
    cm.write_version(root, "digits", 1, classifier.data)
    return root


@pytest.fixture(scope="session")
def nan_classifier(digits: dict[str, np.ndarray]) -> cm.BuiltModel:
    """Rows holding a value of magnitude above 1e30 get non-finite outputs (others are exact)."""
    return cm.build_classifier(digits["train_x"], digits["train_y"], digits["calib_x"], nan_above=1e30)


@pytest.fixture(scope="session")
def failing_classifier(digits: dict[str, np.ndarray]) -> cm.BuiltModel:
    """ONNX Runtime raises for a whole call when any value of the batch is above 1e6."""
    return cm.build_classifier(digits["train_x"], digits["train_y"], digits["calib_x"], fail_above=1e6)
