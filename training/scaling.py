"""Input and target scaling statistics for the in-graph normalization (docs/design.md, "Data")."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]


def value_resolution(X: Array, max_rows: int = 20000, max_decimals: int = 6) -> Array:
    """Per feature, the step its values are recorded in: 10^-k for the fewest decimals k that
    write every value exactly (1 for integer pixels, 0.01 for values with two decimals), or 0
    when no k up to ``max_decimals`` does (a continuous feature). Computed on at most
    ``max_rows`` rows."""
    rows = np.asarray(X[:max_rows], dtype=np.float64)
    eps = float(np.finfo(np.float32).eps)
    magnitude = np.abs(rows).max(axis=0)
    # Only steps well above float32's precision at the feature's magnitude can be told apart.
    usable = np.floor(-np.log10(np.maximum(100.0 * eps * magnitude, 1e-30)))
    resolution = np.zeros(rows.shape[1], dtype=np.float64)
    undecided = np.ones(rows.shape[1], dtype=bool)
    for k in range(max_decimals + 1):
        undecided &= usable >= k
        if not undecided.any():
            break
        scaled = rows[:, undecided] * 10.0**k
        tolerance = 8.0 * eps * np.abs(scaled) + 1e-9
        exact = np.all(np.abs(scaled - np.round(scaled)) <= tolerance, axis=0)
        idx = np.flatnonzero(undecided)[exact]
        resolution[idx] = 10.0**-k
        undecided[idx] = False
        if not undecided.any():
            break
    return resolution.astype(np.float32)


# Features per pass of ``feature_stats``: its temporaries are rows x this many values, not
# rows x every feature (a CIFAR-sized set's would be several times the set itself).
STATS_FEATURES = 256


def feature_stats(X: Array, chunk: int = STATS_FEATURES) -> tuple[Array, Array]:
    """Per-feature mean and scale of the training inputs, for the in-graph normalization.

    The scale is each feature's own std, but never below the step its values are recorded in
    (``value_resolution``): a near-constant feature (a digit's border pixel, inked in a few
    images) would otherwise turn a one-step change there into a many-sigma input, while a
    feature measured on a small scale (0.05 to 0.1, in steps of 1e-4) keeps its full
    resolution. A constant feature is scaled by max(|value|, 1). Each rule looks at the
    feature alone, so features in other units never change each other's scale, and computing
    them ``chunk`` features at a time bounds the temporaries. With chunks this wide numpy
    still sums each feature over the rows in row order, so the bits are those of one pass
    over all features (a test checks on image-sized and mixed sets).
    """
    X = X.reshape(X.shape[0], -1)
    features = X.shape[1]
    mean = np.empty(features, dtype=np.float32)
    scale = np.empty(features, dtype=np.float32)
    for start in range(0, features, chunk):
        part = slice(start, start + chunk)
        mean[part], scale[part] = _feature_stats(X[:, part])
    return mean, scale


def feature_std(X: np.ndarray, chunk: int = STATS_FEATURES) -> Array:
    """Each feature's std over the rows of ``X`` [N, *features], shaped [1, *features] like
    ``X.std(axis=0, keepdims=True)`` and with its bits, ``chunk`` features at a time (the
    temporaries are N x chunk values, not two copies of ``X``)."""
    flat = X.reshape(X.shape[0], -1)
    parts = [flat[:, start:start + chunk].std(axis=0) for start in range(0, flat.shape[1], chunk)]
    return np.concatenate(parts).reshape(1, *X.shape[1:])


def _feature_stats(X: Array) -> tuple[Array, Array]:
    mean = X.mean(axis=0).astype(np.float32)
    std = X.std(axis=0)
    std = np.where(std <= 1e-6 * np.maximum(np.abs(mean), 1.0), 0.0, std)  # float32 rounding only
    scale = np.maximum(std, value_resolution(X))
    constant = scale <= 0
    scale = np.where(constant, np.maximum(np.abs(mean), 1.0), scale)
    return mean, scale.astype(np.float32)


def target_stats(y: np.ndarray) -> tuple[Array, Array]:
    mean = y.mean(axis=0).astype(np.float32)
    std = y.std(axis=0).astype(np.float32)
    return mean, np.where(std < 1e-6, 1.0, std).astype(np.float32)
