"""Subprocesses of the deployment tests, in one place: the service (`hydra-serve`'s entry
point), Prometheus and its promtool, the compose CLI; free ports, waiting for readiness or
any condition, stopping a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

CHECK_TIMEOUT_S = 60  # any one-shot checker (promtool, compose)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextmanager
def running_service(
    models: Path, log: Path, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start hydra-serve on a free port; yield (base URL, process). Settings: HYDRA_* values."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "HYDRA_REPOSITORY": str(models),
            "HYDRA_HOST": "127.0.0.1",
            "HYDRA_PORT": str(port),
            "HYDRA_PROVIDERS": "CPUExecutionProvider",
            "HYDRA_LOG_LEVEL": "WARNING",
            **settings,
        }
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from app.__main__ import main; main()"],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}", process
        finally:
            stop(process)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service was not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextmanager
def running_prometheus(
    prometheus_bin: Path, config: Path, port: int, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Prometheus on 127.0.0.1:port with ``config``, its data and log under ``workdir``."""
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(prometheus_bin),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            stop(process)


def wait_until(
    check: Callable[[], Any], timeout_s: float, what: str, processes: list[subprocess.Popen[bytes]]
) -> Any:
    """Poll ``check`` until it returns something true; fail when one of ``processes`` exits
    or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        for process in processes:
            if process.poll() is not None:
                pytest.fail(
                    f"{process.args[0]} exited with {process.returncode} while waiting for {what}"
                )
        try:
            result = check()
        except (httpx.HTTPError, ValueError, KeyError):
            # Prometheus still starting: refused connections, an empty or partial body.
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def run_promtool(promtool_bin: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool <args>``; the caller checks the return code and output."""
    return subprocess.run(
        [str(promtool_bin), *args],
        capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False, cwd=cwd,
    )


def compose(
    compose_bin: Path, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker-compose <args>`` in ``workdir``; the caller checks the return code and output."""
    # A clean environment and an empty --env-file: a developer's .env or shell cannot make
    # the check pass or fail.
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    clean.update(env or {})
    return subprocess.run(
        [str(compose_bin), "--env-file", os.devnull, "--project-directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
        env=clean,
        cwd=workdir,
    )
