"""Out-of-distribution flags from a calibration set the model never trained on.

Threshold: the (1 - alpha) quantile of the score on in-distribution calibration data.
p-value of a score s: (1 + #{calibration scores >= s}) / (1 + n), a conformal p-value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Above this many calibration scores, the file keeps this many evenly spaced order statistics
# instead; p-values stay exact up to 1 / MAX_STORED_SCORES.
MAX_STORED_SCORES = 2001
SCORES = ("model_uncertainty", "total_uncertainty", "data_uncertainty")


@dataclass(frozen=True)
class OodCalibration:
    score: str
    threshold: float
    alpha: float
    n_calibration: int
    sorted_scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"OOD score must be one of {SCORES}, got {self.score!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha (target false-positive rate) must be in (0, 1), got {self.alpha}")
        if self.n_calibration < 1 or not self.sorted_scores:
            raise ValueError("OOD calibration needs at least one calibration score")
        if any(b < a for a, b in zip(self.sorted_scores, self.sorted_scores[1:])):
            raise ValueError("calibration scores must be sorted ascending")

    @classmethod
    def from_scores(
        cls, scores: npt.ArrayLike, *, alpha: float = 0.05, score: str = "model_uncertainty"
    ) -> OodCalibration:
        """Calibrate on in-distribution scores [N] (finite)."""
        values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError(f"calibration scores must be finite and non-empty, got {values.size}")
        # "higher" keeps the empirical false-positive rate at or below alpha.
        threshold = float(np.quantile(values, 1.0 - alpha, method="higher"))
        if values.size > MAX_STORED_SCORES:
            stored = np.quantile(values, np.linspace(0.0, 1.0, MAX_STORED_SCORES))
        else:
            stored = values
        return cls(score, threshold, alpha, int(values.size), tuple(float(v) for v in stored))

    def p_values(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """p-value per score [B]: small means unusual for in-distribution data."""
        s = np.asarray(scores, dtype=np.float64)
        stored = np.asarray(self.sorted_scores)
        at_least = stored.size - np.searchsorted(stored, s, side="left")
        # Scale counts back up when only order statistics were stored.
        at_least = at_least * (self.n_calibration / stored.size)
        return (1.0 + at_least) / (1.0 + self.n_calibration)

    def is_ood(self, scores: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def quantiles(self, levels: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)) -> list[float]:
        return [float(q) for q in np.quantile(np.asarray(self.sorted_scores), levels)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "n_calibration": self.n_calibration,
            "sorted_scores": list(self.sorted_scores),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OodCalibration:
        return cls(
            score=str(d["score"]),
            threshold=float(d["threshold"]),
            alpha=float(d["alpha"]),
            n_calibration=int(d["n_calibration"]),
            sorted_scores=tuple(float(v) for v in d["sorted_scores"]),
        )
