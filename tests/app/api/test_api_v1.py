"""V1 predictions equal a direct ONNX Runtime run of the same file (single and batched)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import contract_models as cm
from servekit import make_settings, reference_outputs, serve

ATOL = 1e-5


def _check_prediction(pred: dict, ref: dict, i: int, meta) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(pred["probabilities"], ref["mean_probs"][i], atol=ATOL)
    k = int(ref["mean_probs"][i].argmax())
    assert pred["class_index"] == k
    assert pred["label"] == meta.class_labels[k]
    for name in ("total_uncertainty", "data_uncertainty", "model_uncertainty", "disagreement_rate"):
        assert pred[name] == pytest.approx(float(ref[name][i]), abs=ATOL)
    np.testing.assert_allclose(pred["head_disagreement"], ref["head_disagreement"][i], atol=ATOL)
    score = float(ref["model_uncertainty"][i])
    cal = meta.ood
    assert pred["ood"]["threshold"] == cal.threshold
    assert pred["ood"]["is_ood"] == (score > cal.threshold)
    assert pred["ood"]["score"] == pytest.approx(score, abs=ATOL)
    assert 0.0 < pred["ood"]["p_value"] <= 1.0


@pytest.mark.parametrize("batch", [1, 7, 40])
def test_predict_equals_direct_onnxruntime(
    repo: Path, classifier: cm.BuiltModel, digits: dict, batch: int
) -> None:
    x = np.concatenate([digits["test_x"][: batch - batch // 4], cm.far_inputs(batch // 4)])
    ref = reference_outputs(classifier.data, x)
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post("/v1/models/digits:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1"
    assert len(body["predictions"]) == batch
    for i, pred in enumerate(body["predictions"]):
        _check_prediction(pred, ref, i, classifier.meta)
        assert "head_probabilities" not in pred  # only when asked


def test_heads_only_when_asked(repo: Path, classifier: cm.BuiltModel, digits: dict) -> None:
    x = digits["test_x"][:3]
    ref = reference_outputs(classifier.data, x)
    body = {"instances": x.tolist(), "parameters": {"return_heads": True}}
    with serve(make_settings(repo)) as (client, _, _):
        preds = client.post("/v1/models/digits:predict", json=body).json()["predictions"]
    for i, pred in enumerate(preds):
        logits = np.stack([ref[f"head_{m}"][i] for m in range(5)]).astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        np.testing.assert_allclose(pred["head_probabilities"], probs, atol=ATOL)
        # Their mean is the prediction.
        np.testing.assert_allclose(np.mean(pred["head_probabilities"], 0), pred["probabilities"], atol=ATOL)


def test_nested_and_flat_instances_agree(
    tmp_path: Path, image_classifier: cm.BuiltModel, digits: dict
) -> None:
    cm.write_version(tmp_path, "images", 1, image_classifier.data)
    x = digits["test_x"][:4]
    ref = reference_outputs(image_classifier.data, x.reshape(-1, 8, 8))
    with serve(make_settings(tmp_path)) as (client, _, _):
        nested = client.post("/v1/models/images:predict", json={"instances": x.reshape(-1, 8, 8).tolist()})
        flat = client.post("/v1/models/images:predict", json={"instances": x.tolist()})
        wrong = client.post("/v1/models/images:predict", json={"instances": x.reshape(-1, 4, 16).tolist()})
    assert nested.status_code == flat.status_code == 200
    assert nested.json()["predictions"] == flat.json()["predictions"]
    for i, pred in enumerate(nested.json()["predictions"]):
        _check_prediction(pred, ref, i, image_classifier.meta)
    assert wrong.status_code == 400
    assert "shape [8, 8] (or be a flat list of 64 numbers), got shape [4, 16]" in wrong.json()["error"]


def test_regression_predictions(tmp_path: Path, regressor: cm.BuiltModel, diabetes: dict) -> None:
    cm.write_version(tmp_path, "diabetes", 1, regressor.data)
    x = diabetes["test_x"][:5]
    ref = reference_outputs(regressor.data, x)
    body = {"instances": x.tolist(), "parameters": {"return_heads": True}}
    with serve(make_settings(tmp_path)) as (client, _, _):
        r = client.post("/v1/models/diabetes:predict", json=body)
    assert r.status_code == 200, r.text
    for i, pred in enumerate(r.json()["predictions"]):
        np.testing.assert_allclose(pred["mean"], ref["mean"][i], rtol=1e-5)
        np.testing.assert_allclose(pred["variance"], ref["variance"][i], rtol=1e-5)
        assert pred["model_uncertainty"] == pytest.approx(float(ref["model_uncertainty"][i]), rel=1e-5)
        assert "probabilities" not in pred and "label" not in pred
        assert len(pred["heads"]) == 4
        np.testing.assert_allclose(pred["heads"][2]["mean"], ref["head_2"][i][0], rtol=1e-5)
        np.testing.assert_allclose(pred["heads"][2]["variance"], ref["head_2"][i][1], rtol=1e-5)


def test_model_status(repo: Path, classifier: cm.BuiltModel) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        assert client.get("/v1/models").json() == {"models": ["digits"]}
        status = client.get("/v1/models/digits").json()
    assert status["ready"] is True
    assert status["version"] == "1" and status["versions"] == ["1"]
    assert status["provider"] == "CPUExecutionProvider"
    assert status["metadata"]["num_heads"] == 5
    assert status["metadata"]["ood"]["threshold"] == classifier.meta.ood.threshold


def test_docs_and_openapi(repo: Path) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
    assert "/v1/models/{name}:predict" in spec["paths"]
    assert "/v2/models/{name}/infer" in spec["paths"]
    predict = spec["paths"]["/v1/models/{name}:predict"]["post"]
    assert predict["parameters"][0]["name"] == "name"
    infer = spec["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert [p["name"] for p in infer["parameters"]] == ["name", "version"]
    # Every reference in the document resolves to a schema it defines.
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert {"V1PredictRequest", "V1PredictResponse", "V2InferRequest", "V2Tensor"} <= refs
    assert refs <= set(spec["components"]["schemas"])
