"""The two halves meet: models trained and exported by training/ are served by app/, and the
service's answers equal a direct ONNX Runtime run of the published file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.settings import Settings
from training.config import load_config
from training.datasets import load_dataset
from training.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
CPU = ["CPUExecutionProvider"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    repo = tmp / "models"
    runs = f'runs_dir="{tmp / "runs"}"'
    run_pipeline(load_config(ROOT / "configs" / "tiny.toml", [runs]), repo)
    regression = load_config(ROOT / "configs" / "tiny.toml",
                             [runs, 'name="tiny-diabetes"', 'data.source="diabetes"'])
    run_pipeline(regression, repo)
    return repo


def _direct(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=CPU)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x.astype(np.float32)})))


def _client(repo: Path) -> TestClient:
    settings = Settings(repository=repo, providers=CPU, poll_interval_s=0.2)
    return TestClient(create_app(settings, CollectorRegistry()))


def _wait_ready(client: TestClient) -> None:
    import time
    deadline = time.monotonic() + 30
    while client.get("/v2/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError("service never became ready")
        time.sleep(0.05)


def test_trained_classifier_is_served_exactly(repository: Path) -> None:
    data = load_dataset(load_config(ROOT / "configs" / "tiny.toml").data)
    x = np.concatenate([data.test.X[:6], data.ood["uniform_noise"][:4]])
    want = _direct(repository / "tiny" / "1" / "model.onnx", x)
    with _client(repository) as client:
        _wait_ready(client)
        v1 = client.post("/v1/models/tiny:predict", json={"instances": x.tolist()})
        assert v1.status_code == 200, v1.text
        for i, pred in enumerate(v1.json()["predictions"]):
            np.testing.assert_allclose(pred["probabilities"], want["mean_probs"][i], atol=1e-5)
            assert pred["class_index"] == int(want["mean_probs"][i].argmax())
            assert pred["model_uncertainty"] == pytest.approx(float(want["model_uncertainty"][i]), abs=1e-5)
            np.testing.assert_allclose(pred["head_disagreement"], want["head_disagreement"][i], atol=1e-5)
        v2 = client.post("/v2/models/tiny/infer", json={
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "total_uncertainty"}, {"name": "is_ood"}]})
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        assert set(outputs) == {"total_uncertainty", "is_ood"}
        np.testing.assert_allclose(outputs["total_uncertainty"]["data"], want["total_uncertainty"], atol=1e-5)
        meta = client.get("/v2/models/tiny").json()
        assert meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        names = {o["name"] for o in meta["outputs"]}
        assert {"head_0", "head_2", "mean_probs", "model_uncertainty", "predicted_class", "is_ood"} <= names


def test_trained_regressor_is_served_exactly(repository: Path) -> None:
    data = load_dataset(replace(load_config(ROOT / "configs" / "tiny.toml").data, source="diabetes"))
    x = data.test.X[:5]
    want = _direct(repository / "tiny-diabetes" / "1" / "model.onnx", x)
    with _client(repository) as client:
        _wait_ready(client)
        r = client.post("/v1/models/tiny-diabetes:predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        for i, pred in enumerate(r.json()["predictions"]):
            np.testing.assert_allclose(pred["mean"], want["mean"][i], rtol=1e-5)
            np.testing.assert_allclose(pred["variance"], want["variance"][i], rtol=1e-5)
            assert pred["model_uncertainty"] == pytest.approx(float(want["model_uncertainty"][i]), rel=1e-5)
