"""Helpers for the service tests (a module with a unique name: conftest modules of other
test folders must not shadow it)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.http_server import uvicorn_options
from app.main import create_app
from app.settings import Settings

CPU = ["CPUExecutionProvider"]


def make_settings(repository: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "repository": repository,
        "providers": CPU,
        "poll_interval_s": 0.1,
        "max_batch_delay_ms": 2.0,
        "grpc_port": 0,  # no gRPC server unless a test asks for one (on a free port)
    }
    values.update(overrides)
    return Settings(**values)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def serve(
    settings: Settings, registry: CollectorRegistry | None = None, *, wait_ready: bool = True
) -> Iterator[tuple[TestClient, FastAPI, CollectorRegistry]]:
    registry = registry if registry is not None else CollectorRegistry()
    app = create_app(settings, registry)
    with TestClient(app) as client:
        if wait_ready:
            wait_for(lambda: client.get("/v2/health/ready").status_code == 200, what="readiness")
        yield client, app, registry


def reference_outputs(model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """Independent run of the same file with ONNX Runtime."""
    sess = ort.InferenceSession(model, providers=CPU)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"input": np.asarray(x, dtype=np.float32)})))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread, with the HTTP protocol
    hydra-serve runs (the bounded parser of app/http_server.py)."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
            lifespan="on", timeout_graceful_shutdown=5,
            http=uvicorn_options(app.state.settings)["http"],
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started, what="uvicorn start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def live_server(
    settings: Settings, registry: CollectorRegistry | None = None
) -> Iterator[tuple[LiveServer, FastAPI, CollectorRegistry]]:
    import httpx

    registry = registry if registry is not None else CollectorRegistry()
    app = create_app(settings, registry)
    with LiveServer(app) as server:
        wait_for(
            lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200, what="readiness"
        )
        yield server, app, registry
