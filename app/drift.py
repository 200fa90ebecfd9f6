"""Uncertainty drift: population stability index against a calibration reference.

The reference distribution of a score is cut into bins of equal expected mass (quantiles of
the calibration scores). For live scores with bin fractions a_i and expected fractions e_i:
PSI = sum_i (a_i - e_i) ln(a_i / e_i). Conventions: < 0.1 stable, 0.1-0.2 moderate,
> 0.2 significant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Empty bins would make ln(a/e) infinite; fractions are floored at this value.
PSI_FLOOR = 1e-4
DEFAULT_BINS = 10


@dataclass(frozen=True)
class DriftReference:
    """Interior bin edges [K-1] and expected fractions [K] of a reference distribution."""

    edges: tuple[float, ...]
    expected: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(
                f"expected {len(self.edges) + 1} fractions for {len(self.edges)} edges, "
                f"got {len(self.expected)}"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("drift bin edges must be strictly increasing")
        if abs(sum(self.expected) - 1.0) > 1e-6:
            raise ValueError(f"expected fractions must sum to 1, got {sum(self.expected):.6f}")

    @classmethod
    def from_scores(cls, scores: npt.ArrayLike, n_bins: int = DEFAULT_BINS) -> DriftReference:
        """Equal-mass bins from reference scores [N]. Ties (e.g. many zeros) merge bins."""
        values = np.asarray(scores, dtype=np.float64).ravel()
        if values.size < n_bins or not np.all(np.isfinite(values)):
            raise ValueError(
                f"drift reference needs >= {n_bins} finite scores, got {values.size}"
            )
        levels = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        edges = np.unique(np.quantile(values, levels))
        counts = np.bincount(bin_index(edges, values), minlength=edges.size + 1)
        # Drop edges that leave a bin empty (possible with ties at an edge).
        keep = [i for i in range(edges.size) if counts[i] > 0]
        edges = edges[keep]
        counts = np.bincount(bin_index(edges, values), minlength=edges.size + 1)
        expected = counts / counts.sum()
        return cls(tuple(float(e) for e in edges), tuple(float(f) for f in expected))

    def fractions(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        values = np.asarray(scores, dtype=np.float64).ravel()
        counts = np.bincount(bin_index(np.asarray(self.edges), values), minlength=len(self.expected))
        return counts / max(values.size, 1)

    def psi(self, scores: npt.ArrayLike) -> float:
        """PSI of live scores [N] against this reference; NaN when there are none."""
        values = np.asarray(scores, dtype=np.float64).ravel()
        if values.size == 0:
            return float("nan")
        actual = np.maximum(self.fractions(values), PSI_FLOOR)
        expected = np.maximum(np.asarray(self.expected), PSI_FLOOR)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "expected": list(self.expected)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftReference:
        return cls(tuple(float(e) for e in d["edges"]), tuple(float(f) for f in d["expected"]))


def bin_index(edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Bin i holds edges[i-1] < v <= edges[i]; the first bin everything <= edges[0]."""
    return np.searchsorted(edges, values, side="left")
