"""What a report must tell about the user's data: regression at any scale, held-out rows that
duplicate training rows, a calibration split too small for alpha, a linear yardstick, and the
classes an average hides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.config import DataConfig, RunConfig
from training.datasets import load_dataset
from training.export import alpha_held
from training.losses import ground_truth_loss, moment_match
from training.pipeline import run_pipeline
from training.uncertainty import regression_outputs


def _run(config: RunConfig, path: Path, repo: Path, **data: object) -> tuple[Path, dict]:
    config = replace(config, name=path.stem, data=replace(config.data, source="npz", path=str(path), **data))
    version = run_pipeline(config, repo)
    assert version is not None
    return version, json.loads((version / "report.json").read_text())


def _outputs(version: Path, X: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": X.astype(np.float32)})))


# ------------------------------------------------------------------ regression at any scale

def test_scaled_regression_outputs_keep_the_heads_spread_far_from_zero() -> None:
    """Heads around 10,000 with a std of 77 (prices, an offset target): the spread between
    heads computed in standardized units, against float64 on the same heads."""
    rng = np.random.default_rng(0)
    heads_std = np.stack([rng.normal(0, 1, (64, 5, 1)) * 1e-3 + rng.normal(0, 1, (64, 1, 1)),
                          rng.uniform(0.5, 2.0, (64, 5, 1))], axis=2).astype(np.float32)  # [B, M, 2, D]
    mean, std = np.array([10000.0]), np.array([77.0])
    got = regression_outputs(torch.as_tensor(heads_std), torch.tensor(mean), torch.tensor(std))
    means = heads_std[:, :, 0].astype(np.float64)  # [B, M, D]
    dev = (means - means.mean(1, keepdims=True)) ** 2 * std**2
    want = dev.sum(-1)  # [B, M]
    error = np.abs(got["head_disagreement"].numpy() - want).max()
    assert error < 5e-3 * np.median(want)
    np.testing.assert_allclose(got["mean"].numpy(), means.mean(1) * std + mean, rtol=1e-7)
    # The same heads taken to target units first lose the spread to float32 rounding.
    in_units = torch.as_tensor(heads_std[:, :, 0] * 77.0 + 10000.0)
    naive = ((in_units - in_units.mean(1, keepdim=True)) ** 2).sum(-1).numpy()
    assert np.abs(naive - want).max() > 30 * error


def test_losses_hold_at_any_target_scale() -> None:
    """The moment-matched variance is the spread about the mean (E[x^2] - mean^2 cancels far
    from 0), and the Gaussian NLL clamps no variance however small the target's unit."""
    means = torch.tensor([[[1e4 + 1.0], [1e4 - 1.0]]], dtype=torch.float32)  # [1, 2, 1]
    heads = torch.stack([means, torch.full_like(means, 0.5)], dim=2)  # [1, 2, 2, 1]
    assert moment_match(heads)[0, 0, 1, 0].item() == pytest.approx(1.5, rel=1e-6)
    tiny = torch.stack([means * 1e-6, torch.full_like(means, 1e-9)], dim=2)
    y = torch.tensor([[1e-2]])
    var, err = 1e-9, np.array([1e-2 - 1e4 * 1e-6 - 1e-6, 1e-2 - 1e4 * 1e-6 + 1e-6])
    want = np.mean(0.5 * (np.log(2 * np.pi * var) + err**2 / var))
    assert ground_truth_loss("regression", tiny, y).item() == pytest.approx(want, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("a, b", [(1e6, 1e4), (1.0, 1e6)])  # millions; an offset far beyond the spread
def test_a_model_of_scaled_targets_is_the_model_of_the_targets_up_to_that_map(
        tiny_config: RunConfig, tmp_path: Path, a: float, b: float) -> None:
    raw = load_diabetes()
    X, y = raw.data.astype(np.float32), raw.target.astype(np.float64)
    np.savez(tmp_path / "plain.npz", X=X, y=y)
    np.savez(tmp_path / "scaled.npz", X=X, y=y * a + b)
    config = replace(tiny_config, data=replace(tiny_config.data, task="regression"))
    plain, plain_report = _run(config, tmp_path / "plain.npz", tmp_path / "models")
    scaled, scaled_report = _run(config, tmp_path / "scaled.npz", tmp_path / "models")
    got, want = _outputs(scaled, X[:100]), _outputs(plain, X[:100])
    spread = float(y.std())
    # The mean up to the map, within a thousandth of the target's std.
    np.testing.assert_allclose((got["mean"] - b) / a, want["mean"], rtol=0, atol=1e-3 * spread)
    for name in ("variance", "total_uncertainty", "model_uncertainty", "head_disagreement"):
        np.testing.assert_allclose(got[name] / a**2, want[name], rtol=1e-2, atol=1e-5 * spread**2,
                                   err_msg=name)
    # Parity is reported in the target's own units of std: the same small figure for both.
    worst = [max(max(d.values()) for d in r["export"]["model.onnx"]["max_abs_diff"].values())
             for r in (plain_report, scaled_report)]
    assert max(worst) < 1e-3
    for report in (plain_report, scaled_report):
        goals = report["goals"]
        assert goals["coverage_95"]["ensemble"] == report["test"]["ensemble"]["coverage_95"]
        assert goals["coverage_95"]["value"] == report["test"]["hydra"]["coverage_95"]
        assert goals["coverage_95"]["met"] == (report["test"]["hydra"]["coverage_95"] >= 0.9)
    assert scaled_report["test"]["hydra"]["coverage_95"] == pytest.approx(
        plain_report["test"]["hydra"]["coverage_95"], abs=0.02)
    assert "coverage_95" in (scaled / "report.md").read_text()


# ------------------------------------------------------------- rows that appear twice

def test_held_out_rows_equal_to_a_training_row_are_dropped_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).round(3)
    y = (X[:, 0] > 0).astype(int)
    X = np.concatenate([X, X[:40]])  # 40 rows twice, wherever the split puts each copy
    y = np.concatenate([y, y[:40]])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = load_dataset(DataConfig(source="npz", path=str(tmp_path / "d.npz")))

    def rows(split_X: np.ndarray) -> set[bytes]:
        return {r.tobytes() for r in split_X}

    train, cal, test = rows(data.train.X), rows(data.calibration.X), rows(data.test.X)
    assert not (train & cal) and not (train & test) and not (cal & test)
    # Independently: which copies landed in a held-out split after their twin.
    total_held_out = len(data.calibration) + len(data.test) + sum(data.duplicates_dropped.values())
    assert total_held_out == round(240 * 0.2) * 2
    assert sum(data.duplicates_dropped.values()) > 0
    clean = load_dataset(DataConfig(source="npz", path=str(tmp_path / "d.npz"), seed=0))
    assert clean.duplicates_dropped == data.duplicates_dropped


# ---------------------------------------------- small data, the yardstick, rare classes

def test_alpha_held_by_the_higher_quantile() -> None:
    # Counted by hand: n scores, the threshold is the score of 0-based rank ceil(0.95 (n - 1));
    # a new score lies above it with probability (n - rank) / (n + 1).
    assert alpha_held(12, 0.05) == pytest.approx(1 / 13)  # rank 11: the maximum
    assert alpha_held(18, 0.05) == pytest.approx(1 / 19)
    assert alpha_held(19, 0.05) == pytest.approx(1 / 20)  # the first n that holds 0.05
    assert alpha_held(359, 0.05) == pytest.approx(18 / 360)
    assert alpha_held(100, 0.1) == pytest.approx(10 / 101)


@pytest.mark.slow
def test_small_data_reports_the_alpha_it_holds_and_a_baseline(tiny_config: RunConfig,
                                                              tmp_path: Path) -> None:
    iris = load_iris()
    rows = np.random.default_rng(0).permutation(150)[:60]
    np.savez(tmp_path / "iris60.npz", X=iris.data[rows], y=iris.target[rows])
    version, report = _run(tiny_config, tmp_path / "iris60.npz", tmp_path / "models",
                           task="classification")
    c = report["calibration"]
    assert c["n_calibration"] == 12 and report["splits"]["train"] == 36
    assert c["alpha_held"] == pytest.approx(1 / 13)
    md = (version / "report.md").read_text()
    assert "**12 calibration inputs cannot hold α = 0.05**" in md and "At least 19 are needed" in md
    assert "Rows: 36 training, 12 calibration, 12 evaluated" in md

    # The baseline: a logistic regression fitted on the training split, scored on the test
    # split, computed here without the report's code.
    data = load_dataset(replace(tiny_config.data, source="npz", path=str(tmp_path / "iris60.npz"),
                                task="classification"))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(data.train.X, data.train.y)
    baseline = report["baseline"]
    assert baseline["test"]["accuracy"] == pytest.approx(model.score(data.test.X, data.test.y))
    assert baseline["train_rows"] == len(data.train)
    beats = baseline["test"]["accuracy"] > report["test"]["hydra"]["accuracy"]
    assert ("**The linear baseline beats the Hydra**" in md) == beats
    assert "baseline: logistic regression" in md


@pytest.mark.slow
def test_a_rare_class_gets_its_recall_and_its_ood_flag_rate(tiny_config: RunConfig,
                                                           tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(380, int), np.ones(20, int)]
    X = rng.normal(size=(400, 4)) + 2.5 * y[:, None]
    X[y == 1] *= 3.0  # the rare class is also spread wider: its rows look unusual
    np.savez(tmp_path / "rare.npz", X=X, y=np.where(y == 1, "rare", "common"))
    version, report = _run(tiny_config, tmp_path / "rare.npz", tmp_path / "models")
    data = load_dataset(replace(tiny_config.data, source="npz", path=str(tmp_path / "rare.npz")))
    out = _outputs(version, data.test.X)
    pc = report["per_class"]
    assert pc["labels"] == ["common", "rare"]
    assert pc["count"] == np.bincount(data.test.y, minlength=2).tolist()
    predicted = out["mean_probs"].argmax(1)
    for c in (0, 1):
        rows = data.test.y == c
        assert pc["recall"]["hydra"][c] == pytest.approx((predicted[rows] == c).mean(), abs=1e-9)
        flagged = out[report["calibration"]["score"]][rows] > report["calibration"]["threshold"]
        assert report["calibration"]["flag_rate_by_class"][c] == pytest.approx(flagged.mean(), abs=1e-9)
    md = (version / "report.md").read_text()
    assert "## Per class (evaluated split)" in md and "| rare |" in md
