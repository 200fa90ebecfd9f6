"""Metrics with exact values against an independent computation; drift PSI and the OOD
counter under in-distribution and OOD streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client.utils import floatToGoString

import contract_models as cm
from contract.model import UNCERTAINTY_COMPONENTS
from servekit import make_settings, reference_outputs, serve

V1 = "/v1/models/digits:predict"
LABELS = {"model": "digits", "version": "1"}


def _send(client, x: np.ndarray, chunk: int = 50) -> None:  # type: ignore[no-untyped-def]
    for i in range(0, len(x), chunk):
        r = client.post(V1, json={"instances": x[i : i + chunk].tolist()})
        assert r.status_code == 200, r.text


def test_drift_stable_in_distribution_then_significant_under_ood(
    repo: Path, classifier: cm.BuiltModel, digits: dict
) -> None:
    in_dist = digits["test_x"]  # 497 digits the model never saw, from the same distribution
    far = cm.far_inputs(500)
    ref_in = reference_outputs(classifier.data, in_dist)
    ref_far = reference_outputs(classifier.data, far)
    drift = classifier.meta.drift
    threshold = classifier.meta.ood.threshold
    psi = {"model": "digits", "version": "1", "component": "model"}
    settings = make_settings(repo, drift_window=400, drift_min_samples=100)
    with serve(settings) as (client, _, reg):
        _send(client, in_dist[:50])
        assert reg.get_sample_value("hydra_uncertainty_drift_psi", psi) is None  # < min_samples
        _send(client, in_dist[50:])
        stable = {c: reg.get_sample_value("hydra_uncertainty_drift_psi", {**LABELS, "component": c})
                  for c in UNCERTAINTY_COMPONENTS}
        ood_in = reg.get_sample_value("hydra_ood_predictions_total", LABELS)
        _send(client, far)
        drifted = reg.get_sample_value("hydra_uncertainty_drift_psi", psi)
        ood_after = reg.get_sample_value("hydra_ood_predictions_total", LABELS)
        total = reg.get_sample_value("hydra_predictions_total", LABELS)

    # The gauge is the PSI of exactly the last 400 scores, computed independently.
    assert stable["model"] == drift["model"].psi(ref_in["model_uncertainty"][-400:])
    assert all(v < 0.1 for v in stable.values()), stable
    assert drifted == drift["model"].psi(ref_far["model_uncertainty"][-400:])
    assert drifted > 0.2
    assert ood_in == np.sum(ref_in["model_uncertainty"] > threshold)
    assert ood_in / len(in_dist) < 0.1  # about alpha = 0.05 in distribution
    assert ood_after - ood_in == np.sum(ref_far["model_uncertainty"] > threshold)
    assert (ood_after - ood_in) / len(far) > 0.3
    assert total == len(in_dist) + len(far)


def test_uncertainty_histograms_have_calibration_buckets_and_exact_counts(
    repo: Path, classifier: cm.BuiltModel, digits: dict
) -> None:
    x = np.concatenate([digits["test_x"][:60], cm.far_inputs(40)])
    ref = reference_outputs(classifier.data, x)
    cal = classifier.meta.ood
    with serve(make_settings(repo)) as (client, _, reg):
        _send(client, x, chunk=25)
        metrics_text = client.get("/metrics").text

        def bucket(component: str, le: float) -> float | None:
            return reg.get_sample_value(
                f"hydra_{component}_uncertainty_bucket", {**LABELS, "le": floatToGoString(le)}
            )

        bounds = {"model": [cal.threshold, *cal.quantiles(), *classifier.meta.drift["model"].edges]}
        for component in ("total", "data"):
            bounds[component] = list(classifier.meta.drift[component].edges)
        for component, les in bounds.items():
            scores = ref[f"{component}_uncertainty"]
            for le in les:
                assert bucket(component, le) == np.sum(scores <= le), (component, le)
            assert reg.get_sample_value(f"hydra_{component}_uncertainty_count", LABELS) == len(x)
            assert np.isclose(
                reg.get_sample_value(f"hydra_{component}_uncertainty_sum", LABELS), scores.sum(), rtol=1e-5
            )
        assert reg.get_sample_value("hydra_inference_batch_size_sum", {"model": "digits"}) == len(x)
        assert reg.get_sample_value(
            "hydra_http_requests_total",
            {"route": "/v1/models/{name}:predict", "method": "POST", "status": "200"},
        ) == 4
        assert reg.get_sample_value(
            "hydra_model_info",
            {"model": "digits", "version": "1", "provider": "CPUExecutionProvider",
             "task": "classification", "heads": "5"},
        ) == 1.0
        assert reg.get_sample_value("hydra_ood_target_rate", LABELS) == cal.alpha
        assert reg.get_sample_value("hydra_queue_depth", LABELS) == 0.0
        assert reg.get_sample_value("hydra_queue_wait_seconds_count", {"model": "digits"}) == 4
    assert f'le="{floatToGoString(cal.threshold)}"' in metrics_text
    for name in ("hydra_http_request_duration_seconds", "hydra_inference_duration_seconds"):
        assert f"# TYPE {name} histogram" in metrics_text


def test_unknown_paths_do_not_create_label_values(repo: Path) -> None:
    with serve(make_settings(repo)) as (client, _, reg):
        for i in range(3):
            client.get(f"/random/{i}")
            client.post(f"/v1/models/nope{i}:predict", json={"instances": [[0.0] * 64]})
            client.post(f"/v2/models/nope{i}/versions/{i}/infer", json={})
        assert reg.get_sample_value(
            "hydra_http_requests_total", {"route": "unmatched", "method": "GET", "status": "404"}
        ) == 3
        # Model names and versions stay out of the route label: the template is used.
        for route in ("/v1/models/{name}:predict", "/v2/models/{name}/versions/{version}/infer"):
            assert reg.get_sample_value(
                "hydra_http_requests_total", {"route": route, "method": "POST", "status": "404"}
            ) == 3
        text = client.get("/metrics").text
    assert "nope" not in text
