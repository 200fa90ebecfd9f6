"""Out-of-distribution flags from a calibration set the model never trained on, and the
outputs the service adds to the graph's on every call.

Threshold: the (1 - alpha) quantile of the score on in-distribution calibration data.
p-value of a score s: (1 + #{calibration scores >= s}) / (1 + n), a conformal p-value.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.checks import ContractError, integer, listed, number, show

# Above this many calibration scores, the file keeps this many evenly spaced order statistics
# instead; p-values stay exact up to 1 / MAX_STORED_SCORES.
MAX_STORED_SCORES = 2001
SCORES = ("model_uncertainty", "total_uncertainty", "data_uncertainty")


# The threshold a file states must be the quantile its own stored scores give, to this relative
# tolerance (float32 tools round; JSON written by Python round-trips float64 exactly).
THRESHOLD_RTOL = 1e-6
WHERE = "hydra.ood"


@dataclass(frozen=True)
class OodCalibration:
    """The score an OOD flag is judged on, its threshold at false-positive rate ``alpha``, and
    the calibration scores (all ``n_calibration`` of them, sorted, or evenly spaced quantiles
    of them) the p-values are counted against.

    Every field is checked on construction, so a file whose calibration is not finite, not
    sorted or not consistent with itself never becomes an ``OodCalibration``: its threshold
    must be the (1 - alpha) quantile (method "higher") of its stored scores when all of them
    are stored, and lie between the stored quantiles around that rank otherwise. A flag and
    a p-value computed from it then never contradict each other.
    """

    score: str
    threshold: float
    alpha: float
    n_calibration: int
    sorted_scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ContractError(
                f"{WHERE}: score is {show(self.score)}, expected one of {', '.join(SCORES)}"
            )
        alpha = number(self.alpha, f"{WHERE}: alpha")
        if not 0.0 < alpha < 1.0:
            raise ContractError(
                f"{WHERE}: alpha is {show(self.alpha)}, expected a false-positive rate in (0, 1)"
            )
        n = integer(self.n_calibration, f"{WHERE}: n_calibration", 1)
        stored = np.asarray([number(v, f"{WHERE}: sorted_scores[{i}]")
                             for i, v in enumerate(self.sorted_scores)], dtype=np.float64)
        if stored.size == 0:
            raise ContractError(
                f"{WHERE}: sorted_scores is empty, expected at least one calibration score"
            )
        if stored.size > n:
            raise ContractError(
                f"{WHERE}: {stored.size} sorted_scores for n_calibration {n}, expected at most "
                f"{n} (all the scores, or evenly spaced quantiles of them)"
            )
        down = np.flatnonzero(stored[1:] < stored[:-1])
        if down.size:
            i = int(down[0])
            raise ContractError(
                f"{WHERE}: sorted_scores are not sorted ascending (sorted_scores[{i + 1}] = "
                f"{stored[i + 1]!r} < sorted_scores[{i}] = {stored[i]!r})"
            )
        threshold = number(self.threshold, f"{WHERE}: threshold")
        low, high, what = threshold_range(stored, n, alpha)
        slack = THRESHOLD_RTOL * max(abs(low), abs(high))
        if not low - slack <= threshold <= high + slack:
            raise ContractError(f"{WHERE}: threshold is {threshold!r}, expected {what}")

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

    @cached_property
    def _stored(self) -> npt.NDArray[np.float64]:
        """The stored scores as an array, made once (the service asks for p-values per call)."""
        return np.asarray(self.sorted_scores, dtype=np.float64)

    def p_values(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """p-value per score [B]: small means unusual for in-distribution data."""
        s = np.asarray(scores, dtype=np.float64)
        stored = self._stored
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
    def from_dict(cls, d: Any) -> OodCalibration:
        """Parse ``hydra.ood``: JSON numbers only (no strings, booleans or nulls), then every
        check of the constructor."""
        if not isinstance(d, dict):
            raise ContractError(f"{WHERE} is {show(d)}, expected a JSON object")
        fields = ("score", "threshold", "alpha", "n_calibration", "sorted_scores")
        missing = [k for k in fields if k not in d]
        if missing:
            raise ContractError(f"{WHERE}: {', '.join(missing)} missing")
        if not isinstance(d["score"], str):
            raise ContractError(
                f"{WHERE}: score is {show(d['score'])}, expected one of {', '.join(SCORES)}"
            )
        scores = listed(d["sorted_scores"], f"{WHERE}: sorted_scores")
        return cls(
            score=d["score"],
            threshold=number(d["threshold"], f"{WHERE}: threshold"),
            alpha=number(d["alpha"], f"{WHERE}: alpha"),
            n_calibration=integer(d["n_calibration"], f"{WHERE}: n_calibration", 1),
            sorted_scores=tuple(
                number(v, f"{WHERE}: sorted_scores[{i}]") for i, v in enumerate(scores)
            ),
        )


def higher_rank(n: int, alpha: float) -> int:
    """The 0-based rank numpy's "higher" (1 - alpha) quantile of n sorted values picks."""
    return int(np.ceil((1.0 - alpha) * (n - 1)))


def threshold_range(
    stored: npt.NDArray[np.float64], n: int, alpha: float
) -> tuple[float, float, str]:
    """Where the threshold of a calibration must lie, and how a message says it.

    All n scores stored: exactly their (1 - alpha) "higher" quantile. Evenly spaced quantiles
    of them stored (m < n): the score of rank r = ceil((1 - alpha)(n - 1)) sits at position
    r (m - 1) / (n - 1) among the stored quantiles, so between the quantiles just below and
    just above it (one more on each side for rounding)."""
    m = stored.size
    if m == n:
        value = float(np.quantile(stored, 1.0 - alpha, method="higher"))
        return value, value, (
            f"{value!r}, the (1 - alpha) quantile (method 'higher') of its {n} sorted_scores "
            f"at alpha {alpha!r}"
        )
    position = higher_rank(n, alpha) * (m - 1) / (n - 1)
    lo = max(int(np.floor(position)) - 1, 0)
    hi = min(int(np.ceil(position)) + 1, m - 1)
    return float(stored[lo]), float(stored[hi]), (
        f"a value in [{stored[lo]!r}, {stored[hi]!r}]: the stored quantiles around the (1 - alpha) "
        f"quantile of the {n} calibration scores at alpha {alpha!r}"
    )


# The outputs the service adds to the graph's, all [B]: the argmax of ``mean_probs`` (int64,
# classification only), the OOD flag (bool) and its conformal p-value (float64, with a
# calibration only).
ADDED_OUTPUTS: tuple[str, ...] = ("predicted_class", "is_ood", "ood_p_value")
Arrays = dict[str, npt.NDArray[np.generic]]


def add_outputs(task: str, calibration: OodCalibration | None, out: Arrays, rows: int) -> Arrays:
    """Add ``ADDED_OUTPUTS`` to one call's graph outputs ``out`` (``rows`` instances) of a model
    of ``task`` with ``calibration``, in place. Without a calibration nothing is flagged and
    there is no p-value."""
    if task == "classification":
        out["predicted_class"] = np.argmax(out["mean_probs"], axis=1).astype(np.int64)
    if calibration is not None:
        score = out[calibration.score]
        out["is_ood"] = calibration.is_ood(score)
        out["ood_p_value"] = calibration.p_values(score)
    else:
        out["is_ood"] = np.zeros(rows, dtype=bool)
    return out
