"""What each ONNX Runtime call of a served version tells the monitoring: the batch metrics,
the predictions' uncertainty and OOD metrics, and, while the version is its model's default,
its drift window. The batcher calls it once per call, for every request answered in it."""

from __future__ import annotations

from collections.abc import Callable

from app.monitoring.live_drift import DriftMonitor
from app.monitoring.service_metrics import ServiceMetrics
from app.serving.batching import BatchObserver
from app.serving.sessions import LoadedModel, OutputArrays


class ModelObserver(BatchObserver):
    """Feeds one served version's batches into the metrics and, while ``is_default()`` says it
    is its model's default version, into its drift window."""

    def __init__(self, metrics: ServiceMetrics, model: LoadedModel, drift_window: int,
                 is_default: Callable[[], bool]) -> None:
        self._model = model
        self._metrics = metrics
        self._is_default = is_default
        calibration = model.meta.ood
        self.drift = DriftMonitor(
            model.meta.drift, drift_window, None if calibration is None else calibration.n_calibration,
        )
        name = model.name
        # Label lookups once, not per request (they take a lock and hash the labels).
        self._batch_size = metrics.batch_size.labels(name)
        self._duration = metrics.inference_duration.labels(name)
        self._wait = metrics.queue_wait.labels(name)

    def batch_done(self, size: int, duration_s: float, waits_s: list[float], outputs: OutputArrays) -> None:
        self._batch_size.observe(size)
        self._duration.observe(duration_s)
        for w in waits_s:
            self._wait.observe(w)
        self._metrics.observe_predictions(self._model, outputs)
        # Drift is about the traffic of a model's default version, judged by its reference.
        if self._is_default():
            self.drift.observe(outputs)
