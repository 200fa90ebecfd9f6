"""Live drift, the serving half: a sliding window of recent uncertainties per model version and
component, counted into the bins of the version's calibration reference.

The reference and the statistics (PSI and a chi-square p-value) are the shared half, in
contract/drift.py; the gauges that publish them are app/monitoring/live_gauges.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contract.drift import DriftReference, DriftStatistic
from contract.model import UNCERTAINTY_COMPONENTS


@dataclass(frozen=True)
class DriftWindow:
    """One component's live window as bin counts, with the reference they are judged by."""

    edges: tuple[float, ...]
    expected: tuple[float, ...]
    counts: tuple[int, ...]
    n_reference: int | None

    @property
    def n(self) -> int:
        return sum(self.counts)


class ScoreWindow:
    """The last ``size`` scores, in a ring buffer (no per-value Python objects)."""

    def __init__(self, size: int) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._count = 0

    def extend(self, scores: npt.ArrayLike) -> None:
        values = np.asarray(scores, dtype=np.float64).ravel()
        size = self._values.size
        if values.size >= size:
            self._values[:] = values[-size:]
            self._next, self._count = 0, size
            return
        end = self._next + values.size
        if end <= size:
            self._values[self._next : end] = values
        else:
            split = size - self._next
            self._values[self._next :] = values[:split]
            self._values[: end - size] = values[split:]
        self._next = end % size
        self._count = min(self._count + values.size, size)

    def __len__(self) -> int:
        return self._count

    def values(self) -> npt.NDArray[np.float64]:
        return self._values[: self._count] if self._count < self._values.size else self._values


class DriftMonitor:
    """The last ``window`` uncertainties of one model version's traffic, per component, kept
    for the drift statistics (app/monitoring/live_gauges.py turns the bin counts into PSI and
    p-value).

    Non-finite scores are not kept: they belong to no bin and would hide in the counts.
    """

    def __init__(
        self, references: dict[str, DriftReference], window: int, n_reference: int | None = None
    ) -> None:
        self.references = dict(references)
        self.n_reference = n_reference
        self._size = window
        self._windows = {c: ScoreWindow(window) for c in UNCERTAINTY_COMPONENTS if c in references}

    def observe(self, outputs: dict[str, npt.NDArray[np.generic]]) -> None:
        """Add one batch's uncertainties [B]."""
        for component, window in self._windows.items():
            scores = np.asarray(outputs[f"{component}_uncertainty"], dtype=np.float64).ravel()
            if not math.isfinite(scores.sum()):  # one reduction on the common path
                scores = scores[np.isfinite(scores)]
            window.extend(scores)

    def reset(self) -> None:
        """Forget the window (the version stopped being its model's default)."""
        self._windows = {c: ScoreWindow(self._size) for c in self._windows}

    def __len__(self) -> int:
        return min((len(w) for w in self._windows.values()), default=0)

    def windows(self) -> dict[str, DriftWindow]:
        """Each component's window as bin counts against its reference."""
        out = {}
        for component, window in self._windows.items():
            ref = self.references[component]
            counts = ref.counts(window.values())
            out[component] = DriftWindow(
                ref.edges, ref.expected, tuple(int(c) for c in counts), self.n_reference
            )
        return out

    def statistics(self) -> dict[str, DriftStatistic]:
        """PSI and p-value per component of the current window (for tests and benchmarks)."""
        return {
            c: self.references[c].test(w.counts, self.n_reference) for c, w in self.windows().items()
        }
