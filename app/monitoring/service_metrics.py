"""The service's Prometheus metrics, built on a registry that is passed in, and their
exposition for /metrics.

Counters and histograms live here. The gauges that describe what is loaded right now (model
info, OOD alpha, queue depth, drift, readiness) are derived from the repository's state at
scrape time by app/monitoring/live_gauges.py, so they appear and disappear with what they
describe.

Uncertainty histograms have per-version buckets: a fixed grid plus the model's calibration
quantiles (the drift reference's equal-mass bin edges, the OOD score's quantiles) and its
OOD threshold, so a bucket boundary sits exactly at the threshold. The exposition format
allows a different ``le`` set per label set; each (model, version) gets its own unregistered
``Histogram`` and one collector publishes them under one name, so queries must aggregate by
``(model, version, le)``. Units differ by task, and a metric has one unit: classification
uncertainties are entropies in nats (``hydra_<component>_uncertainty``), regression ones
variances in squared target units (``hydra_<component>_variance``). In multiprocess mode those
histograms write their values to the shared directory like every other metric, and
``MultiProcessCollector`` merges them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.monitoring.live_gauges import LiveCollector, WorkerState
from contract.model import UNCERTAINTY_COMPONENTS, ModelMetadata

logger = logging.getLogger("app.metrics")  # the name log lines carry (their "logger" field)

UNCERTAINTY_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 10.0, 100.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
TASKS = ("classification", "regression")


class ModelVersion(Protocol):
    """What the metrics need to know of a served model version (a loaded model has it)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def meta(self) -> ModelMetadata: ...


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format /metrics answers: this registry, or with several workers the merged
    files of all of them."""
    if multiprocess_enabled():
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape)
        return generate_latest(scrape)
    return generate_latest(registry)


def uncertainty_metric(task: str, component: str) -> str:
    """The histogram a component of a model of this task is recorded in (one unit per name)."""
    return f"hydra_{component}_variance" if task == "regression" else f"hydra_{component}_uncertainty"


_DOC = {
    ("classification", "total"): "Total predictive uncertainty per prediction of a classifier (entropy, nats)",
    ("classification", "data"): "Data (aleatoric) uncertainty per prediction of a classifier (nats)",
    ("classification", "model"): "Model (epistemic) uncertainty per prediction of a classifier: "
    "the heads' disagreement (nats)",
    ("regression", "total"): "Total predictive variance per prediction of a regressor "
    "(squared target units, summed over outputs)",
    ("regression", "data"): "Data (aleatoric) variance per prediction of a regressor (squared target units)",
    ("regression", "model"): "Model (epistemic) variance per prediction of a regressor: "
    "the spread of the heads' means (squared target units)",
}


def uncertainty_buckets(model: ModelVersion, component: str) -> list[float]:
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
    """Publishes the per-(model, version) histograms of each metric name under that name."""

    def __init__(self) -> None:
        self.histograms: dict[str, dict[tuple[str, str], Histogram]] = {
            uncertainty_metric(t, c): {} for t in TASKS for c in UNCERTAINTY_COMPONENTS
        }
        self._docs = {uncertainty_metric(t, c): _DOC[(t, c)] for t in TASKS for c in UNCERTAINTY_COMPONENTS}

    def collect(self) -> Iterable[Metric]:
        for name, by_version in self.histograms.items():
            merged = Metric(name, self._docs[name], "histogram")
            for histogram in list(by_version.values()):
                for metric in histogram.collect():
                    merged.samples.extend(metric.samples)
            yield merged


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
        self.grpc_requests = Counter(
            "hydra_grpc_requests", "gRPC calls answered", ["method", "code"], registry=r
        )
        self.grpc_duration = Histogram(
            "hydra_grpc_request_duration_seconds", "gRPC call duration",
            ["method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.predictions = Counter(
            "hydra_predictions", "Instances predicted", ["model", "version"], registry=r
        )
        self.ood_predictions = Counter(
            "hydra_ood_predictions", "Instances flagged out of distribution",
            ["model", "version"], registry=r,
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
        self.load_failures = Counter(
            "hydra_model_load_failures",
            "Model versions refused at load (incomplete or changing file, contract, metadata or warm-up)",
            ["model"], registry=r,
        )
        self._uncertainty = _UncertaintyCollector()
        # Per (model, version): the series one batch updates, looked up once (a label lookup
        # takes a lock and hashes the labels); dropped when the version is (re)loaded or unloaded.
        self._children: dict[tuple[str, str], tuple[Any, Any, list[tuple[str, Any]]]] = {}
        self._live: LiveCollector | None = None
        if not multiprocess_enabled():
            r.register(self._uncertainty)

    def attach_state(self, state: Callable[[], WorkerState], min_samples: int) -> None:
        """Single process: the live gauges read ``state()`` at every scrape (multiprocess
        mode publishes them through files instead; see app/monitoring/live_gauges.py)."""
        if multiprocess_enabled() or self._live is not None:
            return
        self._live = LiveCollector(state, min_samples)
        self.registry.register(self._live)

    def model_loaded(self, model: ModelVersion) -> None:
        key = (model.name, str(model.version))
        self._children.pop(key, None)
        for component in UNCERTAINTY_COMPONENTS:
            name = uncertainty_metric(model.meta.task, component)
            self._uncertainty.histograms[name][key] = Histogram(
                name, _DOC[(model.meta.task, component)],
                ["model", "version"], buckets=uncertainty_buckets(model, component), registry=None,
            )

    def model_unloaded(self, model: ModelVersion) -> None:
        key = (model.name, str(model.version))
        self._children.pop(key, None)
        for by_version in self._uncertainty.histograms.values():
            by_version.pop(key, None)

    def observe_predictions(self, model: ModelVersion, outputs: dict[str, np.ndarray]) -> None:
        """Count and histogram one batch of outputs [B]. Non-finite values are never observed
        (one would poison a histogram's sum for good); they are logged."""
        key = (model.name, str(model.version))
        children = self._children.get(key)
        if children is None:
            histograms = []
            for component in UNCERTAINTY_COMPONENTS:
                name = uncertainty_metric(model.meta.task, component)
                histogram = self._uncertainty.histograms[name].get(key)
                if histogram is not None:
                    histograms.append((component, histogram.labels(*key)))
            # The OOD series exists from the first prediction on, even at zero.
            children = (self.predictions.labels(*key), self.ood_predictions.labels(*key), histograms)
            self._children[key] = children
        predicted, ood, histograms = children
        n = int(outputs["total_uncertainty"].shape[0])
        predicted.inc(n)
        flagged = int(np.count_nonzero(outputs["is_ood"]))
        if flagged:
            ood.inc(flagged)
        for component, child in histograms:
            values = np.asarray(outputs[f"{component}_uncertainty"], dtype=np.float64)
            if math.isfinite(values.sum()):  # one reduction on the common path
                finite = None
            else:
                finite = np.isfinite(values)
            if finite is not None and not finite.all():
                logger.warning(
                    "%d non-finite %s uncertainties from %s/%s not recorded in metrics",
                    int((~finite).sum()), component, model.name, model.version,
                )
                values = values[finite]
            for value in values.tolist():
                child.observe(value)
