"""The service's metric names (docs/deploy.md's list), and names read from /metrics.

Rules and dashboards may only read these (with the series suffixes their types produce),
the rules' own recorded names, and Prometheus' `up`. The live test checks this catalogue
against the running service, so it cannot silently drift from what is really exported.
"""

from __future__ import annotations

from collections.abc import Iterable

# name -> Prometheus type (docs/deploy.md, "Metrics: which series exist"); counters without `_total`.
DESIGN_METRICS: dict[str, str] = {
    "hydra_http_requests": "counter",
    "hydra_http_request_duration_seconds": "histogram",
    "hydra_predictions": "counter",
    "hydra_ood_predictions": "counter",
    "hydra_total_uncertainty": "histogram",
    "hydra_data_uncertainty": "histogram",
    "hydra_model_uncertainty": "histogram",
    "hydra_uncertainty_drift_psi": "gauge",
    "hydra_inference_batch_size": "histogram",
    "hydra_inference_duration_seconds": "histogram",
    "hydra_queue_wait_seconds": "histogram",
    "hydra_queue_depth": "gauge",
    "hydra_model_info": "gauge",
    # Exported by app/metrics.py beyond the original list; HydraModelVersionRefused reads it.
    "hydra_model_load_failures": "counter",
    # Each loaded version's calibrated OOD alpha; model:hydra_ood_expected:ratio reads it.
    "hydra_ood_target_rate": "gauge",
    # The drift test's p-value beside the PSI; HydraModelUncertaintyDrift reads both.
    "hydra_uncertainty_drift_p_value": "gauge",
    # Versions loaded and warmed up; HydraNoModelReady reads it.
    "hydra_models_ready": "gauge",
    # Regression models' uncertainties, in squared target units (classifiers': nats, above).
    "hydra_total_variance": "histogram",
    "hydra_data_variance": "histogram",
    "hydra_model_variance": "histogram",
}

# Families a process exports only once it has a sample (multiprocess mode writes a series
# when it is first set): regression histograms where only classifiers are loaded.
ONLY_WHEN_USED = {
    f"hydra_{c}_variance{s}" for c in ("total", "data", "model") for s in ("_bucket", "_sum", "_count")
}

# Series Prometheus adds itself for every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def series_names(families: Iterable[tuple[str, str]]) -> set[str]:
    """Series names that metric families (name, type) produce in the exposition format."""
    names = set()
    for name, kind in families:
        for suffix in _SUFFIXES.get(kind, ("",)):
            names.add(name + suffix)
    return names


def design_series() -> set[str]:
    return series_names(DESIGN_METRICS.items())


def live_series(exposition: str) -> set[str]:
    """Series names in a /metrics body: every sample's name and what each family declares."""
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= series_names([(family.name, family.type)])
        names |= {sample.name for sample in family.samples}
    return names
