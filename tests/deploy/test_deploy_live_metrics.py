"""Against the real service: every metric the rules and the dashboard read is one that
/metrics really exports (or a recording rule), and the labels they filter on exist."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from metric_catalog import ONLY_WHEN_USED, SCRAPE_SERIES, design_series, live_series
from model_repo import MODEL_NAME, build_repository
from monitoring_files import as_promql, dashboard_queries, load_dashboard, load_rules
from promql_names import metric_names

DASHBOARD = Path("docker/grafana/dashboards/hydra-uncertainty.json")


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a service that loaded a model and answered in- and out-of-domain traffic."""
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from app.main import create_app
    from app.settings import Settings

    root = tmp_path_factory.mktemp("models")
    inputs = build_repository(root)
    settings = Settings(
        repository=root,
        providers=["CPUExecutionProvider"],
        drift_window=50,
        drift_min_samples=20,
        poll_interval_s=0.2,
    )
    with TestClient(create_app(settings, CollectorRegistry())) as client:
        deadline = time.monotonic() + 30
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the service did not become ready in 30 s"
            time.sleep(0.1)
        for batch in (inputs["in_distribution"][:40], inputs["ood"][:40]):
            response = client.post(
                f"/v1/models/{MODEL_NAME}:predict", json={"instances": batch.tolist()}
            )
            assert response.status_code == 200, response.text
        v2 = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "data": inputs["ood"][:2].ravel().tolist(),
                }
            ]
        }
        assert client.post(f"/v2/models/{MODEL_NAME}/infer", json=v2).status_code == 200
        assert (
            client.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": [[1.0]]}).status_code
            == 400
        )
        response = client.get("/metrics")
        assert response.status_code == 200
        return response.text


def recorded(repo: Path) -> set[str]:
    return {r.name for r in load_rules(repo / "docker" / "rules") if r.kind == "record"}


def test_design_catalogue_is_what_the_service_exports(exposition: str) -> None:
    missing = (
        design_series()
        - live_series(exposition)
        - {n for n in design_series() if n.endswith("_created")}
    )
    assert missing == set()


def test_dashboard_queries_name_live_metrics(repo: Path, exposition: str) -> None:
    known = live_series(exposition) | recorded(repo) | SCRAPE_SERIES
    unknown = {
        where: missing
        for where, expr in dashboard_queries(load_dashboard(repo / DASHBOARD))
        if (missing := metric_names(as_promql(expr)) - known)
    }
    assert unknown == {}


def test_rules_name_live_metrics(repo: Path, exposition: str) -> None:
    known = live_series(exposition) | recorded(repo) | SCRAPE_SERIES
    unknown = {
        r.name: missing
        for r in load_rules(repo / "docker" / "rules")
        if (missing := metric_names(r.expr) - known)
    }
    assert unknown == {}


def test_live_check_catches_a_metric_the_service_does_not_export(exposition: str) -> None:
    known = live_series(exposition)
    assert "hydra_queue_depth" in known
    assert metric_names("sum(hydra_queue_length)") - known == {"hydra_queue_length"}


def _samples(exposition: str, name: str) -> list[dict[str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        s.labels
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
        if s.name == name
    ]


def test_label_values_the_rules_filter_on_exist(exposition: str) -> None:
    # HydraModelUncertaintyDrift: component="model".
    components = {s["component"] for s in _samples(exposition, "hydra_uncertainty_drift_psi")}
    assert {"total", "data", "model"} <= components
    # HydraPredictionLatencyHigh: route=~".*(:predict|/infer)" must match the route labels.
    routes = {
        s["route"] for s in _samples(exposition, "hydra_http_request_duration_seconds_bucket")
    }
    assert {r for r in routes if re.fullmatch(r".*(:predict|/infer)", r)} == {
        "/v1/models/{name}:predict",
        "/v2/models/{name}/infer",
    }
    # HydraModelOnCpu: provider="CPUExecutionProvider"; the OOD rules: model and version.
    info = _samples(exposition, "hydra_model_info")
    assert [(i["model"], i["provider"]) for i in info] == [(MODEL_NAME, "CPUExecutionProvider")]
    statuses = {s["status"] for s in _samples(exposition, "hydra_http_requests_total")}
    assert {"200", "400"} <= statuses
    ood = _samples(exposition, "hydra_ood_predictions_total")
    assert ood and all(set(s) == {"model", "version"} for s in ood)


@pytest.mark.slow
def test_multi_worker_service_exports_the_same_names(repo: Path, tmp_path: Path) -> None:
    """HYDRA_WORKERS=2 (Prometheus multiprocess mode): /metrics still has every name the
    dashboard and rules read, and hydra_model_info no per-process duplicates."""
    import httpx
    from processes import running_service, wait_ready

    inputs = build_repository(tmp_path / "models")
    with running_service(
        tmp_path / "models",
        tmp_path / "service.log",
        HYDRA_WORKERS="2",
        HYDRA_DRIFT_WINDOW="50",
        HYDRA_DRIFT_MIN_SAMPLES="20",
    ) as (url, process):
        wait_ready(url, process)
        # Each worker loads the model itself; the replica is ready only once every worker
        # has, so fresh connections (which the kernel spreads over both) all find it loaded.
        answers = [httpx.get(f"{url}/v2/models/{MODEL_NAME}/ready", timeout=5.0).status_code
                   for _ in range(8)]
        assert answers == [200] * 8
        with httpx.Client(timeout=5.0) as client:
            for start in range(0, 200, 20):  # spread over both workers
                batch = inputs["ood"][start : start + 20].tolist()
                response = client.post(
                    f"{url}/v1/models/{MODEL_NAME}:predict", json={"instances": batch}
                )
                assert response.status_code == 200, response.text
            # Each worker publishes its live gauges once a second: wait for the pooled drift.
            deadline = time.monotonic() + 15
            while "hydra_uncertainty_drift_p_value{" not in (text := client.get(f"{url}/metrics").text):
                assert time.monotonic() < deadline, "no drift p-value from the workers in 15 s"
                time.sleep(0.2)
    live = live_series(text)
    # Multiprocess mode exports a labelled family only once it has a sample: no version was
    # refused here, so the load-failure counter is legitimately absent.
    absent_until_used = {"hydra_model_load_failures_total"} | ONLY_WHEN_USED
    created = {n for n in design_series() if n.endswith("_created")}
    assert design_series() - live - created - absent_until_used == set()
    known = live | recorded(repo) | SCRAPE_SERIES
    for where, expr in dashboard_queries(load_dashboard(repo / DASHBOARD)):
        assert metric_names(as_promql(expr)) <= known, where
    info = _samples(text, "hydra_model_info")
    assert len(info) == 1 and "pid" not in info[0], info
    for name in ("hydra_queue_depth", "hydra_uncertainty_drift_psi", "hydra_models_ready"):
        series = _samples(text, name)
        assert series and all("pid" not in s for s in series), (name, series)
    assert {s["version"] for s in _samples(text, "hydra_uncertainty_drift_psi")} == {"1"}
    from prometheus_client.parser import text_string_to_metric_families

    counted = [
        (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hydra_predictions_total"
    ]
    assert counted == [({"model": MODEL_NAME, "version": "1"}, 200.0)]  # summed over workers


@pytest.mark.slow
def test_a_killed_worker_drops_out_of_the_live_gauges(tmp_path: Path) -> None:
    """HYDRA_WORKERS=2: one worker is killed (uvicorn starts a new one). Its live state and
    live gauge files are removed by the survivors, and the merged gauges show one copy of
    the version, never the dead worker's values."""
    import os
    import signal

    import httpx
    import psutil
    from processes import running_service, wait_ready

    build_repository(tmp_path / "models")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with running_service(
        tmp_path / "models", tmp_path / "service.log",
        HYDRA_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    ) as (url, process):
        wait_ready(url, process)

        def workers() -> set[int]:
            return {c.pid for c in psutil.Process(process.pid).children(recursive=True)
                    if (metrics_dir / f"hydra_live_{c.pid}.json").exists()}

        deadline = time.monotonic() + 30
        while len(workers()) < 2:
            assert time.monotonic() < deadline, "two workers never published their state"
            time.sleep(0.2)
        victim = min(workers())
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        def live_files(pid: int) -> list[Path]:
            # Its counters and histograms stay: their totals still count in the sums.
            return [*metrics_dir.glob(f"hydra_live_{pid}.json"), *metrics_dir.glob(f"gauge_live*_{pid}.db")]

        assert live_files(victim)
        while live_files(victim):
            assert time.monotonic() < deadline, f"live files of dead worker {victim} still there"
            time.sleep(0.2)
        while len(workers()) < 2:  # the replacement worker published too
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.2)
        time.sleep(1.5)  # every live worker published at least once more
        text = httpx.get(f"{url}/metrics", timeout=5).text
    assert not live_files(victim) and (metrics_dir / f"counter_{victim}.db").exists()
    info = _samples(text, "hydra_model_info")
    assert len(info) == 1 and info[0]["version"] == "1", info
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name in ("hydra_models_ready", "hydra_queue_depth")
    }
    assert values == {"hydra_models_ready": 1.0, "hydra_queue_depth": 0.0}
