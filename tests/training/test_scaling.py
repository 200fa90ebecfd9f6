"""Normalization statistics in bounded memory: the same bits as one pass over every feature,
with temporaries of a few chunks instead of several copies of the training set."""

from __future__ import annotations

import tracemalloc

import numpy as np

from training.scaling import STATS_FEATURES, _feature_stats, feature_stats


def _sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, size=(2000, 3, 32, 32)).astype(np.float32),
        "mixed": np.concatenate([
            rng.normal(size=(3000, 300)) * 1e3,
            np.round(rng.normal(size=(3000, 300)), 2),
            np.full((3000, 20), 3.0),
        ], axis=1).astype(np.float32),
    }


def test_chunked_statistics_are_bit_identical_to_one_pass() -> None:
    for name, X in _sets().items():
        assert X.reshape(len(X), -1).shape[1] > STATS_FEATURES, name  # really chunked
        mean, scale = feature_stats(X)
        mean_all, scale_all = _feature_stats(X.reshape(len(X), -1))
        assert mean.tobytes() == mean_all.tobytes(), name
        assert scale.tobytes() == scale_all.tobytes(), name
        assert mean.dtype == scale.dtype == np.float32 and mean.shape == (X[0].size,)


def test_statistics_of_an_image_set_need_a_fraction_of_its_size() -> None:
    """Peak allocations while computing the statistics of 6,000 x 3x32x32 float32 pixels
    (74 MB): a few chunks' temporaries (float64 rows of one chunk for the resolution check),
    less than the set itself, where one pass over every feature needs several copies of it."""
    X = np.random.default_rng(1).integers(0, 256, size=(6000, 3, 32, 32)).astype(np.float32)

    def peak(fn) -> int:  # type: ignore[no-untyped-def]
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    chunked = peak(lambda: feature_stats(X))
    one_pass = peak(lambda: _feature_stats(X.reshape(len(X), -1)))
    print(f"peak allocations: chunked {chunked / 1e6:.0f} MB, one pass {one_pass / 1e6:.0f} MB, "
          f"set {X.nbytes / 1e6:.0f} MB")
    assert chunked < X.nbytes, (chunked, X.nbytes)
    assert one_pass > 4 * chunked  # what the chunks avoid


def test_feature_std_and_shift_sets_in_blocks_equal_one_pass() -> None:
    """The test split's shift sets and the extrapolation spread are computed in blocks of
    features and rows; values equal the one-shot formulas bit for bit (so a data set's
    evaluation sets did not change), on a set larger than one block either way."""
    from training.data import ROW_BLOCK, _regression_shift
    from training.scaling import feature_std

    rng = np.random.default_rng(2)
    for X in (rng.normal(size=(ROW_BLOCK * 2 + 7, 10)).astype(np.float32),
              rng.integers(0, 256, size=(ROW_BLOCK + 3, 3, 16, 16)).astype(np.float32)):
        assert feature_std(X).tobytes() == X.std(axis=0, keepdims=True).tobytes()
        for intensity in (0.0, 0.5, 2.0):
            draw = np.random.default_rng(11).normal(0.0, 1.0, size=X.shape)
            expected = (X + draw * X.std(axis=0, keepdims=True) * intensity).astype(np.float32)
            got = _regression_shift(X, intensity, 11, feature_std(X))
            assert got.dtype == np.float32 and got.tobytes() == expected.tobytes(), intensity


def test_a_non_finite_value_beyond_the_first_block_is_found_and_named() -> None:
    import pytest

    from training.data import ROW_BLOCK, DataError, check_arrays

    X = np.zeros((ROW_BLOCK * 3, 4), dtype=np.float64)
    X[ROW_BLOCK * 2 + 5, 1] = np.nan
    X[ROW_BLOCK * 2 + 9, 0] = 1e300  # beyond float32: infinity after the cast
    y = np.arange(len(X)) % 2
    with pytest.raises(DataError, match=rf"2 NaN/Inf values .*first in row {ROW_BLOCK * 2 + 5}\)"):
        check_arrays(X, y, "classification", "x.npz")
    X[ROW_BLOCK * 2 + 5, 1] = X[ROW_BLOCK * 2 + 9, 0] = 0.0
    checked, _ = check_arrays(X, y, "classification", "x.npz")
    assert checked.dtype == np.float32
