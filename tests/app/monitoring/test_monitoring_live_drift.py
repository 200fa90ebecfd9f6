"""The drift window and its statistics: PSI with a chi-square p-value, so that a drift alarm
(PSI > 0.2 and p < 0.001, docker/rules) is rare on clean traffic at any window size."""

from __future__ import annotations

import numpy as np
import pytest

from contract.drift import DriftReference, chi2_sf
from app.monitoring.live_drift import DriftMonitor, ScoreWindow

ALERT_PSI, ALERT_P = 0.2, 0.001  # the drift alert's condition (docker/rules/hydra-alerts.rules.yml)


def test_window_keeps_the_last_values_in_any_chunking() -> None:
    w = ScoreWindow(5)
    w.extend([1, 2, 3])
    assert sorted(w.values()) == [1, 2, 3]
    w.extend([4, 5, 6, 7])  # wraps around
    assert sorted(w.values()) == [3, 4, 5, 6, 7]
    w.extend(np.arange(100, 112))  # more than the window at once
    assert sorted(w.values()) == list(range(107, 112))
    assert len(w) == 5


def test_chi2_survival_matches_scipy() -> None:
    from scipy.stats import chi2

    for df in (1, 2, 5, 9, 30):
        for x in (0.01, 0.5, 3.0, 9.0, 16.9, 27.9, 60.0, 150.0):
            assert chi2_sf(x, df) == pytest.approx(chi2.sf(x, df), rel=1e-9, abs=1e-300)
    assert chi2_sf(0.0, 9) == 1.0
    assert chi2_sf(float("inf"), 9) == 0.0


def test_monitor_window_counts_psi_and_p_value() -> None:
    rng = np.random.default_rng(0)
    ref = DriftReference.from_scores(rng.normal(size=5000))
    mon = DriftMonitor({"model": ref}, window=1000, n_reference=5000)
    mon.observe({"model_uncertainty": rng.normal(size=50)})
    assert len(mon) == 50
    shifted = rng.normal(loc=1.5, size=1000)
    mon.observe({"model_uncertainty": np.concatenate([shifted, [np.nan, np.inf]])})
    # The window holds exactly the shifted scores (non-finite ones are not kept).
    assert len(mon) == 1000
    (window,) = mon.windows().values()
    assert list(window.counts) == ref.counts(shifted).tolist()
    stat = mon.statistics()["model"]
    assert stat.psi == pytest.approx(ref.psi(shifted), rel=1e-12)
    assert stat.n == 1000 and stat.psi > 0.2 and stat.p_value < 1e-12
    mon.reset()
    assert len(mon) == 0


def test_p_value_is_uniform_on_clean_windows_and_the_alert_is_rare() -> None:
    """Windows drawn from the calibration distribution itself: PSI alone crosses 0.2 often on
    small windows; PSI and p-value together almost never, and a real shift is still caught."""
    rng = np.random.default_rng(1)
    n_cal = 400
    draw = lambda size, scale=1.0: rng.gamma(2.0, scale, size=size)  # noqa: E731
    ref = DriftReference.from_scores(draw(n_cal))
    for n, trials in ((100, 3000), (1000, 1000)):
        psi, p = np.empty(trials), np.empty(trials)
        for i in range(trials):
            stat = ref.test(ref.counts(draw(n)), n_cal)
            psi[i], p[i] = stat.psi, stat.p_value
        alarm = np.mean((psi > ALERT_PSI) & (p < ALERT_P))
        assert alarm <= 0.01, (n, alarm)
        assert 0.005 < np.mean(p < 0.05) < 0.1, (n, np.mean(p < 0.05))  # p is about uniform
        if n == 100:
            assert np.mean(psi > ALERT_PSI) > 0.02  # what PSI alone would have alarmed on
    # The same distribution scaled by 1.5 (uncertainty up by half): caught on every full window.
    caught = [
        (lambda s: s.psi > ALERT_PSI and s.p_value < ALERT_P)(ref.test(ref.counts(draw(1000, 1.5)), n_cal))
        for _ in range(200)
    ]
    assert np.mean(caught) >= 0.95
