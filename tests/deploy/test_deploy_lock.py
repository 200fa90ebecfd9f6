"""uv.lock is what every install gets: `make venv` (this test environment), the image's
dependency layer, and nothing else. The lists are compared by name and version, computed
apart from uv's own sync (uv export of the lock, importlib.metadata of the environment)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_model import lineage, parse
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "hydra-serving"


@pytest.fixture(scope="module")
def uv() -> Path:
    candidate = ROOT / ".uv" / "bin" / "uv"
    found = candidate if candidate.exists() else shutil.which("uv")
    if not found:
        pytest.fail("uv not found: `make venv` installs it into .uv/")
    return Path(found)


def make_extras() -> list[str]:
    """The extras `make venv` installed, as it recorded them in its stamp file."""
    stamp = Path(sys.prefix) / ".installed"
    if not stamp.exists():
        pytest.fail(f"{stamp} is missing: this environment was not made by `make venv`")
    return stamp.read_text().split()


def locked(uv: Path, *options: str, project: Path = ROOT) -> dict[str, str]:
    """name -> version the lock gives this interpreter's platform for these options."""
    out = subprocess.run(
        [str(uv), "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate",
         "--no-emit-project", "--format", "requirements-txt", *options],
        cwd=project, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def installed(python: str) -> dict[str, str]:
    """name -> version of every distribution in that interpreter's environment."""
    code = (
        "import importlib.metadata as m, json, sys;"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions(path=sys.path)}))"
    )
    found = json.loads(
        subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                       check=True, cwd="/").stdout
    )
    return {canonicalize_name(k): v for k, v in found.items() if canonicalize_name(k) != PROJECT}


def difference(want: dict[str, str], have: dict[str, str]) -> list[str]:
    lines = [f"missing {n}=={v}" for n, v in sorted(want.items()) if n not in have]
    lines += [f"extra {n}=={v}" for n, v in sorted(have.items()) if n not in want]
    lines += [
        f"{n}: lock {want[n]}, installed {have[n]}"
        for n in sorted(want.keys() & have.keys())
        if want[n] != have[n]
    ]
    return lines


def test_this_environment_is_exactly_the_lock(uv: Path) -> None:
    want = locked(uv, *make_extras())
    have = installed(sys.executable)
    assert difference(want, have) == []
    # The build facts the lock carries: the torch build the extra names, onnxruntime-gpu alone.
    assert want["torch"].endswith("+cpu") == ("cpu" in make_extras())
    assert "onnxruntime-gpu" in want and "onnxruntime" not in want


def test_the_comparison_sees_a_drift(uv: Path) -> None:
    want = locked(uv, *make_extras())
    have = dict(want, numpy="0.0.1", **{"py-spy": "0.4.0"})
    del have["orjson"]
    assert difference(want, have) == [
        f"missing orjson=={want['orjson']}",
        "extra py-spy==0.4.0",
        f"numpy: lock {want['numpy']}, installed 0.0.1",
    ]


def test_the_lock_matches_pyproject(uv: Path) -> None:
    result = subprocess.run(
        [str(uv), "lock", "--check", "--offline"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_lock_that_no_longer_fits_is_not_accepted(uv: Path, tmp_path: Path) -> None:
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    text = (ROOT / "pyproject.toml").read_text()
    assert '"orjson>=3.10",' in text
    (tmp_path / "pyproject.toml").write_text(text.replace('"orjson>=3.10",', '"orjson>=99",'))
    result = subprocess.run(
        [str(uv), "lock", "--check", "--offline"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    # What uv says depends on what its cache holds (offline it may not re-solve at all;
    # online it says the lock "needs to be updated"); in every case the lock is not taken.
    assert result.returncode != 0
    assert any(why in result.stderr for why in
               ("needs to be updated", "network was disabled", "No solution found")), result.stderr


def test_uv_is_the_version_pinned_by_hash(uv: Path) -> None:
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["required-version"]
    pinned = (ROOT / "tools" / "uv-requirements.txt").read_text()
    versions = re.findall(r"^uv==(\S+) \\$", pinned, re.M)
    assert versions and required == f"=={versions[0]}"
    assert len(re.findall(r"--hash=sha256:[0-9a-f]{64}", pinned)) >= 1
    out = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == versions[0]


def test_the_lock_gives_onnxruntime_gpu_of_the_images_cuda_line(uv: Path) -> None:
    from importlib.metadata import version

    from onnxruntime.capi import build_and_package_info as built
    from test_deploy_pins import base_cuda_major

    service = locked(uv)
    # The version the image installs is the one whose build this test environment holds ...
    assert service["onnxruntime-gpu"] == version("onnxruntime-gpu")
    # ... and that build is for the CUDA major of the image's base.
    major = base_cuda_major((ROOT / "Dockerfile").read_text())
    assert int(built.cuda_version.split(".")[0]) == major
    assert "torch" not in service


def image_uv_syncs() -> list[tuple[list[str], str]]:
    """(files copied before it, uv sync command) for each sync of the service image's stages."""
    _, stages = parse((ROOT / "Dockerfile").read_text())
    steps = []
    copied: list[str] = []
    for stage in lineage(stages, "service"):
        for ins in stage.instructions:
            if ins.keyword == "COPY" and "--from=" not in ins.args:
                copied.extend(ins.args.split()[:-1])
            if ins.keyword == "RUN":
                for sync in re.findall(r"/opt/uv/bin/uv sync[^&;|]*", ins.args):
                    steps.append((list(copied), sync.strip()))
    return steps


@pytest.mark.slow
def test_the_images_install_steps_give_the_locks_service_set(uv: Path, tmp_path: Path) -> None:
    """The image's uv commands, run here on the files the image has at that step (offline,
    from the cache `make venv` filled; this interpreter for the image's python3)."""
    steps = image_uv_syncs()
    assert [("--no-install-project" in cmd) for _, cmd in steps] == [True, False]
    work, venv = tmp_path / "build", tmp_path / "venv"
    work.mkdir()
    env = dict(os.environ, UV_OFFLINE="1", UV_PROJECT_ENVIRONMENT=str(venv),
               UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    for files, cmd in steps:
        for name in files:
            source = ROOT / name
            target = work / Path(name).name
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, target)
        argv = cmd.replace("/opt/uv/bin/uv", str(uv)).replace("/usr/bin/python3", sys.executable)
        result = subprocess.run(argv.split(), cwd=work, env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        assert result.returncode == 0, f"{cmd}\n{result.stderr}"
    python = str(venv / "bin" / "python")
    assert difference(locked(uv), installed(python)) == []
    probe = "import app, contract.model, importlib.util as u; print(app.__file__, u.find_spec('torch'))"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                         cwd="/").stdout
    assert str(venv) in out and out.split()[-1] == "None"  # installed, not the source; no torch


def _pin(tmp_path: Path, manifest: str, source: Path = ROOT / "Dockerfile") -> subprocess.CompletedProcess[str]:
    """tools/pin_base_image.sh on a copy of the Dockerfile, `docker` a stand-in that prints
    `manifest` for `buildx imagetools inspect <tag>` (no registry here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/docker.args\n'
        f"cat <<'JSON'\n{manifest}\nJSON\n"
    )
    fake.chmod(0o755)
    if source != tmp_path / "Dockerfile":
        shutil.copy(source, tmp_path / "Dockerfile")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "pin_base_image.sh"), str(tmp_path / "Dockerfile")],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )


def test_the_base_image_is_pinned_to_the_digest_the_registry_gives(tmp_path: Path) -> None:
    from dockerfile_model import image_policy_problems
    from test_deploy_pins import base_cuda_major

    digest = "sha256:" + "ab12" * 16
    result = _pin(tmp_path, json.dumps({"mediaType": "index", "digest": digest, "size": 1}))
    assert result.returncode == 0, result.stderr
    tag = parse((ROOT / "Dockerfile").read_text())[0]["CUDA_IMAGE"].split("@")[0]
    assert result.stdout.strip() == f"{tag}@{digest}"
    args, _ = parse((tmp_path / "Dockerfile").read_text())
    assert args["CUDA_IMAGE"] == f"{tag}@{digest}"
    assert (tmp_path / "docker.args").read_text().split()[:4] == ["buildx", "imagetools", "inspect", tag]
    # A pinned Dockerfile still meets the image policy and names its CUDA line.
    assert image_policy_problems(tmp_path / "Dockerfile", ROOT) == []
    assert base_cuda_major((tmp_path / "Dockerfile").read_text()) == 13
    # Pinning again asks for the tag, not the old digest, and replaces the digest.
    newer = "sha256:" + "cd34" * 16
    (tmp_path / "docker.args").unlink()
    result = _pin(tmp_path, json.dumps({"digest": newer}), source=tmp_path / "Dockerfile")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "docker.args").read_text().split()[3] == tag
    assert parse((tmp_path / "Dockerfile").read_text())[0]["CUDA_IMAGE"] == f"{tag}@{newer}"


def test_a_registry_answer_without_a_digest_changes_nothing(tmp_path: Path) -> None:
    result = _pin(tmp_path, json.dumps({"mediaType": "index", "digest": "latest"}))
    assert result.returncode != 0
    assert "gave no digest" in result.stderr
    assert (tmp_path / "Dockerfile").read_text() == (ROOT / "Dockerfile").read_text()
