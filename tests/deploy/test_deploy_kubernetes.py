"""Kubernetes manifests: offline schema validation (kubernetes-validate, strict) and the
wiring between them (probes on the real endpoints, GPU requests, selectors, scraping)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# kubernetes-validate 1.37 bundles schemas for 1.28 ... 1.37. 1.34 is what current managed
# clusters run; 1.37 is the newest bundled, so a field removed upstream shows up early.
K8S_VERSIONS = ("1.34.0", "1.37.0")
SERVICE_UID = 10001  # the Dockerfile's HYDRA_UID


def manifest_files(repo: Path) -> list[Path]:
    return sorted((repo / "deploy" / "k8s").rglob("*.yaml"))


def kubernetes_validate(version: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_all(repo: Path) -> dict[str, dict[str, Any]]:
    """Every object by kind (one object per kind in our manifests)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in manifest_files(repo):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in objects, f"two {doc['kind']} objects: extend load_all"
                objects[doc["kind"]] = doc
    return objects


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_strict_schema_validation(repo: Path, version: str) -> None:
    files = manifest_files(repo)
    assert {p.name for p in files} >= {"deployment.yaml", "service.yaml", "hpa.yaml"}
    result = kubernetes_validate(version, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(files)


def test_schema_validation_catches_a_planted_mistake(repo: Path, tmp_path: Path) -> None:
    text = (repo / "deploy/k8s/deployment.yaml").read_text()
    planted = tmp_path / "deployment.yaml"
    planted.write_text(text.replace("path: /v2/health/ready", "paht: /v2/health/ready"))
    result = kubernetes_validate(K8S_VERSIONS[0], planted)
    assert result.returncode != 0
    assert "'paht' was unexpected" in result.stdout + result.stderr


def _container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {
        p.get("name", str(p["containerPort"])): p["containerPort"]
        for p in container.get("ports", [])
    }


def _port_of(ref: int | str, ports: dict[str, int]) -> int | None:
    return ref if isinstance(ref, int) else ports.get(ref)


def wiring_problems(objects: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "hydra"]
    ports = _container_ports(container)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}

    for probe, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            problems.append(f"{probe} must GET {path}, got {get.get('path')!r}")
        if _port_of(get.get("port"), ports) is None:
            problems.append(f"{probe} port {get.get('port')!r} is not a container port")
    if env.get("HYDRA_PORT") is not None and int(env["HYDRA_PORT"]) not in ports.values():
        problems.append(f"HYDRA_PORT={env['HYDRA_PORT']} is not a container port {ports}")
    if env.get("HYDRA_HOST") != "0.0.0.0":
        problems.append(
            "HYDRA_HOST must be 0.0.0.0 in a pod (the default 127.0.0.1 is unreachable)"
        )

    resources = container.get("resources", {})
    gpu = resources.get("limits", {}).get("nvidia.com/gpu")
    if not isinstance(gpu, int) or gpu < 1:
        problems.append(f"limits must request nvidia.com/gpu >= 1, got {gpu!r}")
    requested = resources.get("requests", {}).get("nvidia.com/gpu", gpu)
    if requested != gpu:
        problems.append(f"nvidia.com/gpu request {requested!r} must equal its limit {gpu!r}")
    if pod_labels.get("hydra.example.com/gpu-expected") != ("true" if gpu else "false"):
        problems.append(
            "pod label hydra.example.com/gpu-expected must say whether a GPU is requested"
        )

    security = pod["spec"].get("securityContext", {})
    if not security.get("runAsNonRoot") or security.get("runAsUser") != SERVICE_UID:
        problems.append(f"pod must run as non-root uid {SERVICE_UID} (the image's user)")

    annotations = pod["metadata"].get("annotations", {})
    if (
        annotations.get("prometheus.io/scrape") != "true"
        or annotations.get("prometheus.io/path") != "/metrics"
    ):
        problems.append("pod must be annotated for scraping /metrics")
    if int(annotations.get("prometheus.io/port", -1)) not in ports.values():
        problems.append(
            f"prometheus.io/port {annotations.get('prometheus.io/port')} is not a container port"
        )

    selector = deployment["spec"]["selector"]["matchLabels"]
    for kind, labels in (
        ("Deployment", selector),
        ("Service", objects["Service"]["spec"]["selector"]),
        ("PodDisruptionBudget", objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
    ):
        if any(pod_labels.get(k) != v for k, v in labels.items()):
            problems.append(f"{kind} selector {labels} does not select the pods {pod_labels}")
    for port in objects["Service"]["spec"]["ports"]:
        if _port_of(port["targetPort"], ports) is None:
            problems.append(f"Service targetPort {port['targetPort']!r} is not a container port")

    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    ref = hpa["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"HPA scales {ref['kind']}/{ref['name']}, not the Deployment")
    if not 1 <= hpa.get("minReplicas", 1) <= hpa["maxReplicas"]:
        problems.append("HPA needs 1 <= minReplicas <= maxReplicas")
    if any(
        m.get("resource", {}).get("name") == "cpu" for m in hpa["metrics"]
    ) and "cpu" not in resources.get("requests", {}):
        problems.append("HPA on CPU utilisation needs a CPU request on the container")

    claim = objects["PersistentVolumeClaim"]["metadata"]["name"]
    for owner in (deployment, objects["Job"]):
        volumes = owner["spec"]["template"]["spec"]["volumes"]
        mounted = {
            v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
        }
        if mounted != {claim}:
            problems.append(f"{owner['kind']} mounts claims {mounted}, expected {claim!r}")
    return problems


def test_manifests_are_wired_together(repo: Path) -> None:
    assert wiring_problems(load_all(repo)) == []


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (
            lambda o: o["Deployment"]["spec"]["template"]["spec"]["containers"][0][
                "readinessProbe"
            ]["httpGet"].update(path="/healthz"),
            "readinessProbe must GET /v2/health/ready",
        ),
        (
            lambda o: o["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"][
                "limits"
            ].pop("nvidia.com/gpu"),
            "nvidia.com/gpu >= 1",
        ),
        (
            lambda o: o["Service"]["spec"]["selector"].update(
                {"app.kubernetes.io/name": "hydra-server"}
            ),
            "Service selector",
        ),
        (
            lambda o: o["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"].update(
                name="hydra-serve"
            ),
            "HPA scales Deployment/hydra-serve",
        ),
        (
            lambda o: o["Deployment"]["spec"]["template"]["metadata"]["annotations"].update(
                {"prometheus.io/port": "9000"}
            ),
            "prometheus.io/port 9000",
        ),
    ],
    ids=["probe-path", "no-gpu", "service-selector", "hpa-target", "scrape-port"],
)
def test_wiring_check_catches_a_planted_mistake(repo: Path, plant, message: str) -> None:
    objects = copy.deepcopy(load_all(repo))
    plant(objects)
    problems = wiring_problems(objects)
    assert any(message in p for p in problems), problems


# ------------------------------------------------------------------ in-cluster scrape config
def scrape_config_for_promtool(repo: Path, folder: Path) -> Path:
    """The ConfigMap's prometheus.yml next to a copy of the rules, ready for promtool.

    Debian's promtool is built without Kubernetes service discovery, so the
    kubernetes_sd_configs block is swapped for a static target; everything else (relabelling,
    rule files) is checked as written.
    """
    config_map = yaml.safe_load((repo / "deploy/k8s/prometheus-config.yaml").read_text())
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(repo / "docker" / "rules", folder / "rules")
    return path


def test_in_cluster_scrape_config_is_valid(repo: Path, promtool: Path, tmp_path: Path) -> None:
    path = scrape_config_for_promtool(repo, tmp_path)
    result = subprocess.run(
        [str(promtool), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_in_cluster_scrape_config_maps_the_pod_labels(repo: Path) -> None:
    config_map = yaml.safe_load((repo / "deploy/k8s/prometheus-config.yaml").read_text())
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    (job,) = [
        j for j in config["scrape_configs"] if j["job_name"] == "hydra"
    ]  # alerts use job="hydra"
    sources = {s for r in job["relabel_configs"] for s in r.get("source_labels", [])}
    pod_labels = load_all(repo)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    gpu_label = "__meta_kubernetes_pod_label_" + re.sub(
        r"[^a-zA-Z0-9_]", "_", "hydra.example.com/gpu-expected"
    )
    assert "hydra.example.com/gpu-expected" in pod_labels
    assert gpu_label in sources
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"gpu_expected", "__address__", "__metrics_path__"} <= targets


def test_in_cluster_scrape_config_mistake_is_caught(
    repo: Path, promtool: Path, tmp_path: Path
) -> None:
    path = scrape_config_for_promtool(repo, tmp_path)
    text = path.read_text()
    assert "(true|false)" in text
    path.write_text(text.replace("(true|false)", "(true|false", 1))
    result = subprocess.run(
        [str(promtool), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "missing closing )" in result.stdout + result.stderr
