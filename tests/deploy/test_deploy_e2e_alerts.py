"""End to end on this machine: the service and a real Prometheus running the project's own
prometheus.yml and rule files. In-distribution traffic first (no alert), then OOD traffic,
until the OOD-rate and drift alerts are `firing` in Prometheus' /api/v1/alerts. And with the
GPU override's target file, the CPU-only service fires HydraModelOnCpu.

Only what a test must change is rewritten, in tmp_path: the targets (127.0.0.1 and free
ports), the scrape and evaluation intervals (1 s) and the alerts' `for:` durations (2 s).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from model_repo import MODEL_NAME, build_repository
from processes import free_port, running_prometheus, running_service, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.timeout(180)]

SHORT_FOR = "2s"
BUDGET_S = 90.0


def prometheus_setup(
    repo: Path, dest: Path, service_port: int, prometheus_port: int, targets: str = "targets"
) -> Path:
    """The project's Prometheus files under dest, adjusted for a local run; returns the config.

    targets: which target folder to use, "targets" (compose) or "targets-gpu" (GPU override).
    """
    docker = repo / "docker"
    dest.mkdir()
    config = yaml.safe_load((docker / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        if "scrape_timeout" in job:
            job["scrape_timeout"] = "1s"
        for static in job.get("static_configs", []):
            static["targets"] = [
                t.replace("localhost:9090", f"127.0.0.1:{prometheus_port}")
                for t in static["targets"]
            ]
    (dest / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    target_file = (docker / targets / "hydra.yml").read_text()
    assert "hydra:8000" in target_file
    (dest / "targets").mkdir()
    (dest / "targets" / "hydra.yml").write_text(
        target_file.replace("hydra:8000", f"127.0.0.1:{service_port}")
    )

    (dest / "rules").mkdir()
    for path in sorted((docker / "rules").glob("*.rules.yml")):
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = SHORT_FOR
        (dest / "rules" / path.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    return dest / "prometheus.yml"


@pytest.fixture(params=["targets"])
def stack(
    request: pytest.FixtureRequest, repo: Path, prometheus_bin: Path, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    inputs = build_repository(tmp_path / "models")
    settings = {"HYDRA_DRIFT_WINDOW": "200", "HYDRA_DRIFT_MIN_SAMPLES": "100"}
    with running_service(tmp_path / "models", tmp_path / "service.log", **settings) as (
        service,
        process,
    ):
        service_port = int(service.rsplit(":", 1)[1])
        prometheus_port = free_port()
        config = prometheus_setup(
            repo, tmp_path / "prometheus", service_port, prometheus_port, request.param
        )
        try:
            with running_prometheus(prometheus_bin, config, prometheus_port, tmp_path) as prometheus:
                yield {
                    "service": service,
                    "prometheus": f"http://127.0.0.1:{prometheus_port}",
                    "inputs": inputs,
                    "processes": [process, prometheus],
                }
        finally:  # after Prometheus stopped
            shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)


def alerts(client: httpx.Client, prometheus: str) -> dict[str, set[str]]:
    """alertname -> states (pending/firing) in Prometheus' API."""
    body = client.get(f"{prometheus}/api/v1/alerts").json()
    states: dict[str, set[str]] = {}
    for alert in body["data"]["alerts"]:
        states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
    return states


def query(client: httpx.Client, prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = client.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def send(
    client: httpx.Client, service: str, rows: np.ndarray, rng: np.random.Generator, n: int = 20
) -> None:
    batch = rows[rng.integers(0, len(rows), size=n)]
    response = client.post(
        f"{service}/v1/models/{MODEL_NAME}:predict", json={"instances": batch.tolist()}
    )
    assert response.status_code == 200, response.text


def test_ood_traffic_fires_the_ood_rate_and_drift_alerts(stack: dict[str, Any]) -> None:
    start = time.monotonic()
    service, prometheus, processes = stack["service"], stack["prometheus"], stack["processes"]
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=5.0) as client:
        wait_until(
            lambda: client.get(f"{service}/v2/health/ready").status_code == 200,
            30,
            "the service to be ready",
            processes,
        )
        wait_until(
            lambda: client.get(f"{prometheus}/-/ready").status_code == 200,
            30,
            "Prometheus to be ready",
            processes,
        )
        # The project's rules loaded, the service scraped as job "hydra".
        groups = client.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        assert {g["name"] for g in groups} == {"hydra-recording", "hydra-alerts"}
        wait_until(
            lambda: query(client, prometheus, 'up{job="hydra"} == 1'),
            20,
            "the service target to be up",
            processes,
        )

        # Phase 1: in-distribution traffic. The OOD rate is computed and near alpha: no alert.
        def ood_rate() -> list[dict[str, Any]]:
            send(client, service, stack["inputs"]["in_distribution"], rng)
            return query(client, prometheus, "model:hydra_ood_predictions:ratio_rate5m")

        wait_until(
            lambda: len(ood_rate()) == 1,
            20,
            "the OOD-rate recording rule to have a value",
            processes,
        )
        calm_until = time.monotonic() + 4  # > for: 2s, several evaluations
        while time.monotonic() < calm_until:
            send(client, service, stack["inputs"]["in_distribution"], rng)
            time.sleep(0.1)
        (rate,) = query(client, prometheus, "model:hydra_ood_predictions:ratio_rate5m")
        assert float(rate["value"][1]) < 0.15
        quiet = alerts(client, prometheus)
        assert "HydraOodRateHigh" not in quiet and "HydraModelUncertaintyDrift" not in quiet, quiet

        # Phase 2: out-of-distribution traffic until both alerts fire.
        def firing() -> bool:
            send(client, service, stack["inputs"]["ood"], rng)
            states = alerts(client, prometheus)
            return all(
                "firing" in states.get(a, set())
                for a in ("HydraOodRateHigh", "HydraModelUncertaintyDrift")
            )

        wait_until(
            firing,
            BUDGET_S - (time.monotonic() - start) - 5,
            "HydraOodRateHigh and HydraModelUncertaintyDrift to fire",
            processes,
        )

        body = client.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
        fired = {a["labels"]["alertname"]: a for a in body if a["state"] == "firing"}
        assert fired["HydraOodRateHigh"]["labels"]["model"] == MODEL_NAME
        assert fired["HydraModelUncertaintyDrift"]["labels"]["model"] == MODEL_NAME
        assert float(fired["HydraModelUncertaintyDrift"]["value"]) > 0.2
        # The service runs on the CPU where no GPU is expected, and it is up: those stay quiet.
        assert not {"HydraModelOnCpu", "HydraTargetDown", "HydraTargetMissing"} & set(fired)
    assert time.monotonic() - start < BUDGET_S


@pytest.mark.parametrize("stack", ["targets-gpu"], indirect=True)
def test_cpu_fallback_on_a_gpu_target_fires_model_on_cpu(stack: dict[str, Any]) -> None:
    """docker-compose.gpu.yml's target file marks the service gpu_expected="true"; this
    service runs on CPUExecutionProvider, as after a silent CUDA fallback: HydraModelOnCpu."""
    prometheus, processes = stack["prometheus"], stack["processes"]
    with httpx.Client(timeout=5.0) as client:
        def firing_alert() -> dict[str, Any] | None:
            body = client.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
            found = [a for a in body
                     if a["labels"]["alertname"] == "HydraModelOnCpu" and a["state"] == "firing"]
            return found[0] if found else None

        # The alert is read in the same response that shows it firing (a second request
        # could land between two rule evaluations).
        alert = wait_until(firing_alert, 45, "HydraModelOnCpu to fire", processes)
        assert alert["labels"]["model"] == MODEL_NAME
        assert alert["labels"]["version"] == "1"
