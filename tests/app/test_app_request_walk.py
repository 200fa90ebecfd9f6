"""One owner per request: a V2 inference walks through at most ten of the service's modules,
as a tree (each module entered from one other module only), and each stage of the walk is
entered once: the route, the data plane, the lookup, the batcher, the ONNX Runtime session
and the outputs the contract adds (argmax, OOD flag, p-value); the codec twice (decode, encode).

Measured, not assumed: a profile hook records every call that crosses from one module into
another while the request runs (a coroutine resumed after an await is not a new entry). What a finished
ONNX Runtime call tells the monitoring (app/monitoring/, once per call for every request in
it) is a side branch of the batcher and is listed apart."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import app.serving.batching
from app.main import create_app
from servekit import make_settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "contract")
MAX_MODULES = 10
STAGES = ("app.api.v2", "app.dataplane", "app.serving.repository", "app.serving.batching",
          "app.serving.sessions", "contract.ood")


def module_of(filename: str) -> str | None:
    path = Path(filename)
    if not path.is_relative_to(ROOT) or path.suffix != ".py":
        return None
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts) if parts[0] in PACKAGES else None


class Walk:
    """Calls that cross from one project module into another (or from outside into one)."""

    def __init__(self) -> None:
        self.entries: Counter[str] = Counter()
        self.callers: defaultdict[str, set[str]] = defaultdict(set)
        self.walk_entries: Counter[str] = Counter()  # from a module of the walk (or outside)
        self.frames: set[FrameType] = set()  # every frame entered (kept alive while tracing)

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or frame in self.frames:  # a coroutine resumed is not a new entry
            return
        self.frames.add(frame)
        callee = module_of(frame.f_code.co_filename)
        if callee is None:
            return
        caller = module_of(frame.f_back.f_code.co_filename) if frame.f_back else None
        if caller != callee:
            self.entries[callee] += 1
            if caller is None:
                self.walk_entries[callee] += 1
            else:
                self.callers[callee].add(caller)
                if not caller.startswith("app.monitoring."):
                    self.walk_entries[callee] += 1


def walk_of(repo: Path, request: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, Walk]:
    # The lone-request path runs the ONNX Runtime call on the event loop when the model's calls
    # are measured as tiny; on a busy machine they may not be, and the call runs in a worker
    # thread made before the hook was set (the same modules, unseen). Allowed inline here, the
    # whole walk is on the traced thread.
    monkeypatch.setattr(app.serving.batching, "INLINE_MAX_S", 10.0)

    async def main() -> tuple[int, Walk]:
        app = create_app(make_settings(repo, max_batch_delay_ms=0.0), CollectorRegistry())
        walk = Walk()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                while (await client.get("/v2/health/ready")).status_code != 200:
                    await asyncio.sleep(0.02)
                for _ in range(5):  # warm: the batcher has measured its calls, plans are made
                    await client.post("/v2/models/digits/infer", **request)
                sys.setprofile(walk.hook)
                threading.setprofile(walk.hook)
                try:
                    status = (await client.post("/v2/models/digits/infer", **request)).status_code
                finally:
                    sys.setprofile(None)
                    threading.setprofile(None)  # type: ignore[arg-type]
        return status, walk

    return asyncio.run(main())


def json_request(x: np.ndarray) -> dict[str, Any]:
    return {"json": {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                 "data": x.ravel().tolist()}]}}


def binary_request(x: np.ndarray) -> dict[str, Any]:
    raw = x.astype("<f4").tobytes()
    header = (b'{"inputs": [{"name": "input", "shape": [%d, 64], "datatype": "FP32", '
              b'"parameters": {"binary_data_size": %d}}], "parameters": {"binary_data_output": true}}'
              % (len(x), len(raw)))
    return {"content": header + raw,
            "headers": {"content-type": "application/octet-stream",
                        "inference-header-content-length": str(len(header))}}


@pytest.mark.parametrize("kind", ["json", "binary"])
def test_a_v2_request_walks_through_at_most_ten_modules_each_entered_once(
    repo: Path, digits: dict[str, np.ndarray], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = digits["test_x"][:3]
    status, walk = walk_of(repo, json_request(x) if kind == "json" else binary_request(x), monkeypatch)
    assert status == 200
    walked = {m for m in walk.entries if not m.startswith("app.monitoring.")}
    side = {m for m in walk.entries if m.startswith("app.monitoring.")}
    report = {m: (walk.entries[m], sorted(walk.callers[m])) for m in sorted(walk.entries)}
    assert len(walked) <= MAX_MODULES, sorted(walked)
    assert set(STAGES) <= walked, report
    # A tree: each module is entered from one other module only (the monitoring branch calls
    # back into nothing but the repository's own "is this the default version" answer).
    for module in walked:
        others = walk.callers[module] - side
        assert len(others) <= 1, (module, report)
    for stage in STAGES:
        assert walk.walk_entries[stage] == 1, (stage, report)
    assert walk.entries["app.api.v2_codec"] == 2, report  # decode, then encode
    assert walk.callers["app.api.v2_codec"] == {"app.dataplane"}, report
    assert side <= {"app.monitoring.observer", "app.monitoring.service_metrics",
                    "app.monitoring.live_drift"}, report
