"""The service as a real process on 127.0.0.1 (`hydra-serve`'s entry point), for live tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


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
