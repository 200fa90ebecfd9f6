from __future__ import annotations

import numpy as np

from app.drift import DriftReference
from app.monitoring import DriftMonitor, ScoreWindow


def test_window_keeps_the_last_values_in_any_chunking() -> None:
    w = ScoreWindow(5)
    w.extend([1, 2, 3])
    assert sorted(w.values()) == [1, 2, 3]
    w.extend([4, 5, 6, 7])  # wraps around
    assert sorted(w.values()) == [3, 4, 5, 6, 7]
    w.extend(np.arange(100, 112))  # more than the window at once
    assert sorted(w.values()) == list(range(107, 112))
    assert len(w) == 5


def test_monitor_silent_until_min_samples_then_psi() -> None:
    rng = np.random.default_rng(0)
    ref = DriftReference.from_scores(rng.normal(size=5000))
    mon = DriftMonitor({"model": ref}, window=1000, min_samples=100)
    assert mon.observe({"model_uncertainty": rng.normal(size=50)}) == {}
    shifted = rng.normal(loc=1.5, size=1000)
    psi = mon.observe({"model_uncertainty": shifted})
    # The window now holds exactly the shifted scores: same PSI as computed directly.
    assert psi["model"] == ref.psi(shifted)
    assert psi["model"] > 0.2


def test_monitor_recomputes_every_n_scores() -> None:
    rng = np.random.default_rng(1)
    ref = DriftReference.from_scores(rng.normal(size=1000))
    mon = DriftMonitor({"model": ref}, window=100, min_samples=10, every=10)
    results = [mon.observe({"model_uncertainty": rng.normal(size=1)}) for _ in range(30)]
    # Single scores: a PSI after every 10th, nothing in between.
    assert [i for i, r in enumerate(results) if r] == [9, 19, 29]
