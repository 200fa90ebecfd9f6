"""Uncertainty drift: population stability index against a calibration reference.

The reference distribution of a score is cut into bins of equal expected mass (quantiles of
the calibration scores). For live scores with bin fractions a_i and expected fractions e_i:
PSI = sum_i (a_i - e_i) ln(a_i / e_i). Conventions: < 0.1 stable, 0.1-0.2 moderate,
> 0.2 significant.

PSI alone does not know how many scores it saw: on 100 scores drawn from the reference
distribution itself, 10 bins give PSI > 0.1 in about 40% of windows. So every PSI comes with
the p-value of a chi-square test of the same bin counts: the live window against the
calibration sample the reference was cut from (a two-sample test of homogeneity, K - 1
degrees of freedom), which accounts for both sample sizes. A drift alarm needs both a large
PSI (the shift matters) and a small p-value (the shift is not sampling noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.checks import ContractError, listed, number, show

# Empty bins would make ln(a/e) infinite; fractions are floored at this value.
PSI_FLOOR = 1e-4
DEFAULT_BINS = 10


SUM_TOLERANCE = 1e-6  # expected fractions must sum to 1 within this


def check_reference(edges: tuple[float, ...], expected: tuple[float, ...], where: str) -> None:
    """Interior bin edges finite and strictly increasing (at least one: two bins, so the
    chi-square test has a degree of freedom), one more fraction than edges, each fraction
    finite and >= 0, summing to 1."""
    e = [number(v, f"{where}: edges[{i}]") for i, v in enumerate(edges)]
    f = [number(v, f"{where}: expected[{i}]") for i, v in enumerate(expected)]
    if not e:
        raise ContractError(
            f"{where}: edges is empty, expected at least 1 interior bin edge (2 bins)"
        )
    for i, (a, b) in enumerate(zip(e, e[1:])):
        if not b > a:
            raise ContractError(
                f"{where}: edges are not strictly increasing (edges[{i + 1}] = {b!r} after "
                f"edges[{i}] = {a!r})"
            )
    if len(f) != len(e) + 1:
        raise ContractError(
            f"{where}: {len(f)} expected fractions for {len(e)} edges, expected {len(e) + 1} "
            "(one per bin)"
        )
    for i, v in enumerate(f):
        if v < 0.0:
            raise ContractError(f"{where}: expected[{i}] is {v!r}, expected a fraction >= 0")
    total = math.fsum(f)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ContractError(f"{where}: expected fractions sum to {total!r}, expected 1")


@dataclass(frozen=True)
class DriftReference:
    """Interior bin edges [K-1] and expected fractions [K] of a reference distribution.

    Checked on construction (``check_reference``): a reference that is not finite, not
    increasing or does not sum to 1 would make the drift statistics meaningless (a NaN
    fraction passes no comparison and silences the alert for good)."""

    edges: tuple[float, ...]
    expected: tuple[float, ...]

    def __post_init__(self) -> None:
        check_reference(self.edges, self.expected, "hydra.drift")

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

    def counts(self, scores: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Scores per bin [K]; non-finite scores are not counted (they belong to no bin)."""
        values = np.asarray(scores, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        edges = np.asarray(self.edges)
        return np.bincount(bin_index(edges, values), minlength=len(self.expected)).astype(np.int64)

    def psi_of_counts(self, counts: npt.ArrayLike) -> float:
        """PSI of live bin counts [K]; NaN when there are none."""
        c = np.asarray(counts, dtype=np.float64)
        total = c.sum()
        if total <= 0:
            return float("nan")
        actual = np.maximum(c / total, PSI_FLOOR)
        expected = np.maximum(np.asarray(self.expected), PSI_FLOOR)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def test(self, counts: npt.ArrayLike, n_reference: int | None) -> DriftStatistic:
        """PSI and chi-square p-value of live bin counts [K] against this reference.

        ``n_reference``: the size of the calibration sample the reference was cut from (its
        fractions are estimates too); None treats the expected fractions as exact.
        """
        c = np.asarray(counts, dtype=np.float64)
        n = float(c.sum())
        if n <= 0:
            return DriftStatistic(float("nan"), float("nan"), 0)
        expected = np.asarray(self.expected, dtype=np.float64)
        live = c / n
        if n_reference is None or n_reference <= 0:
            # One sample against known fractions: Pearson's X^2 = n sum (a - e)^2 / e.
            statistic = n * float(np.sum((live - expected) ** 2 / expected))
        else:
            # Two samples (live n, reference m) in a 2 x K table: X^2 = nm/(n+m) sum (a - e)^2 / p,
            # p the pooled fraction of each bin.
            m = float(n_reference)
            pooled = (c + expected * m) / (n + m)
            nonzero = pooled > 0
            statistic = (n * m / (n + m)) * float(
                np.sum((live - expected)[nonzero] ** 2 / pooled[nonzero])
            )
        return DriftStatistic(self.psi_of_counts(c), chi2_sf(statistic, len(expected) - 1), int(n))

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
    def from_dict(cls, d: Any, where: str = "hydra.drift") -> DriftReference:
        """Parse one component's reference (``where`` names it in messages): JSON numbers
        only, then every check of the constructor."""
        if not isinstance(d, dict):
            raise ContractError(f"{where} is {show(d)}, expected a JSON object")
        missing = [k for k in ("edges", "expected") if k not in d]
        if missing:
            raise ContractError(f"{where}: {', '.join(missing)} missing")
        edges = tuple(number(v, f"{where}: edges[{i}]")
                      for i, v in enumerate(listed(d["edges"], f"{where}: edges")))
        expected = tuple(number(v, f"{where}: expected[{i}]")
                         for i, v in enumerate(listed(d["expected"], f"{where}: expected")))
        check_reference(edges, expected, where)
        return cls(edges, expected)


@dataclass(frozen=True)
class DriftStatistic:
    """PSI of a window, the p-value of its chi-square test, and how many scores it holds."""

    psi: float
    p_value: float
    n: int


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, x/2).

    numpy has no special functions and the service does not depend on scipy: a series below
    a + 1 and a continued fraction above (Numerical Recipes' gammq), to about 1e-12.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if not math.isfinite(x):
        return 0.0 if x > 0 else float("nan")
    if x <= 0:
        return 1.0
    a, z = df / 2.0, x / 2.0
    log_prefix = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= z / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def bin_index(edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Bin i holds edges[i-1] < v <= edges[i]; the first bin everything <= edges[0]."""
    return np.searchsorted(edges, values, side="left")
