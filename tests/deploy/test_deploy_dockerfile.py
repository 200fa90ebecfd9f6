"""Dockerfile checks: hadolint on every Dockerfile, the project's image policy, and the
dependency list the image installs. No Docker engine here: everything is static."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from dockerfile_model import image_policy_problems

SKIP_DIRS = {".git", ".venv", "node_modules", "build"}


def dockerfiles(repo: Path) -> list[Path]:
    found = [
        p
        for p in repo.rglob("*Dockerfile*")
        if p.is_file()
        and not SKIP_DIRS.intersection(p.relative_to(repo).parts)
        and not p.name.endswith((".dockerignore", ".md"))
    ]
    return sorted(found)


def run_hadolint(hadolint: Path, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_dockerfile_is_hadolint_clean(repo: Path, hadolint: Path) -> None:
    files = dockerfiles(repo)
    assert repo / "Dockerfile" in files
    for dockerfile in files:
        result = run_hadolint(hadolint, dockerfile)
        assert result.returncode == 0, f"{dockerfile}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    ("plant", "rule"),
    [
        # Running as root after the non-root user.
        (
            lambda text: text.replace(
                'ENTRYPOINT ["hydra-serve"]', 'USER root\nENTRYPOINT ["hydra-serve"]'
            ),
            "DL3002",
        ),
        # apt-get without -y and without cleaning the lists.
        (
            lambda text: text.replace(
                "FROM python-base AS service\n",
                "FROM python-base AS service\nRUN apt-get install curl\n",
            ),
            "DL3014",
        ),
    ],
    ids=["last-user-root", "apt-get-without-y"],
)
def test_hadolint_catches_a_planted_mistake(
    repo: Path, hadolint: Path, tmp_path: Path, plant, rule: str
) -> None:
    planted = tmp_path / "Dockerfile"
    text = (repo / "Dockerfile").read_text()
    changed = plant(text)
    assert changed != text, "the plant did not apply: update this test with the Dockerfile"
    planted.write_text(changed)
    result = run_hadolint(hadolint, planted)
    assert result.returncode != 0
    assert rule in result.stdout


def test_dockerfile_meets_the_image_policy(repo: Path) -> None:
    assert image_policy_problems(repo / "Dockerfile", repo) == []


def _context_files(repo: Path, context: Path) -> None:
    """The files the Dockerfile copies, as empty stand-ins (the policy reads only their names)."""
    context.mkdir(exist_ok=True)
    for name in ("pyproject.toml", "uv.lock", ".dockerignore"):
        shutil.copy(repo / name, context / name)
    for name in ("README.md", "LICENSE"):
        (context / name).touch()
    for name in ("app", "contract", "training", "configs", "tools"):
        (context / name).mkdir(exist_ok=True)
    shutil.copy(repo / "tools" / "uv-requirements.txt", context / "tools")


def _policy_with(repo: Path, tmp_path: Path, old: str, new: str) -> list[str]:
    context = tmp_path / "ctx"
    _context_files(repo, context)
    text = (repo / "Dockerfile").read_text()
    assert old in text, f"plant anchor {old!r} not in the Dockerfile"
    (context / "Dockerfile").write_text(text.replace(old, new, 1))
    return image_policy_problems(context / "Dockerfile", context)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("HEALTHCHECK", "# HEALTHCHECK", "HEALTHCHECK must probe /v2/health/ready"),
        ("/v2/health/ready", "/v2/health/live", "HEALTHCHECK must probe /v2/health/ready"),
        (
            "--no-install-project --no-editable --python /usr/bin/python3\n",
            "--no-install-project --no-editable --python /usr/bin/python3 --extra train --extra cpu\n",
            "installs torch",
        ),
        (
            "COPY pyproject.toml uv.lock ./",
            "COPY pyproject.toml uv.lock ./\nCOPY app ./app",
            "copied before the dependency layer",
        ),
        (
            "--require-hashes --no-deps -r uv-requirements.txt",
            "--no-deps uv",
            "uv is not installed by hash",
        ),
        (
            "uv sync --locked --no-editable --python /usr/bin/python3 \\\n    &&",
            "uv sync --no-editable --python /usr/bin/python3 \\\n    &&",
            "uv sync without --locked",
        ),
        (
            "COPY contract ./contract\nRUN /opt/uv/bin/uv sync",
            "COPY contract ./contract\nRUN /opt/venv/bin/pip install httpx\nRUN /opt/uv/bin/uv sync",
            "a pip install outside the lock",
        ),
        ("USER ${HYDRA_UID}:${HYDRA_UID}\n# The model", "USER root\n# The model", "runs as root"),
        ("cudnn-runtime-ubuntu24.04", "runtime-ubuntu24.04", "CUDA 13 cuDNN runtime"),
        ('VOLUME ["/models"]\nEXPOSE', "EXPOSE", "/models as a VOLUME"),
        (
            "COPY configs /opt/hydra/configs",
            "COPY benchmarks /opt/hydra/benchmarks",
            "'benchmarks' does not exist",
        ),
    ],
    ids=[
        "no-healthcheck",
        "liveness-healthcheck",
        "torch-in-service",
        "source-before-deps",
        "uv-not-by-hash",
        "sync-not-locked",
        "pip-beside-the-lock",
        "root-user",
        "no-cudnn",
        "no-model-volume",
        "missing-copy-source",
    ],
)
def test_image_policy_catches_a_planted_mistake(
    repo: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    problems = _policy_with(repo, tmp_path, old, new)
    assert any(message in p for p in problems), problems


def test_dockerignore_keeping_out_a_copied_path_is_caught(repo: Path, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    shutil.copytree(repo / "app", context / "app")
    _context_files(repo, context)
    shutil.copy(repo / "Dockerfile", context / "Dockerfile")
    ignore = (repo / ".dockerignore").read_text()
    (context / ".dockerignore").write_text(ignore.replace("!configs/\n", ""))
    problems = image_policy_problems(context / "Dockerfile", context)
    assert problems == ["COPY source 'configs' is excluded by .dockerignore"]
