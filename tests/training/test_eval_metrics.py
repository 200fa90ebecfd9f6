"""The report's classification metrics: ECE and the reliability diagram bin alike."""

import numpy as np
import pytest

from training.eval_metrics import classification_metrics, confidence_bins, reliability_bins


def test_ece_is_the_count_weighted_gap_of_the_reliability_bins() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=400)
    y = rng.integers(0, 5, 400)
    bins = reliability_bins(probs, y)
    n = sum(bins["count"])
    want = sum(c / n * abs(a - f) for a, f, c in zip(bins["accuracy"], bins["confidence"], bins["count"]) if c)
    assert n == 400
    assert classification_metrics(probs, y)["ece"] == pytest.approx(want, rel=1e-12)


def test_confidence_bins_are_equal_width_and_right_closed() -> None:
    probs = np.array([[0.2, 0.8], [0.5, 0.5], [0.0, 1.0]])
    edges, conf, correct, which = confidence_bins(probs, np.array([1, 1, 0]), n_bins=4)
    np.testing.assert_array_equal(edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(conf, [0.8, 0.5, 1.0])
    np.testing.assert_array_equal(correct, [1.0, 0.0, 0.0])  # a tie goes to the first class
    np.testing.assert_array_equal(which, [3, 1, 3])
