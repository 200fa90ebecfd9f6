"""Data: the offline defaults (digits, diabetes), user files, deterministic splits, OOD and shift sets.

Features are kept raw, exactly as the data set gives them (digits: pixel values 0-16); the
normalization statistics travel with the model and become part of the exported graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from training.config import DataConfig

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]


class DataError(ValueError):
    """Input data is malformed; the message names the file, array and problem."""


@dataclass(frozen=True)
class Split:
    X: Array
    y: npt.NDArray[np.generic]

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class Dataset:
    """Train / calibration / test splits plus OOD and covariate-shift sets.

    ``X`` arrays are float32 ``[N, *feature_shape]``; ``y`` int64 class indices ``[N]`` or
    float32 regression targets ``[N, D]``.
    """

    name: str
    task: str
    feature_shape: tuple[int, ...]
    class_labels: tuple[str, ...]
    train: Split
    calibration: Split
    test: Split
    ood: dict[str, Array] = field(default_factory=dict)
    # Shift intensity (0 = clean) -> corrupted test split.
    shift: dict[float, Split] = field(default_factory=dict)
    preprocessing: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    @property
    def output_dim(self) -> int:
        return 1 if self.task == "classification" else int(self.train.y.shape[1])


def check_arrays(X: np.ndarray, y: np.ndarray, task: str, where: str) -> tuple[Array, np.ndarray]:
    """Fail fast on shapes, types and non-finite values, naming the array and the problem."""
    if X.ndim < 2:
        raise DataError(f"{where}: X must be [N, features...], got shape {list(X.shape)}")
    if y.ndim not in (1, 2):
        raise DataError(f"{where}: y must be [N] or [N, D], got shape {list(y.shape)}")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] < 20:
        raise DataError(f"{where}: need at least 20 samples, got {X.shape[0]}")
    try:
        X = X.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: X must be numeric, got dtype {X.dtype}") from exc
    bad = ~np.isfinite(X)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(f"{where}: X has {int(bad.sum())} NaN/Inf values (first in row {row})")
    if task == "classification":
        if y.ndim != 1:
            raise DataError(f"{where}: classification y must be [N], got {list(y.shape)}")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)):
                raise DataError(f"{where}: y has NaN/Inf values")
            if not np.all(y == np.round(y)):
                raise DataError(f"{where}: classification y must be integer class indices")
        y = y.astype(np.int64)
        if y.min() < 0:
            raise DataError(f"{where}: class indices must be >= 0, got {int(y.min())}")
    else:
        try:
            y = y.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: regression y must be numeric, got {y.dtype}") from exc
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: y has {int((~np.isfinite(y)).sum())} NaN/Inf values")
        y = y.reshape(y.shape[0], -1)
    return X, y


def split_indices(n: int, cal: float, test: float, seed: int) -> tuple[np.ndarray, ...]:
    """Deterministic shuffled split into train, calibration, test index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test))
    n_cal = int(round(n * cal))
    return order[n_test + n_cal :], order[n_test : n_test + n_cal], order[:n_test]


def _photo_patches(n: int, seed: int) -> Array:
    """8x8 grey patches of scikit-learn's two sample photographs, scaled to digits' 0-16."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    patches = []
    for image in load_sample_images().images:
        grey = image.astype(np.float32).mean(axis=2)  # [H, W]
        # Downsample 4x so a patch covers a 32x32 region, like a whole digit would.
        h, w = (grey.shape[0] // 4) * 4, (grey.shape[1] // 4) * 4
        small = grey[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
        for _ in range(n // 2 + 1):
            r = rng.integers(0, small.shape[0] - 8)
            c = rng.integers(0, small.shape[1] - 8)
            patches.append(small[r : r + 8, c : c + 8].reshape(64))
    out = np.stack(patches[:n]) / 255.0 * 16.0
    return out.astype(np.float32)


def corrupt_digits(X: Array, intensity: float, seed: int) -> Array:
    """Gaussian pixel noise of std ``intensity`` (pixel units, of 16) and, with probability
    0.1 * intensity, a one-pixel translation in a random direction; clipped to 0-16."""
    rng = np.random.default_rng(seed)
    images = X.reshape(-1, 8, 8).copy()
    if intensity > 0:
        moves = rng.random(images.shape[0]) < 0.1 * intensity
        for i in np.flatnonzero(moves):
            dy, dx = [(0, 1), (0, -1), (1, 0), (-1, 0)][rng.integers(4)]
            images[i] = np.roll(images[i], (dy, dx), axis=(0, 1))
        images = images + rng.normal(0.0, intensity, size=images.shape)
    return np.clip(images, 0.0, 16.0).reshape(X.shape).astype(np.float32)


def _digits(config: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits

    raw = load_digits()
    X, y = check_arrays(raw.data, raw.target, "classification", "digits")
    tr, ca, te = split_indices(len(X), config.calibration_fraction, config.test_fraction, config.seed)
    test = Split(X[te], y[te])
    rng = np.random.default_rng(config.seed + 1)
    n_ood = len(te)
    ood = {
        "photo_patches": _photo_patches(n_ood, config.seed),
        # The test digits with ink and paper swapped: same strokes, unseen statistics.
        "inverted_digits": (16.0 - X[te]).astype(np.float32),
        "uniform_noise": rng.uniform(0.0, 16.0, size=(n_ood, 64)).astype(np.float32),
    }
    shift = {
        float(s): Split(corrupt_digits(X[te], s, config.seed + 2), y[te])
        for s in (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
    }
    return Dataset(
        name="digits",
        task="classification",
        feature_shape=(64,),
        class_labels=tuple(str(i) for i in range(10)),
        train=Split(X[tr], y[tr]),
        calibration=Split(X[ca], y[ca]),
        test=test,
        ood=ood,
        shift=shift,
        preprocessing={"input": "8x8 grey image flattened row-major, pixel values 0-16"},
    )


def _regression_shift(X: Array, intensity: float, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    scale = X.std(axis=0, keepdims=True)
    return (X + rng.normal(0.0, 1.0, size=X.shape) * scale * intensity).astype(np.float32)


def _tabular(name: str, X: Array, y: np.ndarray, task: str, config: DataConfig,
             labels: tuple[str, ...], ood: dict[str, Array]) -> Dataset:
    tr, ca, te = split_indices(len(X), config.calibration_fraction, config.test_fraction, config.seed)
    if not ood:
        # Far outside the training range in every feature: an extrapolation set.
        spread = X[tr].std(axis=0, keepdims=True) + 1e-6
        rng = np.random.default_rng(config.seed + 1)
        signs = rng.choice([-1.0, 1.0], size=(len(te), X.shape[1]))
        ood = {"extrapolation": (X[te] + 4.0 * spread * signs).astype(np.float32)}
    shift = {
        float(s): Split(_regression_shift(X[te], s, config.seed + 2), y[te])
        for s in (0.0, 0.5, 1.0, 2.0)
    }
    return Dataset(
        name=name,
        task=task,
        feature_shape=tuple(X.shape[1:]),
        class_labels=labels,
        train=Split(X[tr], y[tr]),
        calibration=Split(X[ca], y[ca]),
        test=Split(X[te], y[te]),
        ood=ood,
        shift=shift,
    )


def _read_file(path: Path, target: str) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f:
                raise DataError(f"{path}: expected an array named 'X', found {sorted(f.files)}")
            return np.asarray(f["X"]), (np.asarray(f["y"]) if "y" in f else None)
    if path.suffix == ".csv":
        with path.open() as fh:
            header = fh.readline().strip().split(",")
        table = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64)
        table = table.reshape(-1, len(header))
        if target not in header:
            return table, None
        col = header.index(target)
        return np.delete(table, col, axis=1), table[:, col]
    raise DataError(f"{path}: expected a .npz (arrays X, y) or .csv file")


def _user(config: DataConfig) -> Dataset:
    path = Path(config.path)
    X, y = _read_file(path, config.target)
    if y is None:
        raise DataError(f"{path}: no target found (array 'y' or column {config.target!r})")
    task = config.task or ("classification" if y.dtype.kind in "iub" else "regression")
    if task not in ("classification", "regression"):
        raise DataError(f"data.task must be classification or regression, got {task!r}")
    X, y = check_arrays(X, y, task, str(path))
    labels: tuple[str, ...] = ()
    if task == "classification":
        labels = tuple(str(i) for i in range(int(y.max()) + 1))
        if len(labels) < 2:
            raise DataError(f"{path}: classification needs at least 2 classes, got {len(labels)}")
    ood: dict[str, Array] = {}
    if config.ood_path:
        X_ood, _ = _read_file(Path(config.ood_path), config.target)
        X_ood = X_ood.astype(np.float32)
        if X_ood.shape[1:] != X.shape[1:]:
            raise DataError(
                f"{config.ood_path}: OOD features have shape {list(X_ood.shape[1:])}, "
                f"expected {list(X.shape[1:])} like the training data"
            )
        if not np.all(np.isfinite(X_ood)):
            raise DataError(f"{config.ood_path}: X has NaN/Inf values")
        ood = {path.stem + "_ood": X_ood}
    return _tabular(path.stem, X, y, task, config, labels, ood)


def load_dataset(config: DataConfig) -> Dataset:
    if config.source == "digits":
        return _digits(config)
    if config.source == "diabetes":
        from sklearn.datasets import load_diabetes

        raw = load_diabetes()
        X, y = check_arrays(raw.data, raw.target, "regression", "diabetes")
        return _tabular("diabetes", X, y, "regression", config, (), {})
    if config.source in ("npz", "csv", "file"):
        return _user(config)
    raise DataError(f"data.source must be digits, diabetes, npz or csv, got {config.source!r}")


def feature_stats(X: Array) -> tuple[Array, Array]:
    """Per-feature mean and std of the training inputs, for the in-graph normalization.

    Stds are floored at a quarter of the mean std: a near-constant feature (a digit's border
    pixel) would otherwise turn a little noise there into a many-sigma input.
    """
    mean = X.mean(axis=0).astype(np.float32)
    std = X.std(axis=0)
    floor = max(0.25 * float(std.mean()), 1e-3)
    return mean, np.maximum(std, floor).astype(np.float32)


def target_stats(y: np.ndarray) -> tuple[Array, Array]:
    mean = y.mean(axis=0).astype(np.float32)
    std = y.std(axis=0).astype(np.float32)
    return mean, np.where(std < 1e-6, 1.0, std).astype(np.float32)
