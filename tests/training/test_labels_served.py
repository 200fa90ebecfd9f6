"""A user's string labels travel from their CSV through training into the model's metadata and
out of the service: the answer names the class, never an internal index only."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.settings import Settings
from training.config import load_config
from training.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_string_labels_come_back_from_the_service(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = np.array(["setosa", "virginica", "versicolor"])
    y = rng.integers(0, 3, 300)
    X = rng.normal(size=(300, 4)) + 5.0 * np.eye(3, 4)[y]
    data = tmp_path / "flowers.csv"
    data.write_text("a,b,c,d,species\n" + "\n".join(
        ",".join(f"{v:.5f}" for v in row) + f",{names[t]}" for row, t in zip(X, y)) + "\n")
    config = load_config(ROOT / "configs" / "tiny.toml", [
        f'runs_dir="{tmp_path / "runs"}"', 'name="flowers"', 'data.source="csv"',
        f'data.path="{data}"', 'data.target="species"', "ensemble.optim.epochs=30",
        "ensemble.optim.lr=0.01", "distill.phase1.epochs=20", "distill.phase1.lr=0.01",
        "distill.phase2.epochs=20", "distill.phase2.lr=0.01"])
    run_pipeline(config, tmp_path / "models")

    settings = Settings(repository=tmp_path / "models", providers=["CPUExecutionProvider"])
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        for _ in range(300):
            if client.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        meta = client.get("/v2/models/flowers").json()
        assert meta["parameters"]["hydra"]["class_labels"] == ["setosa", "versicolor", "virginica"]
        # One clear member of each class: the answer names it.
        centres = [5.0 * np.eye(3, 4)[k] for k in range(3)]
        answer = client.post("/v1/models/flowers:predict",
                             json={"instances": [c.tolist() for c in centres]}).json()
    labels = [p["label"] for p in answer["predictions"]]
    assert labels == ["setosa", "virginica", "versicolor"]
    assert [p["class_index"] for p in answer["predictions"]] == [0, 2, 1]
