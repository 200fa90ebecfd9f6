"""What the installs are pinned to: onnxruntime-gpu to the CUDA line of the image's base, and
prometheus-client to the releases whose multiprocess internals the live gauges use."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def requirement(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = [Requirement(d) for d in deps if Requirement(d).name == name]
    assert len(found) == 1, f"{name} listed {len(found)} times"
    return found[0]


def base_cuda_major(dockerfile: str) -> int:
    match = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-", dockerfile, re.M)
    assert match, "the Dockerfile names no nvidia/cuda base image"
    return int(match.group(1))


def test_onnxruntime_gpu_is_pinned_to_the_images_cuda_line() -> None:
    from onnxruntime.capi import build_and_package_info as built

    req = requirement("onnxruntime-gpu")
    installed = Version(version("onnxruntime-gpu"))
    assert installed in req.specifier, (installed, str(req.specifier))
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), "no upper bound"
    # The build installed is for the CUDA major the image's base provides.
    assert built.package_name == "onnxruntime-gpu"
    assert int(built.cuda_version.split(".")[0]) == base_cuda_major((ROOT / "Dockerfile").read_text())


def test_the_cuda_check_fails_when_the_image_and_the_build_disagree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    older = re.sub(r"nvidia/cuda:\d+\.", "nvidia/cuda:12.", dockerfile, count=1)
    assert base_cuda_major(older) == 12 != base_cuda_major(dockerfile)


def test_prometheus_client_is_bounded_and_its_internals_hold(tmp_path: Path) -> None:
    req = requirement("prometheus-client")
    assert Version(version("prometheus-client")) in req.specifier
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), "no upper bound"
    # What app/monitoring/live_gauges.py relies on, as it uses it: a value written through
    # MmapedDict under mmap_key is read back by the multiprocess collector.
    from prometheus_client import CollectorRegistry
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    mmap = MmapedDict(str(tmp_path / "gauge_livemax_1.db"))
    mmap.write_value(mmap_key("hydra_probe", "hydra_probe", ["model"], ["digits"], "a probe"), 2.5, 0.0)
    mmap.close()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("hydra_probe", {"model": "digits"}) == 2.5
    assert callable(mark_process_dead)


@pytest.mark.parametrize("name", ["grpcio", "protobuf"])
def test_the_grpc_runtime_admits_the_generated_code(name: str) -> None:
    req = requirement(name)
    assert Version(version(name)) in req.specifier
    import app.grpc_api.inference_pb2  # noqa: F401  (its runtime version check passes)


def test_uvicorn_is_bounded_and_the_internals_the_server_extends_hold() -> None:
    req = requirement("uvicorn")
    assert Version(version("uvicorn")) in req.specifier
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), "no upper bound"
    # What app/http_server.py builds on: the httptools protocol it subclasses, the status
    # lines it writes refusals with, and the server state it counts connections by.
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    from uvicorn.server import ServerState

    assert STATUS_LINE[404].startswith(b"HTTP/1.1 404")
    for name in ("data_received", "on_message_begin", "on_url", "on_header", "on_headers_complete",
                 "on_message_complete", "send_400_response", "connection_lost"):
        assert callable(getattr(HttpToolsProtocol, name)), name
    assert {"connections", "tasks", "total_requests"} <= set(vars(ServerState()))
