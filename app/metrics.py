"""Prometheus metrics, built on a registry that is passed in (DESIGN.md lists the names).

Uncertainty histograms have per-model buckets: a fixed grid plus the model's calibration
quantiles (the drift reference's equal-mass bin edges, the OOD score's quantiles) and its
OOD threshold, so a bucket boundary sits exactly at the threshold. The exposition format
allows a different ``le`` set per label set; each (model, version) gets its own unregistered
``Histogram`` and one collector publishes them under one name. In multiprocess mode those
histograms write their values to the shared directory like every other metric, and
``MultiProcessCollector`` merges them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.contract import UNCERTAINTY_COMPONENTS
from app.runtime import LoadedModel

UNCERTAINTY_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 10.0, 100.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def uncertainty_buckets(model: LoadedModel, component: str) -> list[float]:
    """Sorted bucket bounds for one component: grid + calibration quantiles + threshold."""
    bounds = set(UNCERTAINTY_GRID)
    reference = model.meta.drift.get(component)
    if reference is not None:
        bounds.update(reference.edges)
    calibration = model.meta.ood
    if calibration is not None and calibration.score == f"{component}_uncertainty":
        bounds.update(calibration.quantiles())
        bounds.add(calibration.threshold)
    return sorted(b for b in bounds if np.isfinite(b))


class _UncertaintyCollector(Collector):
    """Publishes the per-(model, version) histograms of each component under one name."""

    def __init__(self) -> None:
        self.histograms: dict[str, dict[tuple[str, str], Histogram]] = {
            c: {} for c in UNCERTAINTY_COMPONENTS
        }

    def collect(self) -> Iterable[Metric]:
        for component, by_model in self.histograms.items():
            merged = Metric(
                f"hydra_{component}_uncertainty", _UNCERTAINTY_DOC[component], "histogram"
            )
            for histogram in list(by_model.values()):
                for metric in histogram.collect():
                    merged.samples.extend(metric.samples)
            yield merged


_UNCERTAINTY_DOC = {
    "total": "Total predictive uncertainty per prediction (nats; regression: variance)",
    "data": "Data (aleatoric) uncertainty per prediction (nats; regression: variance)",
    "model": "Model (epistemic) uncertainty per prediction: the heads' disagreement",
}


class ServiceMetrics:
    """Every metric the service exports, on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.http_requests = Counter(
            "hydra_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.http_duration = Histogram(
            "hydra_http_request_duration_seconds", "HTTP request duration",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.predictions = Counter(
            "hydra_predictions", "Instances predicted", ["model", "version"], registry=r
        )
        self.ood_predictions = Counter(
            "hydra_ood_predictions", "Instances flagged out of distribution",
            ["model", "version"], registry=r,
        )
        self.drift_psi = Gauge(
            "hydra_uncertainty_drift_psi",
            "Population stability index of recent uncertainties against the calibration reference",
            ["model", "component"], registry=r, multiprocess_mode="max",
        )
        self.batch_size = Histogram(
            "hydra_inference_batch_size", "Instances per ONNX Runtime call", ["model"],
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.inference_duration = Histogram(
            "hydra_inference_duration_seconds", "Duration of one ONNX Runtime call", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "hydra_queue_wait_seconds", "Time a request waited for its batch", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "hydra_queue_depth", "Requests waiting in the batching queue", ["model"],
            registry=r, multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "hydra_model_info", "Loaded model versions (value 1) and their active provider",
            ["model", "version", "provider", "task", "heads"], registry=r,
            multiprocess_mode="livemax",
        )
        self.ood_target_rate = Gauge(
            "hydra_ood_target_rate",
            "Calibrated false-positive rate alpha of the OOD threshold: the expected OOD rate "
            "on in-distribution traffic", ["model", "version"], registry=r,
            multiprocess_mode="livemax",
        )
        self.load_failures = Counter(
            "hydra_model_load_failures", "Model versions refused at load (contract or warm-up)",
            ["model"], registry=r,
        )
        self._uncertainty = _UncertaintyCollector()
        if not multiprocess_enabled():
            r.register(self._uncertainty)

    def model_loaded(self, model: LoadedModel) -> None:
        key = (model.name, str(model.version))
        for component in UNCERTAINTY_COMPONENTS:
            if key in self._uncertainty.histograms[component]:
                continue
            self._uncertainty.histograms[component][key] = Histogram(
                f"hydra_{component}_uncertainty", _UNCERTAINTY_DOC[component],
                ["model", "version"], buckets=uncertainty_buckets(model, component), registry=None,
            )
        self.model_info.labels(
            model.name, str(model.version), model.provider, model.meta.task, str(model.meta.num_heads)
        ).set(1)
        if model.meta.ood is not None:
            self.ood_target_rate.labels(*key).set(model.meta.ood.alpha)

    def model_unloaded(self, model: LoadedModel) -> None:
        key = (model.name, str(model.version))
        for by_model in self._uncertainty.histograms.values():
            by_model.pop(key, None)
        labels = (model.name, str(model.version), model.provider, model.meta.task, str(model.meta.num_heads))
        for gauge, values in ((self.model_info, labels), (self.ood_target_rate, key)):
            try:
                gauge.remove(*values)
            except KeyError:
                pass

    def observe_predictions(self, model: LoadedModel, outputs: dict[str, np.ndarray]) -> None:
        """Count and histogram one batch of outputs [B]."""
        key = (model.name, str(model.version))
        n = int(outputs["total_uncertainty"].shape[0])
        self.predictions.labels(*key).inc(n)
        flagged = int(np.count_nonzero(outputs["is_ood"]))
        if flagged:
            self.ood_predictions.labels(*key).inc(flagged)
        else:
            self.ood_predictions.labels(*key)  # the series exists from the first prediction on
        for component in UNCERTAINTY_COMPONENTS:
            histogram = self._uncertainty.histograms[component].get(key)
            if histogram is None:
                continue
            child = histogram.labels(*key)
            for value in outputs[f"{component}_uncertainty"].tolist():
                child.observe(value)
