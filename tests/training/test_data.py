from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig
from training.data import DataError
from training.datasets import load_dataset
from training.ensemble import load_member_predictions


def test_digits_splits_are_deterministic_and_disjoint() -> None:
    a, b = load_dataset(DataConfig()), load_dataset(DataConfig())
    np.testing.assert_array_equal(a.test.X, b.test.X)
    assert len(a.train) + len(a.calibration) + len(a.test) == 1797
    rows = lambda s: {r.tobytes() for r in s.X}  # noqa: E731
    # Digits has a few duplicate images, so compare counts of shared rows, not emptiness.
    assert len(rows(a.train) & rows(a.calibration)) < 5
    assert a.feature_shape == (64,) and a.train.X.max() <= 16
    assert set(a.ood) == {"photo_patches", "inverted_digits", "uniform_noise"}
    for name, X in a.ood.items():
        assert X.shape == (len(a.test), 64), name
        assert 0 <= X.min() and X.max() <= 16, name
    # Shift intensity 0 is the clean test set; higher intensities move further from it.
    np.testing.assert_array_equal(a.shift[0.0].X, a.test.X)
    gaps = [np.abs(a.shift[s].X - a.test.X).mean() for s in sorted(a.shift)]
    assert gaps == sorted(gaps) and gaps[-1] > 2.0


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_user_npz_classification(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 5)), rng.integers(0, 3, 200)
    path = str(_write_npz(tmp_path / "d.npz", X=X, y=y))
    # Three distinct integers could be classes or a count: the user has to say which.
    with pytest.raises(DataError, match=r'holds 3 distinct integer values \(0, 1, 2\); set data.task = "classification"'):
        load_dataset(DataConfig(source="npz", path=path))
    data = load_dataset(DataConfig(source="npz", path=path, task="classification"))
    assert data.task == "classification" and data.class_labels == ("0", "1", "2")
    assert "extrapolation" in data.ood
    regression = load_dataset(DataConfig(source="npz", path=path, task="regression"))
    assert regression.task == "regression" and regression.train.y.dtype == np.float32


@pytest.mark.parametrize("mutate, message", [
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), y), r"X has 1 NaN/Inf values or values beyond float32 \(first in row 1\)"),
    (lambda X, y: (X, np.where(np.arange(y.size) == 3, np.nan, y)), r"y has 1 NaN/Inf values"),
    (lambda X, y: (X[:-1], y), r"X has 199 rows but y has 200"),
    (lambda X, y: (X[:, 0], y), r"X must be \[N, features...\]"),
])
def test_bad_user_data_fails_fast(tmp_path: Path, mutate, message: str) -> None:
    rng = np.random.default_rng(0)
    X, y = mutate(rng.normal(size=(200, 5)), rng.normal(size=200))
    path = _write_npz(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(source="npz", path=str(path), task="regression"))


def test_csv_with_target_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    rows = ["a,b,target"] + [f"{a:.3f},{b:.3f},{a + b:.3f}" for a, b in rng.normal(size=(100, 2))]
    path.write_text("\n".join(rows) + "\n")
    data = load_dataset(DataConfig(source="csv", path=str(path)))
    assert data.task == "regression" and data.feature_shape == (2,)
    np.testing.assert_allclose(data.train.y[:, 0], data.train.X.sum(1), atol=1e-2)


def test_member_predictions_are_checked(tmp_path: Path) -> None:
    data = load_dataset(DataConfig())
    X = data.train.X[:50]
    good = _write_npz(tmp_path / "p.npz", X=X, logits=np.zeros((50, 4, 10)))
    assert load_member_predictions(good, data, 4).num_members == 4
    cases = {
        "m.npz": ({"X": X, "logits": np.zeros((50, 4, 10))}, 5, r"M=4 members, the config says ensemble.members = 5"),
        "c.npz": ({"X": X, "logits": np.zeros((50, 4, 9))}, 4, r"C=9 classes, the data set has 10"),
        "n.npz": ({"X": X, "logits": np.zeros((49, 4, 10))}, 4, r"X has 50 rows but the predictions have 49"),
        "s.npz": ({"X": X[:, :10], "logits": np.zeros((50, 4, 10))}, 4, r"X rows have shape \[10\], expected \[64\]"),
        "k.npz": ({"X": X}, 4, r"expected array 'logits'"),
        "f.npz": ({"X": X, "logits": np.full((50, 4, 10), np.nan)}, 4, r"NaN/Inf"),
    }
    for name, (arrays, members, message) in cases.items():
        with pytest.raises(DataError, match=message):
            load_member_predictions(_write_npz(tmp_path / name, **arrays), data, members)


def test_validation_run_never_touches_test_rows() -> None:
    final = load_dataset(DataConfig())
    val = load_dataset(DataConfig(evaluate_on="validation"))
    rows = lambda s: {r.tobytes() for r in s.X}  # noqa: E731
    # The evaluated rows come from the final run's training rows; the test rows are unused.
    assert rows(val.test) <= rows(final.train)
    assert len(rows(final.test) & (rows(val.train) | rows(val.test))) < 5  # digits' duplicates
    np.testing.assert_array_equal(val.calibration.X, final.calibration.X)
    assert len(val.test) == len(final.test) and len(val.train) == len(final.train) - len(final.test)
    # Random OOD sets are other draws; inverted digits are the validation rows inverted.
    assert not np.array_equal(val.ood["uniform_noise"], final.ood["uniform_noise"])
    np.testing.assert_array_equal(val.ood["inverted_digits"], 16.0 - val.test.X)
