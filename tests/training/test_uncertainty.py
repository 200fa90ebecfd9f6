"""The uncertainty formulas against known answers and an independent numpy computation."""

import math

import numpy as np
import pytest
import torch

from training.uncertainty import classification_outputs, regression_outputs


def _numpy_reference(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Straight from the table in docs/design.md, in float64 with scipy-free softmax."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # [B, M, C]
    pbar = p.mean(1)  # [B, C]
    ent = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
    kl = (p * (np.log(p) - np.log(pbar[:, None]))).sum(-1)
    rate = (p.argmax(-1) != pbar.argmax(-1)[:, None]).mean(1)
    return {"mean_probs": pbar, "total_uncertainty": ent(pbar), "data_uncertainty": ent(p).mean(1),
            "model_uncertainty": ent(pbar) - ent(p).mean(1), "head_disagreement": kl,
            "disagreement_rate": rate}


def test_identical_heads_have_zero_model_uncertainty() -> None:
    logits = torch.randn(5, 1, 7).expand(5, 4, 7)
    out = classification_outputs(logits)
    assert torch.allclose(out["model_uncertainty"], torch.zeros(5), atol=1e-6)
    assert torch.allclose(out["head_disagreement"], torch.zeros(5, 4), atol=1e-6)
    assert torch.allclose(out["total_uncertainty"], out["data_uncertainty"], atol=1e-6)
    assert torch.all(out["disagreement_rate"] == 0)


def test_two_confident_heads_on_different_classes_give_ln2() -> None:
    logits = torch.tensor([[[60.0, 0.0, 0.0], [0.0, 60.0, 0.0]]])  # [1, 2, 3]
    out = classification_outputs(logits)
    assert out["model_uncertainty"].item() == pytest.approx(math.log(2), abs=1e-5)
    assert out["total_uncertainty"].item() == pytest.approx(math.log(2), abs=1e-5)
    assert out["data_uncertainty"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["head_disagreement"][0].tolist() == pytest.approx([math.log(2)] * 2, abs=1e-5)
    torch.testing.assert_close(out["mean_probs"], torch.tensor([[0.5, 0.5, 0.0]]))


def test_uniform_head_has_data_uncertainty_ln_c() -> None:
    out = classification_outputs(torch.zeros(2, 3, 10))
    torch.testing.assert_close(out["data_uncertainty"], torch.full((2,), math.log(10)))
    torch.testing.assert_close(out["model_uncertainty"], torch.zeros(2))


def test_classification_matches_independent_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(50, 6, 10))
    out = classification_outputs(torch.as_tensor(logits, dtype=torch.float32))
    ref = _numpy_reference(logits)
    for key, want in ref.items():
        np.testing.assert_allclose(out[key].numpy(), want, atol=2e-5, err_msg=key)
    # The identity: model uncertainty is the mean per-head disagreement.
    np.testing.assert_allclose(out["model_uncertainty"].numpy(), out["head_disagreement"].mean(1).numpy(), atol=1e-6)


def test_extreme_logits_stay_finite() -> None:
    logits = torch.tensor([[[1e4, -1e4], [-1e4, 1e4]]])
    out = classification_outputs(logits)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key


def test_regression_known_answer() -> None:
    # Two heads: N(1, 0.5) and N(3, 1.5) -> mean 2, data 1, model 1, total 2.
    heads = torch.tensor([[[[1.0], [0.5]], [[3.0], [1.5]]]])  # [1, 2, 2, 1]
    out = regression_outputs(heads)
    assert out["mean"].item() == pytest.approx(2.0)
    assert out["data_uncertainty"].item() == pytest.approx(1.0)
    assert out["model_uncertainty"].item() == pytest.approx(1.0)
    assert out["total_uncertainty"].item() == pytest.approx(2.0)
    assert out["variance"].item() == pytest.approx(2.0)
    assert out["head_disagreement"][0].tolist() == pytest.approx([1.0, 1.0])
