"""Live drift monitoring: a sliding window of recent uncertainties per model and component,
compared with the model's reference distribution by the population stability index."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from app.contract import UNCERTAINTY_COMPONENTS
from app.drift import DriftReference


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
    """PSI per component for one model version's traffic; NaN until ``min_samples`` arrived."""

    def __init__(
        self, references: dict[str, DriftReference], window: int, min_samples: int
    ) -> None:
        self.references = dict(references)
        self.min_samples = min_samples
        self._windows = {c: ScoreWindow(window) for c in UNCERTAINTY_COMPONENTS if c in references}

    def observe(self, outputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, float]:
        """Add one batch's uncertainties [B]; return the PSI of each component."""
        psi: dict[str, float] = {}
        for component, window in self._windows.items():
            window.extend(outputs[f"{component}_uncertainty"])
            psi[component] = (
                self.references[component].psi(window.values())
                if len(window) >= self.min_samples
                else math.nan
            )
        return psi
