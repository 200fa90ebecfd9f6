"""Data: the data set types, their checks, deterministic splits, and the offline defaults
(digits, digits as 32x32 colour images, diabetes) with their OOD and shift sets. The readers
of the user's files (``training.user_data``, ``training.images``) build on these types;
``training.datasets.load_dataset`` picks between them and the defaults.

Features are kept raw, exactly as the data set gives them (digits: pixel values 0-16); the
normalization statistics (``training.scaling``) travel with the model and become part of the
exported graph.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from training.config import DataConfig
from training.scaling import feature_std

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]

# Rows per block where a whole-set temporary would be large (float64 noise for the shift sets,
# the finite check's mask).
ROW_BLOCK = 1024


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
    # OOD set name -> how it is drawn, where that matters for what it measures ("uniform":
    # uniformly over the features' range, like the transfer set's uniform inputs).
    ood_drawn_like: dict[str, str] = field(default_factory=dict)
    # Held-out rows dropped because their inputs equal a row of an earlier split, by split.
    duplicates_dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    @property
    def output_dim(self) -> int:
        return 1 if self.task == "classification" else int(self.train.y.shape[1])

    def digest(self) -> str:
        """sha256 of what training sees: task, labels, shapes and the split arrays' bytes.

        Checkpoints are keyed by it, so a data file rewritten in place (other labels, other
        rows, other features) retrains instead of reusing what was fitted to the old one.
        """
        h = hashlib.sha256()
        h.update(repr((self.task, self.feature_shape, self.class_labels)).encode())
        for split in (self.train, self.calibration, self.test):
            for array in (split.X, split.y):
                h.update(repr((array.dtype.str, array.shape)).encode())
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()


def check_arrays(X: np.ndarray, y: np.ndarray, task: str, where: str, *,
                 lines: Sequence[int] | None = None,
                 columns: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fail fast on shapes, types and non-finite values, naming the array and the problem.
    ``X`` comes back as float32, or as it is when it holds integers of at most 16 bits.

    Classification ``y`` must already be class indices (``encode_labels`` makes them).
    A value is named by its row and feature index, or with ``lines`` and ``columns`` (a CSV
    file's) by the line each row is on and the column's name.
    """
    if X.ndim < 2:
        raise DataError(f"{where}: X must be [N, features...], got shape {list(X.shape)}")
    if y.ndim not in (1, 2):
        raise DataError(f"{where}: y must be [N] or [N, D], got shape {list(y.shape)}")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] < 20:
        raise DataError(f"{where}: need at least 20 samples, got {X.shape[0]}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{where}: X must be numeric, got dtype {X.dtype}")
    if X.dtype.kind in "biu" and X.dtype.itemsize <= 2:
        # Pixels (uint8) and other small integers: exact in float32 and finite. Kept as they
        # are until the splits are cut (``tabular_dataset``), so the whole set is never held
        # as float32 beside its splits.
        return X, _checked_y(y, task, where)
    return finite_float32(X, where, lines=lines, columns=columns), _checked_y(y, task, where)


def finite_float32(X: np.ndarray, where: str, *, lines: Sequence[int] | None = None,
                   columns: Sequence[str] | None = None) -> Array:
    """``X`` as float32, refused where a value is NaN, Inf or beyond float32's range: the first
    one named by its indices (or its line and column, as in ``check_arrays``) and its value."""
    with np.errstate(over="ignore"):
        out = X.astype(np.float32)
    # Row blocks: a boolean mask of the whole set would be a quarter of its size again.
    for start in range(0, len(out), ROW_BLOCK):
        if not np.isfinite(out[start:start + ROW_BLOCK]).all():
            bad = ~np.isfinite(out)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            value = X[first].item()
            what = repr(value) if not np.isfinite(value) else f"{value!r}, beyond float32"
            count = f"X has {int(bad.sum())} NaN/Inf values or values beyond float32"
            if lines is not None and columns is not None and len(first) == 2:
                raise DataError(f"{where}: line {lines[first[0]]}, column {columns[first[1]]!r}: "
                                f"{what} ({count})")
            index = ", ".join(map(str, first))
            raise DataError(f"{where}: {count} (first in row {first[0]}), X[{index}] = {what}; "
                            "rows and features are counted from 0, as array indices")
    return out


def _checked_y(y: np.ndarray, task: str, where: str) -> np.ndarray:
    if task == "classification":
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{where}: classification y must be class indices [N], got "
                            f"{y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    else:
        if y.dtype.kind not in "biuf":
            raise DataError(f"{where}: regression y must be numeric, got dtype {y.dtype}")
        with np.errstate(over="ignore"):
            y = y.astype(np.float32)
        if not np.all(np.isfinite(y)):
            row = int(np.argwhere(~np.isfinite(y))[0][0])
            raise DataError(f"{where}: y has {int((~np.isfinite(y)).sum())} NaN/Inf values or "
                            f"values beyond float32 (first in row {row}, counted from 0)")
        y = y.reshape(y.shape[0], -1)
    return y


def _row_digests(X: np.ndarray, rows: np.ndarray) -> list[bytes]:
    """A 16-byte digest of each row's stored bytes (a set of them is small beside the rows)."""
    return [hashlib.blake2b(np.ascontiguousarray(X[r]).tobytes(), digest_size=16).digest()
            for r in rows]


def drop_held_out_duplicates(X: np.ndarray, tr: np.ndarray, ca: np.ndarray,
                             te: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Calibration rows whose inputs equal a training row, and test rows whose inputs equal a
    training or calibration row, dropped (and counted): a held-out row the model has seen, or
    that calibrated its threshold, would make the report and the OOD guarantee look better
    than they are. Exact equality of the stored values; the training rows are all kept."""
    seen = set(_row_digests(X, tr))
    keep_ca = [d not in seen for d in _row_digests(X, ca)]
    seen.update(_row_digests(X, ca))
    keep_te = [d not in seen for d in _row_digests(X, te)]
    dropped = {"calibration": len(ca) - sum(keep_ca), "test": len(te) - sum(keep_te)}
    dropped = {k: v for k, v in dropped.items() if v}
    if dropped:
        log.warning("dropped held-out rows equal to a row of an earlier split: %s",
                    ", ".join(f"{v} {k}" for k, v in dropped.items()))
    return ca[np.asarray(keep_ca, dtype=bool)], te[np.asarray(keep_te, dtype=bool)], dropped


def split_indices(n: int, cal: float, test: float, seed: int) -> tuple[np.ndarray, ...]:
    """Deterministic shuffled split into train, calibration, test index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test))
    n_cal = int(round(n * cal))
    return order[n_test + n_cal :], order[n_test : n_test + n_cal], order[:n_test]


# Seeds of the random OOD draws on the validation split differ from the test split's.
_VALIDATION_SEED_OFFSET = 1000


def evaluation_split(config: DataConfig, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(train, calibration, evaluated rows, seed for random OOD/shift draws).

    With ``data.evaluate_on = "validation"`` the evaluated rows are a validation split taken
    from the training rows (as many as the test split), the test rows are left out of the run
    altogether, and the random OOD sets are drawn with other seeds: choosing settings on that
    report never looks at the test or OOD sets of the final one.
    """
    tr, ca, te = split_indices(n, config.calibration_fraction, config.test_fraction, config.seed)
    if config.evaluate_on == "test":
        return tr, ca, te, config.seed
    return tr[len(te):], ca, tr[: len(te)], config.seed + _VALIDATION_SEED_OFFSET


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
    tr, ca, te, seed = evaluation_split(config, len(X))
    ca, te, dropped = drop_held_out_duplicates(X, tr, ca, te)
    test = Split(X[te], y[te])
    rng = np.random.default_rng(seed + 1)
    n_ood = len(te)
    ood = {
        "photo_patches": _photo_patches(n_ood, seed),
        # The test digits with ink and paper swapped: same strokes, unseen statistics.
        "inverted_digits": (16.0 - X[te]).astype(np.float32),
        "uniform_noise": rng.uniform(0.0, 16.0, size=(n_ood, 64)).astype(np.float32),
    }
    shift = {
        float(s): Split(corrupt_digits(X[te], s, seed + 2), y[te])
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
        ood_drawn_like={"uniform_noise": "uniform"},
        duplicates_dropped=dropped,
    )


def _regression_shift(X: Array, intensity: float, seed: int, scale: Array) -> Array:
    """``X`` plus Gaussian noise of ``intensity`` x ``scale`` (each feature's std, [1, ...]).
    Drawn ``ROW_BLOCK`` rows at a time: the generator fills values in the same order, so the
    set is the same as one draw of the whole shape, without its float64 copies."""
    rng = np.random.default_rng(seed)
    out = np.empty(X.shape, dtype=np.float32)
    for start in range(0, len(X), ROW_BLOCK):
        rows = X[start:start + ROW_BLOCK]
        out[start:start + len(rows)] = rows + rng.normal(0.0, 1.0, size=rows.shape) * scale * intensity
    return out


def tabular_dataset(name: str, X: np.ndarray, y: np.ndarray, task: str, config: DataConfig,
             labels: tuple[str, ...], ood: dict[str, Array]) -> Dataset:
    tr, ca, te, seed = evaluation_split(config, len(X))
    ca, te, dropped = drop_held_out_duplicates(X, tr, ca, te)

    def cut(rows: np.ndarray) -> Split:  # float32 rows (X may still be small integers)
        return Split(X[rows].astype(np.float32), y[rows])

    train, test = cut(tr), cut(te)
    if not ood:
        # Far outside the training range in every feature: an extrapolation set.
        spread = feature_std(train.X) + 1e-6
        rng = np.random.default_rng(seed + 1)
        signs = rng.choice([-1.0, 1.0], size=(len(te), *X.shape[1:]))
        far = np.empty(test.X.shape, dtype=np.float32)
        for start in range(0, len(te), ROW_BLOCK):
            block = slice(start, start + ROW_BLOCK)
            far[block] = test.X[block] + 4.0 * spread * signs[block]
        ood = {"extrapolation": far}
        del signs
    test_std = feature_std(test.X)
    shift = {
        float(s): Split(_regression_shift(test.X, s, seed + 2, test_std), test.y)
        for s in (0.0, 0.5, 1.0, 2.0)
    }
    return Dataset(
        name=name,
        task=task,
        feature_shape=tuple(X.shape[1:]),
        class_labels=labels,
        train=train,
        calibration=cut(ca),
        test=test,
        ood=ood,
        shift=shift,
        duplicates_dropped=dropped,
    )


def _as_colour_images(data: Dataset, factor: int = 4, channels: int = 3) -> Dataset:
    """The digits as 32x32 colour images: every pixel a factor x factor block, in every channel.

    An offline stand-in for image data sets of the usual shape ([N, 3, 32, 32]), to exercise
    image bodies (ResNet) without downloads.
    """
    def up(X: Array) -> Array:
        images = X.reshape(-1, 8, 8)
        big = np.kron(images, np.ones((factor, factor), dtype=np.float32))  # [N, 8f, 8f]
        return np.repeat(big[:, None], channels, axis=1).astype(np.float32)  # [N, C, 8f, 8f]

    def split(s: Split) -> Split:
        return Split(up(s.X), s.y)

    return replace(
        data, name="digits32", feature_shape=(channels, 8 * factor, 8 * factor),
        train=split(data.train), calibration=split(data.calibration), test=split(data.test),
        ood={k: up(v) for k, v in data.ood.items()},
        shift={k: split(v) for k, v in data.shift.items()},
        preprocessing={"input": f"the 8x8 digit upscaled {factor}x, repeated in {channels} channels, "
                                f"[{channels}, {8 * factor}, {8 * factor}], pixel values 0-16"})


BUILTIN_SOURCES = ("digits", "digits32", "diabetes")


def builtin_dataset(config: DataConfig) -> Dataset:
    """One of the offline defaults (``BUILTIN_SOURCES``), by ``data.source``."""
    if config.source == "digits":
        return _digits(config)
    if config.source == "digits32":
        return _as_colour_images(_digits(config))
    if config.source == "diabetes":
        from sklearn.datasets import load_diabetes

        raw = load_diabetes()
        X, y = check_arrays(raw.data, raw.target, "regression", "diabetes")
        return tabular_dataset("diabetes", X, y, "regression", config, (), {})
    raise DataError(f"not a built-in data set: {config.source!r} (one of {', '.join(BUILTIN_SOURCES)})")
