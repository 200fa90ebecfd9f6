"""The HYDRA_* settings that compose, the image and the Kubernetes Deployment give the
service are ones the service's own Settings class knows and accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from dockerfile_model import parse
from processes import compose

PREFIX = "HYDRA_"


def settings_problems(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Build the service's Settings from exactly these variables; what is wrong, in words."""
    from pydantic import ValidationError

    from app.settings import Settings

    fields = {f"{PREFIX}{name.upper()}" for name in Settings.model_fields}
    problems = [
        f"{name} is not a service setting"
        for name in env
        if name.startswith(PREFIX) and name not in fields
    ]
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if value is not None and name.startswith(PREFIX):  # None: passed through only when set
            monkeypatch.setenv(name, value)
    try:
        Settings()
    except ValidationError as exc:
        problems.append(str(exc))
    return problems


def compose_environment(
    compose_bin: Path, repo: Path, extra: dict[str, str]
) -> dict[str, str | None]:
    result = compose(compose_bin, repo, "config", "--format", "json",
                     env={"GRAFANA_ADMIN_PASSWORD": "x", **extra})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]["hydra"]["environment"]


@pytest.mark.parametrize(
    "extra",
    [{}, {"HYDRA_API_KEY": "a-long-enough-key", "HYDRA_WORKERS": "4", "HYDRA_LOG_LEVEL": "debug"}],
    ids=["defaults", "overridden"],
)
def test_compose_gives_the_service_valid_settings(
    repo: Path, compose_bin: Path, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str]
) -> None:
    env = compose_environment(compose_bin, repo, extra)
    assert env["HYDRA_REPOSITORY"] == "/models"
    assert settings_problems(env, monkeypatch) == []


def test_an_empty_api_key_is_caught(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `HYDRA_API_KEY: ${HYDRA_API_KEY:-}` would do: the service refuses to start.
    problems = settings_problems({"HYDRA_API_KEY": ""}, monkeypatch)
    assert any("api_key must have at least 8 characters" in p for p in problems), problems


def test_a_misspelled_setting_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = settings_problems({"HYDRA_WORKER": "4"}, monkeypatch)
    assert problems == ["HYDRA_WORKER is not a service setting"]


def test_image_and_deployment_give_the_service_valid_settings(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stages = parse((repo / "Dockerfile").read_text())
    image_env: dict[str, str | None] = {}
    for ins in stages[-1].all("ENV"):
        for pair in ins.args.split():
            name, _, value = pair.partition("=")
            image_env[name] = value
    assert image_env["HYDRA_REPOSITORY"] == "/models"
    assert settings_problems(image_env, monkeypatch) == []

    deployment = yaml.safe_load((repo / "deploy/k8s/deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pod_env = {e["name"]: e.get("value") for e in container["env"]}  # secret refs: None
    assert settings_problems(pod_env, monkeypatch) == []
