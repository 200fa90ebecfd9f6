"""Live drift monitoring: a sliding window of recent uncertainties per model and component,
compared with the model's reference distribution by the population stability index."""

from __future__ import annotations

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
    """PSI per component for one model version's traffic.

    ``observe`` returns the PSI of the window when at least ``min_samples`` are in it and
    ``every`` new scores arrived since the last computation (an empty dict otherwise): the
    gauge follows the traffic without a numpy pass per single-instance request.
    """

    def __init__(
        self, references: dict[str, DriftReference], window: int, min_samples: int, every: int = 10
    ) -> None:
        self.references = dict(references)
        self.min_samples = min_samples
        self.every = every
        self._fresh = 0
        self._windows = {c: ScoreWindow(window) for c in UNCERTAINTY_COMPONENTS if c in references}

    def observe(self, outputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, float]:
        """Add one batch's uncertainties [B]; maybe return the PSI of each component."""
        size = 0
        for component, window in self._windows.items():
            scores = outputs[f"{component}_uncertainty"]
            window.extend(scores)
            size = len(scores)
        self._fresh += size
        if not self._windows or self._fresh < self.every:
            return {}
        if len(next(iter(self._windows.values()))) < self.min_samples:
            return {}
        self._fresh = 0
        return {c: self.references[c].psi(w.values()) for c, w in self._windows.items()}
