"""Data as users have it: CSV and npz files, labels of any kind, and the refusals that say why."""

from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig
from training.data import DataError
from training.datasets import load_dataset
from training.scaling import feature_stats, value_resolution
from training.user_data import encode_labels


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def _separable(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 3)) + 3.0 * y[:, None]
    return X, y


def test_csv_with_01_integer_labels_is_a_classifier(tmp_path: Path) -> None:
    X, y = _separable()
    path = _csv(tmp_path / "d.csv", ["a", "b", "c", "target"], [[*x.round(4), int(t)] for x, t in zip(X, y)])
    data = load_dataset(DataConfig(source="csv", path=str(path)))
    assert data.task == "classification" and data.class_labels == ("0", "1")
    assert data.train.y.dtype == np.int64
    all_y = np.concatenate([data.train.y, data.calibration.y, data.test.y])
    assert sorted(np.bincount(all_y).tolist()) == sorted(np.bincount(y).tolist())


def test_string_labels_are_mapped_in_sorted_order(tmp_path: Path) -> None:
    X, y = _separable()
    X[:, 2] = 100.0 * y  # the class can be read off column c
    names = np.array(["malignant", "benign"])[y]
    path = _csv(tmp_path / "d.csv", ["a", "b", "c", "diagnosis"], [[*x.round(4), t] for x, t in zip(X, names)])
    data = load_dataset(DataConfig(source="csv", path=str(path), target="diagnosis"))
    assert data.task == "classification" and data.class_labels == ("benign", "malignant")
    # Index k means class_labels[k]: "benign" rows (c = 100) have index 0, "malignant" ones 1.
    for split in (data.train, data.calibration, data.test):
        np.testing.assert_array_equal(split.y, np.where(split.X[:, 2] > 50, 0, 1))
    with pytest.raises(DataError, match=r"a regression target must be numeric, got 'malignant'|got 'benign'"):
        load_dataset(DataConfig(source="csv", path=str(path), target="diagnosis", task="regression"))


def test_non_contiguous_labels_become_contiguous_indices(tmp_path: Path) -> None:
    X, y = _separable()
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=np.where(y == 1, 7, 3))
    data = load_dataset(DataConfig(source="npz", path=str(path)))
    assert data.class_labels == ("3", "7") and data.num_classes == 2
    assert set(np.unique(data.train.y)) == {0, 1}


def test_float_labels_integral_or_not() -> None:
    task, y, labels = encode_labels(np.array([0.0, 1.0, 1.0, 0.0]), "", "y")
    assert (task, y.tolist(), labels) == ("classification", [0, 1, 1, 0], ("0", "1"))
    task, y, labels = encode_labels(np.array([0.5, 1.0, 2.0]), "", "y")
    assert task == "regression" and labels == ()
    with pytest.raises(DataError, match=r"class labels must be integers or strings, got 0.5 in row 0"):
        encode_labels(np.array([0.5, 1.0, 2.0]), "classification", "y")
    task, y, labels = encode_labels(np.array([True, False, True]), "", "y")
    assert (task, y.tolist(), labels) == ("classification", [1, 0, 1], ("False", "True"))


def test_one_hot_labels_are_refused(tmp_path: Path) -> None:
    X, y = _separable()
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=np.eye(2)[y])
    for task in ("", "classification", "regression"):
        with pytest.raises(DataError, match=r"y looks one-hot encoded \(\[120, 2\], one 1 per row\)"):
            load_dataset(DataConfig(source="npz", path=str(path), task=task))


@pytest.mark.parametrize("text, message", [
    ("a,b,target\n1,2,0\n3,0\n", r"line 3 has 2 fields, the header \(line 1\) has 3"),
    ("a,b,target\n1,2,0\n3,x,1\n", r"line 3, column 'b': expected a number, got 'x'"),
    ("a,b,target\n1,2,0\n3,,1\n", r"line 3, column 'b': missing value \(an empty cell\)"),
    ("a,b,target\n", r"expected a header row and data rows, found 1 rows"),
    ("a,b,label\n1,2,0\n3,4,1\n", r"no column 'target' \(data.target\) among the columns 'a', 'b', 'label'"),
    ("a|b|target\n1|2|0\n3|4|1\n", r"the header 'a\|b\|target' is one column; separate columns by commas, semicolons or tabs"),
])
def test_malformed_csv_names_row_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(source="csv", path=str(path)))


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    X, y = _separable()
    path = tmp_path / "d.csv"
    rows = ["target,a,b,c"] + [f"{t},{a},{b},{c}" for t, (a, b, c) in zip(y, X)]
    path.write_bytes("\n".join(rows).encode("utf-8-sig"))
    data = load_dataset(DataConfig(source="csv", path=str(path)))
    assert data.feature_shape == (3,) and data.class_labels == ("0", "1")


def test_npz_that_is_not_one(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"cannot be read as .npz"):
        load_dataset(DataConfig(source="npz", path=str(path)))
    np.savez(path, X=np.zeros((30, 2)), y=np.array([{"a": 1}] * 30, dtype=object))
    with pytest.raises(DataError, match=r"cannot be read as .npz"):
        load_dataset(DataConfig(source="npz", path=str(path)))


def test_digest_follows_the_contents(tmp_path: Path) -> None:
    X, y = _separable()
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=y)
    first = load_dataset(DataConfig(source="npz", path=str(path))).digest()
    assert load_dataset(DataConfig(source="npz", path=str(path))).digest() == first
    np.savez(path, X=X, y=1 - y)  # same path, other labels
    assert load_dataset(DataConfig(source="npz", path=str(path))).digest() != first
    np.savez(path, X=X[:, :2], y=y)  # same path, fewer features
    assert load_dataset(DataConfig(source="npz", path=str(path))).digest() != first


def test_feature_scale_looks_at_each_feature_alone() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    big = rng.normal(1000.0, 200.0, n)          # large units, continuous
    small = rng.normal(0.07, 0.007, n).round(4)  # small units, recorded to 4 decimals
    sparse = np.where(rng.random(n) < 0.02, rng.choice([1, 2], n), 0).astype(float)  # rarely inked pixel
    constant = np.full(n, 5.0)
    X = np.stack([big, small, sparse, constant], 1).astype(np.float32)
    mean, scale = feature_stats(X)
    std = X.std(0)
    # Features in other units never change each other's scale: the small one keeps its std.
    np.testing.assert_allclose(scale[:2], std[:2], rtol=1e-6)
    # The sparse integer feature is not scaled below its recording step (1), so one step of
    # noise there is at most one unit after normalization.
    assert std[2] < 1.0 and scale[2] == pytest.approx(1.0)
    assert scale[3] == pytest.approx(1.0)  # a constant integer feature: its step
    _, continuous_constant = feature_stats(np.full((10, 1), np.pi, dtype=np.float32))
    assert continuous_constant[0] == pytest.approx(np.pi)  # no step: max(|value|, 1)
    # Scaling a feature scales only its own scale.
    X2 = X.copy()
    X2[:, 1] *= 1e-3
    _, scale2 = feature_stats(X2)
    np.testing.assert_allclose(scale2[[0, 2, 3]], scale[[0, 2, 3]], rtol=1e-6)
    np.testing.assert_allclose(scale2[1], scale[1] * 1e-3, rtol=1e-4)


def test_value_resolution_reads_the_recording_step() -> None:
    X = np.array([[3.0, 13.72, 0.0512, np.pi], [0.0, 12.5, 0.1, np.e], [16.0, 14.01, 0.0777, 1.0 / 3.0]],
                 dtype=np.float32)
    np.testing.assert_allclose(value_resolution(X), [1.0, 0.01, 1e-4, 0.0], rtol=1e-6)


def test_uint8_pixels_give_the_same_data_set_as_the_same_pixels_in_float32(tmp_path: Path) -> None:
    """Small integers are kept as they are until the splits are cut, where the float32 array
    was cut before: the splits, the extrapolation and shift sets and the digest are the same
    bytes either way, and every split is float32."""
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, size=(600, 3, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 4, size=600)
    np.savez(tmp_path / "u8.npz", X=X, y=y)
    np.savez(tmp_path / "f32.npz", X=X.astype(np.float32), y=y)
    a, b = (load_dataset(DataConfig(source="npz", path=str(tmp_path / f"{n}.npz"), task="classification"))
            for n in ("u8", "f32"))
    assert a.digest() == b.digest()
    for sa, sb in [(a.train, b.train), (a.calibration, b.calibration), (a.test, b.test),
                   *[(a.shift[k], b.shift[k]) for k in b.shift]]:
        assert sa.X.dtype == np.float32 and sa.X.tobytes() == sb.X.tobytes()
    assert a.ood.keys() == b.ood.keys() == {"extrapolation"}
    assert a.ood["extrapolation"].tobytes() == b.ood["extrapolation"].tobytes()
    assert a.train.X.min() >= 0 and a.train.X.max() <= 255
