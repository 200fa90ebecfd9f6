"""Dockerfile checks: hadolint on every Dockerfile, the project's image policy, and the
dependency list the image installs. No Docker engine here: everything is static."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


def _policy_with(repo: Path, tmp_path: Path, old: str, new: str) -> list[str]:
    context = tmp_path / "ctx"
    context.mkdir()
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        if (repo / name).exists():
            shutil.copy(repo / name, context / name)
    for name in ("app", "contract", "training", "configs"):
        (context / name).mkdir()
    (context / "docker").mkdir()
    shutil.copy(repo / "docker" / "pyproject_requirements.py", context / "docker")
    (context / "README.md").touch()
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
            "python pyproject_requirements.py pyproject.toml > requirements.txt",
            "python pyproject_requirements.py pyproject.toml --extra train > requirements.txt",
            "installs torch",
        ),
        (
            "COPY docker/pyproject_requirements.py pyproject.toml ./",
            "COPY docker/pyproject_requirements.py pyproject.toml ./\nCOPY app ./app",
            "copied before the dependency layer",
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
    for name in ("contract", "training", "configs"):
        (context / name).mkdir()
    (context / "docker").mkdir()
    shutil.copy(repo / "docker" / "pyproject_requirements.py", context / "docker")
    for name in ("pyproject.toml", "Dockerfile"):
        shutil.copy(repo / name, context / name)
    (context / "README.md").touch()
    ignore = (repo / ".dockerignore").read_text()
    (context / ".dockerignore").write_text(ignore.replace("!configs/\n", ""))
    problems = image_policy_problems(context / "Dockerfile", context)
    assert problems == ["COPY source 'configs' is excluded by .dockerignore"]


def _requirements(repo: Path, *extra: str) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            str(repo / "docker" / "pyproject_requirements.py"),
            str(repo / "pyproject.toml"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.splitlines()


def test_service_image_dependencies_have_onnxruntime_gpu_and_no_torch(repo: Path) -> None:
    service = _requirements(repo)
    names = {
        r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in service
    }
    assert "onnxruntime-gpu" in names
    assert "onnxruntime" not in names  # the CPU package would overwrite the GPU one
    assert not any(n.startswith("torch") for n in names), service
    train = _requirements(repo, "--extra", "train")
    assert any(r.startswith("torch") for r in train)
    assert set(service) <= set(train)


def test_requirements_script_refuses_an_unknown_extra(repo: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(repo / "docker" / "pyproject_requirements.py"),
            str(repo / "pyproject.toml"),
            "--extra",
            "gpu",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "extra 'gpu' not in" in result.stderr
