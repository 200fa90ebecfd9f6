"""The test models themselves follow the contract and the formulas of docs/design.md, checked
against an independent numpy computation, so the service tests build on solid ground."""

from __future__ import annotations

import numpy as np
import onnx

import contract_models as cm
from contract.model import ModelMetadata
from servekit import reference_outputs


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def test_classifier_formulas_match_numpy(classifier: cm.BuiltModel, digits: dict) -> None:
    out = reference_outputs(classifier.data, digits["test_x"][:200])
    logits = np.stack([out[f"head_{m}"] for m in range(5)], axis=1)  # [B, M, C]
    logp = _log_softmax(logits)
    p = np.exp(logp)
    mean = p.mean(axis=1)  # [B, C]
    entropy = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
    kl = (p * (logp - np.log(mean)[:, None, :])).sum(-1)  # [B, M]
    np.testing.assert_allclose(out["mean_probs"], mean, atol=1e-6)
    np.testing.assert_allclose(out["total_uncertainty"], entropy(mean), atol=1e-5)
    np.testing.assert_allclose(out["data_uncertainty"], entropy(p).mean(1), atol=1e-5)
    np.testing.assert_allclose(out["head_disagreement"], kl, atol=1e-5)
    np.testing.assert_allclose(out["model_uncertainty"], kl.mean(1), atol=1e-5)
    rate = (logits.argmax(-1) != mean.argmax(-1)[:, None]).mean(1)
    np.testing.assert_allclose(out["disagreement_rate"], rate, atol=1e-6)


def test_classifier_is_accurate_and_more_uncertain_far_from_data(
    classifier: cm.BuiltModel, digits: dict
) -> None:
    test = reference_outputs(classifier.data, digits["test_x"])
    far = reference_outputs(classifier.data, cm.far_inputs(400))
    assert (test["mean_probs"].argmax(1) == digits["test_y"]).mean() > 0.9
    assert np.median(far["model_uncertainty"]) > 5 * np.median(test["model_uncertainty"])


def test_regressor_formulas_match_numpy(regressor: cm.BuiltModel, diabetes: dict) -> None:
    out = reference_outputs(regressor.data, diabetes["test_x"])
    heads = np.stack([out[f"head_{m}"] for m in range(4)], axis=1)  # [B, M, 2, D]
    mu, var = heads[:, :, 0].astype(np.float64), heads[:, :, 1].astype(np.float64)
    mean = mu.mean(1)
    dev2 = (mu - mean[:, None]) ** 2
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(out["variance"], var.mean(1) + dev2.mean(1), rtol=1e-4)
    np.testing.assert_allclose(out["model_uncertainty"], dev2.mean(1).sum(-1), rtol=1e-3)
    np.testing.assert_allclose(out["head_disagreement"], dev2.sum(-1), rtol=1e-3)
    assert np.all(var > 0)


def test_metadata_round_trips_with_calibration(classifier: cm.BuiltModel) -> None:
    model = onnx.load_from_string(classifier.data)
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props)
    assert meta == classifier.meta
    assert meta.ood is not None and meta.ood.n_calibration == 400
    assert set(meta.drift) == {"total", "data", "model"}
