"""The gRPC pieces of the peer harness (benchmarks/peers/bench_peers.py) that need no peer
virtual environment: its gRPC outputs check and load generator against a live hydra-serve
started the way the harness starts it, the ports it gives each server, and the gRPC goals and
the section they render into, on a fixture."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "benchmarks", ROOT / "tests" / "app"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import contract_models as cm  # noqa: E402
from peers import bench_peers as bp  # noqa: E402

from app.grpc_api import inference_pb2 as pb  # noqa: E402


def _args(tmp: Path, only: str) -> argparse.Namespace:
    return bp.parse_args(["--model", str(tmp / "model.onnx"), "--venvs", str(tmp / "no-venvs"),
                          "--only", only])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, bp.Server], ort.InferenceSession, np.ndarray]]:
    """hydra-grpc and hydra-v2 started by the harness (prepare, start, wait_ready) on a
    contract model; stopped by it (stop_all)."""
    tmp = tmp_path_factory.mktemp("peers")
    split = cm.digits_split()
    built = cm.build_classifier(split["train_x"], split["train_y"], split["calib_x"])
    repo = tmp / "repo"
    cm.write_version(repo, bp.MODEL_NAME, 1, built.data)
    model = repo / bp.MODEL_NAME / "1" / "model.onnx"
    (tmp / "model.onnx").write_bytes(built.data)
    args = _args(tmp, "hydra-grpc,hydra-v2")
    servers = bp.prepare(bp.runnable(args), args, model, repo, tmp)
    try:
        for s in servers:
            bp.start(s, tmp)
        for s in servers:
            bp.wait_ready(s, time.monotonic() + 120)
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        yield {s.spec.id: s for s in servers}, sess, split["test_x"][:8].astype(np.float32)
    finally:
        bp.stop_all(servers)


def test_each_server_gets_its_ports(tmp_path: Path) -> None:
    """A gRPC server is measured on a port of its own; hydra-serve's REST servers run without
    gRPC (its default port, 8081, would be shared by every hydra server of the run); a peer's
    gRPC port is the one its --grpc-port option names."""
    (tmp_path / "model.onnx").write_bytes(b"")
    args = _args(tmp_path, "hydra-v2,hydra-grpc,kserve-grpc,mlserver-grpc,kserve")
    specs = [s for s in bp.CATALOGUE if s.id in args.only.split(",")]
    servers = {s.spec.id: s for s in bp.prepare(specs, args, tmp_path / "model.onnx", tmp_path, tmp_path)}
    assert servers["hydra-v2"].env["HYDRA_GRPC_PORT"] == "0"
    assert servers["hydra-v2"].load_port == servers["hydra-v2"].port
    grpc = servers["hydra-grpc"]
    assert grpc.env["HYDRA_GRPC_PORT"] == str(grpc.grpc_port) and grpc.load_port == grpc.grpc_port
    for sid in ("kserve-grpc", "mlserver-grpc"):
        s = servers[sid]
        assert s.argv[s.argv.index("--grpc-port") + 1] == str(s.grpc_port) == str(s.load_port)
    assert servers["kserve"].load_port == servers["kserve"].port  # V1: HTTP, gRPC port unused
    ports = [p for s in servers.values() for p in (s.port, s.grpc_port) if p]
    assert len(ports) == len(set(ports))


def test_grpc_request_and_answer_codec() -> None:
    """The prebuilt request carries the batch as raw little-endian FP32 and asks for the six
    outputs; answers are read from raw bytes or typed contents alike, and a malformed answer
    is refused."""
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    msg = pb.ModelInferRequest.FromString(bp.grpc_request(x))
    assert (msg.model_name, [t.name for t in msg.inputs], list(msg.inputs[0].shape)) == ("digits", ["input"], [2, 64])
    assert [o.name for o in msg.outputs] == list(bp.OUTPUTS)
    assert np.array_equal(np.frombuffer(msg.raw_input_contents[0], "<f4").reshape(2, 64), x)

    values = {k: np.arange(2 * (10 if k == "mean_probs" else 1), dtype=np.float32).reshape(2, -1) / 7
              for k in bp.OUTPUTS}
    raw, typed = pb.ModelInferResponse(), pb.ModelInferResponse()
    for k, v in values.items():
        raw.outputs.add(name=k, datatype="FP32", shape=list(v.shape))
        raw.raw_output_contents.append(v.astype("<f4").tobytes())
        typed.outputs.add(name=k, datatype="FP32", shape=list(v.shape)).contents.fp32_contents.extend(v.ravel())
    for reply in (raw, typed):
        got = bp.grpc_outputs(reply.SerializeToString(), 2)
        assert all(np.array_equal(got[k], values[k]) for k in bp.OUTPUTS)
    with pytest.raises(ValueError, match="for 3 instances"):
        bp.grpc_outputs(raw.SerializeToString(), 3)
    del typed.outputs[-1]
    with pytest.raises(ValueError, match="outputs missing: \\['disagreement_rate'\\]"):
        bp.grpc_outputs(typed.SerializeToString(), 2)


@pytest.mark.slow
def test_grpc_outputs_check_on_a_live_hydra_serve(live) -> None:
    """hydra-grpc's outputs, for 1 and 4 instances, equal ONNX Runtime run directly bit for
    bit, and equal hydra-v2's over REST."""
    servers, sess, x = live
    check = bp.check_outputs(servers["hydra-grpc"], sess, x)
    assert check == {"max_abs_diff": 0.0, "exact": True}
    got = bp.answer_of(servers["hydra-grpc"], x[:4])
    rest = bp.answer_of(servers["hydra-v2"], x[:4])
    assert got["mean_probs"].shape == (4, 10) and got["disagreement_rate"].shape == (4, 1)
    for k in bp.OUTPUTS:
        assert np.array_equal(got[k], rest[k]), k
    # The timed request: a serialized ModelInferRequest for one instance, twice on one channel.
    answer = bp.grpc_unary(servers["hydra-grpc"].load_port, bp.GRPC_INFER, bp.grpc_request(x[:1]), repeat=2)
    assert set(bp.grpc_outputs(answer, 1)) == set(bp.OUTPUTS)


@pytest.mark.slow
def test_grpc_load_generator_counts_answers_refusals_and_a_dead_server(live) -> None:
    """The gRPC load process measures the same columns as the HTTP one; refused calls are
    errors, not answers lost; a server that does not answer (UNAVAILABLE) fails the load."""
    servers, _, x = live
    s = servers["hydra-grpc"]
    load = bp.GrpcTreeLoad()
    try:
        ok = load.measure(s.load_port, bp.grpc_request(x[:1]), 4, 0.3, s.proc.pid, 0.1)
        assert ok["concurrency"] == 4 and ok["errors"] == 0 and ok["rps"] > 0
        assert ok["cpu_us"] > 0 and ok["client_cpu_us"] > 0 and ok["rss_mb"] > 0
        assert ok["p50_ms"] <= ok["p99_ms"]

        unknown = pb.ModelInferRequest.FromString(bp.grpc_request(x[:1]))
        unknown.model_name = "no-such-model"
        refused = load.measure(s.load_port, unknown.SerializeToString(), 2, 0.2, s.proc.pid, 0.05)
        assert refused["errors"] == round(refused["rps"] * 0.2) > 0  # every call: NOT_FOUND
    finally:
        load.close()
    dead = bp.GrpcTreeLoad()
    try:
        with pytest.raises(bp.LoadFailed, match="load process died"):
            dead.measure(bp.bench_service._free_port(), bp.grpc_request(x[:1]), 2, 0.2, s.proc.pid, 0.05)
    finally:
        dead.close()


def _row(c: int, rps: float, cpu: float) -> dict:
    return {"concurrency": c, "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "rss_mb": 100.0,
            "cpu_us": cpu, "client_cpu_us": 50.0, "rounds_rps": [rps]}


FIXTURE = {  # id -> {c: (requests/s, server CPU µs per request)}
    "hydra-v2": {1: (1800.0, 500.0), 8: (4000.0, 250.0), 64: (4400.0, 220.0)},
    "hydra-grpc": {1: (1500.0, 600.0), 8: (2000.0, 400.0), 64: (2400.0, 200.0)},
    "kserve-grpc": {1: (1200.0, 700.0), 8: (1300.0, 650.0), 64: (1000.0, 800.0)},
    "mlserver-grpc": {1: (1600.0, 900.0), 8: (900.0, 1500.0), 64: (800.0, 1600.0)},
}
LABELS = {"hydra-v2": "hydra V2", "hydra-grpc": "hydra gRPC", "kserve-grpc": "KServe gRPC",
          "mlserver-grpc": "MLServer gRPC"}
PROTOCOLS = {"hydra-v2": "v2", "hydra-grpc": "grpc", "kserve-grpc": "grpc", "mlserver-grpc": "grpc"}


def _results(fixture: dict = FIXTURE) -> dict[str, list[dict]]:
    return {sid: [_row(c, *cells[c]) for c in sorted(cells)] for sid, cells in fixture.items()}


def test_grpc_goals_are_judged_against_the_best_peer_and_v2_rest() -> None:
    goals = bp.grpc_goals(_results(), LABELS, PROTOCOLS, [1, 8, 64])
    assert list(goals) == ["grpc_rps_over_best_peer/c=1", "grpc_rps_over_best_peer/c=64",
                           "grpc_cpu_over_v2/c=1", "grpc_cpu_over_v2/c=8", "grpc_cpu_over_v2/c=64"]
    c1, c64 = goals["grpc_rps_over_best_peer/c=1"], goals["grpc_rps_over_best_peer/c=64"]
    # c=1: MLServer is the faster peer, 1500 / 1600; c=64: KServe, 2400 / 1000.
    assert (c1["best_peer"], c1["value"], c1["target"], c1["met"]) == ("mlserver-grpc", 1500 / 1600, 1.0, False)
    assert (c64["best_peer"], c64["value"], c64["target"], c64["met"]) == ("kserve-grpc", 2.4, 2.0, True)
    assert c1["higher_is_better"] and c1["is_goal"]
    cpu = {c: goals[f"grpc_cpu_over_v2/c={c}"] for c in (1, 8, 64)}
    assert [cpu[c]["value"] for c in (1, 8, 64)] == [600 / 500, 400 / 250, 200 / 220]
    assert [cpu[c]["met"] for c in (1, 8, 64)] == [False, False, True]
    assert all(g["target"] == 1.0 and not g["higher_is_better"] for g in cpu.values())
    assert c64["title"] == "hydra gRPC ÷ the best of KServe gRPC and MLServer gRPC, requests/s at concurrency 64"

    # Only what the run measured is judged: no REST server, no CPU goals; no c=64, no c=64 goal.
    without_v2 = {k: v for k, v in FIXTURE.items() if k != "hydra-v2"}
    assert list(bp.grpc_goals(_results(without_v2), LABELS, PROTOCOLS, [1, 8, 64])) == [
        "grpc_rps_over_best_peer/c=1", "grpc_rps_over_best_peer/c=64"]
    low = {k: {c: v for c, v in cells.items() if c != 64} for k, cells in FIXTURE.items()}
    assert "grpc_rps_over_best_peer/c=64" not in bp.grpc_goals(_results(low), LABELS, PROTOCOLS, [1, 8])
    assert bp.grpc_goals(_results({"hydra-v2": FIXTURE["hydra-v2"]}), LABELS, PROTOCOLS, [1]) == {}


def test_ratios_and_the_rendered_section_come_from_the_json() -> None:
    results = _results()
    ratios = bp.ratios_of(results, PROTOCOLS, [1, 8, 64])
    assert [(r["ours"], r["peer"]) for r in ratios] == [("hydra-grpc", "kserve-grpc"), ("hydra-grpc", "mlserver-grpc")]
    assert ratios[0]["rps"] == {1: 1500 / 1200, 8: 2000 / 1300, 64: 2.4}
    assert ratios[1]["cpu"] == {1: 1.5, 8: 3.75, 64: 8.0}
    data = json.loads(json.dumps({  # through JSON, as tools/results.py reads it
        "command": [".venv/bin/python", "benchmarks/peers/bench_peers.py", "--json", "x.json"],
        "machine": "x86_64, 2 CPU cores, python 3.11.7", "cpu": "some CPU", "model": "m.onnx",
        "threads": 1, "concurrency": [1, 8, 64], "duration_s": 2.0, "warmup_s": 0.3, "rounds": 3,
        "loadavg_before": [0.5, 0.4, 0.3], "loadavg_after": [1.25, 1.0, 0.5],
        "direct_ort": {"batch1_us_per_instance": 70.0, "batch64_us_per_instance": 4.0},
        "servers": LABELS, "protocols": PROTOCOLS, "request_bytes": {"v1": 352, "v2": 605, "grpc": 404},
        "answer_bytes": {k: 300 for k in LABELS}, "failed": {},
        "checks": {k: {"max_abs_diff": 0.0, "exact": True} for k in LABELS},
        "results": results, "goals": bp.grpc_goals(results, LABELS, PROTOCOLS, [1, 8, 64]),
    }))
    text = "\n".join(bp.render(data))
    assert "`.venv/bin/python benchmarks/peers/bench_peers.py --json x.json`" in text
    assert "load average 0.50 before the run and 1.25 after it" in text
    assert "| hydra gRPC ÷ KServe gRPC | 1.25 | 1.54 | 2.40 | 1.17 | 1.62 | 4.00 |" in text
    assert ("| hydra gRPC ÷ the best of KServe gRPC and MLServer gRPC, requests/s at concurrency 1 "
            "| 0.938 | ≥ 1 | **missed** |") in text
    assert "| hydra gRPC ÷ hydra V2, server CPU per request at concurrency 64 | 0.909 | ≤ 1 | met |" in text
    assert "The outputs of 4 of 4 servers" in text
    assert "the best other gRPC server by requests/s: MLServer gRPC at concurrency 1, KServe gRPC at concurrency 64" in text
