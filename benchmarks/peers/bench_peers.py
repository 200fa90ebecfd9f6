"""hydra-serve side by side with the model servers a user could pick instead.

Every server serves the same ONNX model with ONNX Runtime on the CPU provider and the same
number of intra-op threads (1 by default): hydra-serve (the project, V1 and V2, batching on
and off, and its gRPC server), a bare Starlette route (the floor), KServe, MLServer (also
their gRPC servers), LitServe and BentoML, each peer from its own virtual environment
(setup_venvs.sh) and its own small server in servers/.

What one run does:

1. starts every selected server at once, each a process tree of its own on a free 127.0.0.1
   port, and waits until each answers its readiness route;
2. checks every server's outputs against ONNX Runtime run directly in this process, for a
   request of 1 instance and one of 4: the six outputs must be equal as float32 values (on
   the CPU provider they are bit for bit the same; --no-exact only reports differences);
   also that each server answers with Content-Length on a kept-alive connection, which the
   load generator needs. gRPC servers (protocol "grpc": the Open Inference Protocol's
   ModelInfer) get the same check over gRPC, raw FP32 bytes in and out;
3. measures each server at each concurrency (one instance per request), in interleaved
   rounds: within a round every server is measured in turn (the order rotated from round to
   round), so a change in the machine's background load hits all of them alike. The load
   comes from the keep-alive HTTP/1.1 client of benchmarks/bench_service.py, in its own
   process; for gRPC servers from a grpc.aio client in another process of its own (N
   unary ModelInfer calls in flight on one channel, one prebuilt serialized request). Per cell: requests/s, p50/p99 latency, errors, server CPU per request (user +
   system time of the server's whole process tree, warm-up included, over every answer),
   the client's CPU per request and the tree's peak RSS. The round with the median
   requests/s is reported, with the median CPU per request of the rounds;
4. stops every server process tree (also on Ctrl-C, SIGTERM or an error), times ONNX Runtime
   called directly, prints a Markdown table of every cell and one of ratios (the project on
   the same protocol ÷ each peer, measured in this run), judges the gRPC goals (GRPC_GOALS)
   when their servers ran, and writes --json (render() draws its section of BENCHMARKS.md).

    .venv/bin/python benchmarks/peers/bench_peers.py --venvs /tmp/peer-venvs
    .venv/bin/python benchmarks/peers/bench_peers.py --venvs /tmp/peer-venvs \\
        --only 'hydra-*,floor,kserve' --duration 0.5 --rounds 1 --concurrency 1,8
    .venv/bin/python benchmarks/peers/bench_peers.py --venvs /tmp/peer-venvs \\
        --only hydra-grpc,kserve-grpc,mlserver-grpc,hydra-v2 --json benchmarks/results/peers_grpc.json
    .venv/bin/python benchmarks/peers/bench_peers.py --list

Server ids for --only (comma-separated, shell-style patterns such as 'hydra-*' allowed):
see --list. A server whose virtual environment is missing is skipped, unless --only asked
for it by name.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import http.client
import json
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SERVERS = HERE / "servers"
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import bench_service  # noqa: E402  (the project's service benchmark: its load generator)
from app.grpc_api import inference_pb2 as pb  # noqa: E402  (the project's OIP messages: hydra.oip)

MODEL_NAME = "digits"
OUTPUTS = ("mean_probs", "total_uncertainty", "data_uncertainty", "model_uncertainty",
           "head_disagreement", "disagreement_rate")
V1_PATH = f"/v1/models/{MODEL_NAME}:predict"
V2_PATH = f"/v2/models/{MODEL_NAME}/infer"
# The Open Inference Protocol over gRPC: the service and its calls by their wire names.
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_INFER = f"/{GRPC_SERVICE}/ModelInfer"
GRPC_MODEL_READY = f"/{GRPC_SERVICE}/ModelReady"
DEFAULT_VENVS = os.environ.get("PEER_VENVS", "/tmp/peer-venvs")
# Packages whose versions are recorded for each server's environment.
VERSIONED = ("hydra-serving", "kserve", "mlserver", "litserve", "bentoml", "onnxruntime",
             "onnxruntime-gpu", "numpy", "fastapi", "starlette", "uvicorn", "uvloop",
             "httptools", "orjson", "grpcio", "protobuf")


# -- the servers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One server configuration. ``env`` is None for hydra-serve (run from --hydra-serve);
    otherwise the name of the peer's virtual environment under --venvs, whose python runs
    ``servers/<script>``."""

    id: str
    label: str
    env: str | None
    protocol: str  # "v1": {"instances": ...}; "v2": Open Inference Protocol; "grpc": its gRPC form
    path: str  # the inference route; for "grpc" the call's wire name
    ready: str  # an HTTP readiness route (gRPC servers also answer ModelReady before the check)
    script: str = ""
    args: tuple[str, ...] = ()
    port_options: tuple[str, ...] = ()  # options that get one more free port each
    hydra_env: tuple[tuple[str, str], ...] = ()
    workdir: bool = False  # passes --workdir, a scratch folder of its own


CATALOGUE: tuple[Spec, ...] = (
    Spec("hydra-v1", "hydra V1 (batching on)", None, "v1", V1_PATH, "/v2/health/ready",
         hydra_env=(("HYDRA_BATCHING", "true"),)),
    Spec("hydra-v2", "hydra V2 (batching on)", None, "v2", V2_PATH, "/v2/health/ready",
         hydra_env=(("HYDRA_BATCHING", "true"),)),
    Spec("hydra-v1-nobatch", "hydra V1 (batching off)", None, "v1", V1_PATH, "/v2/health/ready",
         hydra_env=(("HYDRA_BATCHING", "false"),)),
    Spec("hydra-grpc", "hydra gRPC (batching on)", None, "grpc", GRPC_INFER, "/v2/health/ready",
         hydra_env=(("HYDRA_BATCHING", "true"),)),
    Spec("floor", "floor: Starlette+uvicorn", "floor", "v1", V1_PATH, "/health", "peer_floor.py"),
    Spec("kserve", "KServe V1", "kserve", "v1", V1_PATH, "/v2/health/ready", "peer_kserve.py",
         port_options=("--grpc-port",)),
    Spec("kserve-nolog", "KServe V1, latency log off", "kserve", "v1", V1_PATH, "/v2/health/ready",
         "peer_kserve.py", ("--no-latency-log",), ("--grpc-port",)),
    Spec("kserve-grpc", "KServe gRPC", "kserve", "grpc", GRPC_INFER, "/v2/health/ready",
         "peer_kserve.py", port_options=("--grpc-port",)),
    Spec("mlserver", "MLServer V2", "mlserver", "v2", V2_PATH, f"/v2/models/{MODEL_NAME}/ready",
         "peer_mlserver.py", (), ("--grpc-port", "--metrics-port"), workdir=True),
    Spec("mlserver-inproc", "MLServer V2, parallel_workers=0", "mlserver", "v2", V2_PATH,
         f"/v2/models/{MODEL_NAME}/ready", "peer_mlserver.py", ("--parallel-workers", "0"),
         ("--grpc-port", "--metrics-port"), workdir=True),
    Spec("mlserver-batch", "MLServer V2 + adaptive batching (64, 2 ms)", "mlserver", "v2", V2_PATH,
         f"/v2/models/{MODEL_NAME}/ready", "peer_mlserver.py",
         ("--max-batch-size", "64", "--max-batch-time", "0.002"),
         ("--grpc-port", "--metrics-port"), workdir=True),
    Spec("mlserver-grpc", "MLServer gRPC", "mlserver", "grpc", GRPC_INFER,
         f"/v2/models/{MODEL_NAME}/ready", "peer_mlserver.py", (), ("--grpc-port", "--metrics-port"),
         workdir=True),
    Spec("litserve", "LitServe", "litserve", "v1", "/predict", "/health", "peer_litserve.py"),
    Spec("litserve-batch", "LitServe + batching (64, 2 ms)", "litserve", "v1", "/predict", "/health",
         "peer_litserve.py", ("--max-batch-size", "64", "--batch-timeout", "0.002")),
    Spec("bentoml", "BentoML", "bentoml", "v1", "/predict", "/readyz", "peer_bentoml.py"),
    Spec("bentoml-batch", "BentoML + adaptive batching (64)", "bentoml", "v1", "/predict", "/readyz",
         "peer_bentoml.py", ("--batch", "--max-batch-size", "64")),
)
# The project's server each peer is compared with: the same protocol, batching on.
REFERENCE = {"v1": "hydra-v1", "v2": "hydra-v2", "grpc": "hydra-grpc"}
# The option of a peer's script that sets its gRPC port: where a "grpc" server is measured.
GRPC_PORT_OPTION = "--grpc-port"


@dataclass
class Server:
    spec: Spec
    argv: list[str]
    env: dict[str, str]
    port: int
    log: Path
    grpc_port: int = 0  # the gRPC port of a "grpc" server (its HTTP port answers readiness)
    proc: subprocess.Popen | None = None
    failed: str = ""  # why it left the run early

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def load_port(self) -> int:
        """The port the outputs check and the load go to."""
        return self.grpc_port if self.spec.protocol == "grpc" else self.port


class Ports:
    """Free 127.0.0.1 ports, never the same one twice in a run."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def __call__(self) -> int:
        while True:
            port = bench_service._free_port()
            if port not in self.taken:
                self.taken.add(port)
                return port


def select(patterns: str | None) -> tuple[list[Spec], set[str]]:
    """The specs --only keeps (all without it) and the ids it named literally."""
    if not patterns:
        return list(CATALOGUE), set()
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    ids = [s.id for s in CATALOGUE]
    for pattern in wanted:
        if not fnmatch.filter(ids, pattern):
            raise SystemExit(f"--only: {pattern!r} matches no server (see --list)")
    chosen = [s for s in CATALOGUE if any(fnmatch.fnmatchcase(s.id, p) for p in wanted)]
    return chosen, {p for p in wanted if p in ids}


def prepare(specs: list[Spec], args: argparse.Namespace, model: Path, repo: Path,
            work: Path) -> list[Server]:
    ports = Ports()
    servers: list[Server] = []
    for spec in specs:
        port = ports()
        grpc_port = 0
        # Nothing from the caller's HYDRA_* settings (an API key, other providers...).
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
        if spec.env is None:
            argv = [str(args.hydra_serve)]
            # A gRPC server only where one is measured, on a port of its own (hydra-serve's
            # default, 8081, would be shared by every hydra server of the run).
            if spec.protocol == "grpc":
                grpc_port = ports()
            env.update({"HYDRA_REPOSITORY": str(repo), "HYDRA_HOST": "127.0.0.1",
                        "HYDRA_PORT": str(port), "HYDRA_GRPC_PORT": str(grpc_port),
                        "HYDRA_PROVIDERS": "CPUExecutionProvider",
                        "HYDRA_INTRA_OP_THREADS": str(args.threads), **dict(spec.hydra_env)})
        else:
            python = Path(args.venvs) / spec.env / "bin" / "python"
            argv = [str(python), str(SERVERS / spec.script), "--model", str(model),
                    "--port", str(port), "--threads", str(args.threads), *spec.args]
            for option in spec.port_options:
                extra = ports()
                argv += [option, str(extra)]
                if option == GRPC_PORT_OPTION and spec.protocol == "grpc":
                    grpc_port = extra
            if spec.workdir:
                argv += ["--workdir", str(work / spec.id)]
            # The peer's own environment only: nothing of this interpreter's leaks in.
            for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
                env.pop(name, None)
        if spec.protocol == "grpc" and not grpc_port:
            raise SystemExit(f"{spec.id}: a gRPC server needs a gRPC port ({GRPC_PORT_OPTION})")
        servers.append(Server(spec, argv, env, port, work / f"{spec.id}.log", grpc_port))
    return servers


def start(server: Server, cwd: Path) -> None:
    # A session of its own: Ctrl-C at the terminal reaches only this driver, which then
    # stops every tree (stop_all).
    with server.log.open("wb") as log:
        server.proc = subprocess.Popen(server.argv, env=server.env, cwd=cwd, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(server: Server, deadline: float) -> None:
    """Until the HTTP readiness route answers 200 and, for a gRPC server, its ModelReady
    call answers ready (KServe starts its gRPC server beside uvicorn, not before it)."""
    http_ready = False
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited with status {server.proc.returncode} before "
                               f"it was ready:\n{tail(server.log)}")
        if not http_ready:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            try:
                conn.request("GET", server.spec.ready)
                http_ready = conn.getresponse().status == 200
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
        if http_ready and (server.spec.protocol != "grpc" or grpc_model_ready(server.grpc_port)):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{server.label} not ready in time:\n{tail(server.log)}")


def stop_all(servers: list[Server], grace: float = 15.0) -> None:
    """SIGTERM every server at once, give them ``grace`` seconds together, then terminate and
    at last kill whatever of each tree (as it was just before) is still alive, by PID. A
    second Ctrl-C does not cut this short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        started = [s.proc for s in servers if s.proc is not None]
        procs = [p for proc in started for p in tree(proc.pid)]
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for step in ("terminate", "kill"):
            for p in alive:
                try:
                    getattr(p, step)()
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(alive, timeout=5)
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


# -- raw HTTP (the framing the load generator sends) ------------------------------------------


def exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on an open connection -> status, headers (lower-case names), body. The
    body must come with Content-Length: the load generator reads nothing else."""
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the answer's head")
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ValueError("chunked answer: the load generator reads Content-Length bodies only")
    if "content-length" not in headers:
        raise ValueError("answer without Content-Length")
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed in the answer's body")
        body += chunk
    return status, headers, body[:length]


def post(port: int, path: str, body: bytes, repeat: int = 1) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` ``repeat`` times on one connection (checks keep-alive); the last answer."""
    request = bench_service._request_bytes(path, body)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for _ in range(repeat):
            answer = exchange(sock, request)
    return answer


# -- gRPC (the Open Inference Protocol's calls, by their wire names) ---------------------------


def grpc_unary(port: int, method: str, request: bytes, repeat: int = 1, timeout: float = 30) -> bytes:
    """A serialized request sent ``repeat`` times on one channel; the last serialized answer.
    Raises grpc.RpcError for a call that fails."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
        for _ in range(repeat):
            answer = call(request, timeout=timeout)
    return answer


def grpc_model_ready(port: int) -> bool:
    import grpc

    try:
        raw = grpc_unary(port, GRPC_MODEL_READY, pb.ModelReadyRequest(name=MODEL_NAME).SerializeToString(),
                         timeout=2)
    except grpc.RpcError:
        return False
    return pb.ModelReadyResponse.FromString(raw).ready


def grpc_request(x: np.ndarray) -> bytes:
    """A serialized ModelInferRequest: the batch as one FP32 input in ``raw_input_contents``
    (what tritonclient.grpc sends), asking for the six outputs."""
    msg = pb.ModelInferRequest(model_name=MODEL_NAME)
    msg.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    for name in OUTPUTS:
        msg.outputs.add(name=name)
    msg.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return msg.SerializeToString()


def grpc_outputs(raw: bytes, n: int) -> dict[str, np.ndarray]:
    """A serialized ModelInferResponse -> {output: float32 array [n, -1]}. Outputs come as
    ``raw_output_contents`` (little-endian FP32 bytes, one entry per output, in order) or as
    typed ``fp32_contents``."""
    reply = pb.ModelInferResponse.FromString(raw)
    raws = list(reply.raw_output_contents)
    if raws and len(raws) != len(reply.outputs):
        raise ValueError(f"{len(raws)} raw_output_contents for {len(reply.outputs)} outputs")
    tensors = {}
    for i, t in enumerate(reply.outputs):
        if t.datatype != "FP32":
            raise ValueError(f"output {t.name!r}: datatype {t.datatype!r}, FP32 expected")
        data = (np.frombuffer(raws[i], dtype="<f4") if raws
                else np.asarray(t.contents.fp32_contents, dtype=np.float32))
        shape = [int(d) for d in t.shape]
        if not shape or shape[0] != n or int(np.prod(shape)) != data.size:
            raise ValueError(f"output {t.name!r}: shape {shape} with {data.size} values for {n} instances")
        tensors[t.name] = data.reshape(shape)
    missing = [k for k in OUTPUTS if k not in tensors]
    if missing:
        raise ValueError(f"outputs missing: {missing}")
    return {k: tensors[k].astype(np.float32, copy=False).reshape(n, -1) for k in OUTPUTS}


# -- bodies, answers, outputs check -----------------------------------------------------------


def body_for(protocol: str, x: np.ndarray) -> bytes:
    if protocol == "grpc":
        return grpc_request(x)
    if protocol == "v1":
        return json.dumps({"instances": x.tolist()}).encode()
    return json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}],
        "outputs": [{"name": name} for name in OUTPUTS],
    }).encode()


def outputs_of(protocol: str, answer: object, n: int) -> dict[str, np.ndarray]:
    """A server's answer -> {output: float32 array [n, -1]}. V1 answers are a list of
    per-instance objects, bare or under "predictions"; hydra calls mean_probs "probabilities"."""
    if protocol == "v2":
        tensors = {t["name"]: t["data"] for t in answer["outputs"]}
        return {k: np.asarray(tensors[k], dtype=np.float32).reshape(n, -1) for k in OUTPUTS}
    preds = answer["predictions"] if isinstance(answer, dict) else answer
    if len(preds) != n:
        raise ValueError(f"{len(preds)} predictions for {n} instances")
    out = {}
    for k in OUTPUTS:
        key = "probabilities" if k == "mean_probs" and k not in preds[0] else k
        out[k] = np.asarray([p[key] for p in preds], dtype=np.float32).reshape(n, -1)
    return out


def answer_of(server: Server, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The server's six outputs for ``batch``, in one request (HTTP or gRPC)."""
    body = body_for(server.spec.protocol, batch)
    if server.spec.protocol == "grpc":
        import grpc

        try:
            raw = grpc_unary(server.load_port, server.spec.path, body)
        except grpc.RpcError as exc:
            raise RuntimeError(f"{server.label}: gRPC {exc.code().name}: {exc.details()}") from exc
        return grpc_outputs(raw, len(batch))
    status, _, raw = post(server.port, server.spec.path, body)
    if status != 200:
        raise RuntimeError(f"{server.label}: HTTP {status}: {raw[:300]!r}")
    return outputs_of(server.spec.protocol, json.loads(raw), len(batch))


def check_outputs(server: Server, sess, x: np.ndarray) -> dict:
    """Differences from ONNX Runtime run directly, for 1 instance and for 4 in one request.
    JSON numbers are compared after conversion to float32: servers that write a float32 as
    its shortest float32 repr and servers that write it as a float64 both round-trip. gRPC
    answers carry the float32 bytes themselves."""
    worst, equal = 0.0, True
    for batch in (x[:1], x[1:5]):
        got = answer_of(server, batch)
        ref = dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {"input": batch})))
        for k in OUTPUTS:
            want = ref[k].astype(np.float32).reshape(len(batch), -1)
            if got[k].shape != want.shape:
                raise RuntimeError(f"{server.label}: {k} has shape {got[k].shape}, expected {want.shape}")
            equal &= bool(np.array_equal(got[k], want))
            worst = max(worst, float(np.max(np.abs(got[k].astype(np.float64) - want))))
    return {"max_abs_diff": worst, "exact": equal}


# -- load ---------------------------------------------------------------------------------------


class LoadFailed(RuntimeError):
    pass


def _load_worker(jobs, results) -> None:
    """The project's load worker (bench_service._load_worker), deaf to the terminal's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    bench_service._load_worker(jobs, results)


def _grpc_load_worker(jobs, results) -> None:
    """The gRPC counterpart of bench_service._load_worker, deaf to Ctrl-C: one long-lived
    process running (port, request, concurrency, warmup, duration) jobs on one event loop
    (grpc.aio keeps to the loop it started on), answering (latencies, statuses) as the HTTP
    worker does: statuses counts 200 for each call answered OK, the code's name for each
    refused, and under -1 every answer, warm-up included. A call answered UNAVAILABLE (nothing
    listens, or the connection dropped) ends the process, as a refused connection ends the
    HTTP worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    while True:
        job = jobs.get()
        if job is None:
            loop.close()
            return
        results.put(loop.run_until_complete(_grpc_load(*job)))


async def _grpc_load(port: int, request: bytes, concurrency: int, warmup: float,
                     duration: float) -> tuple[list[float], dict]:
    """``concurrency`` unary ModelInfer calls in flight on ONE channel (one HTTP/2
    connection, as tritonclient.grpc and KServe's client use), each sending the same
    serialized request as is and leaving the answer's bytes unparsed, so that the client's
    own cost is small and the same for every server."""
    import grpc
    from grpc import aio

    latencies: list[float] = []
    statuses: dict = {}
    if not concurrency:  # the start-up job: the imports above are done
        return latencies, statuses
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        # No serializers: bytes in, bytes out. The connection is made by the first call, in
        # the warm-up, as the HTTP worker's are.
        call = channel.unary_unary(GRPC_INFER)
        now = time.perf_counter()
        start, stop = now + warmup, now + warmup + duration

        async def caller() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call(request, timeout=60)
                    status: int | str = 200
                except aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        raise
                    status = exc.code().name
                statuses[-1] = statuses.get(-1, 0) + 1  # every answer, warm-up included
                if t0 >= start:  # the first part of each run is warm-up
                    latencies.append(time.perf_counter() - t0)
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, statuses


class TreeLoad(bench_service.LoadGenerator):
    """The project's load generator (bench_service.LoadGenerator: one spawned process running
    the keep-alive asyncio HTTP/1.1 client), measured here over the server's whole process
    tree, since peers serve from several processes (MLServer's inference worker, LitServe's
    and BentoML's workers), with the client's own CPU time and a guard against a load process
    that dies (a server that drops connections) or hangs."""

    worker = staticmethod(_load_worker)

    def __init__(self) -> None:
        # bench_service.LoadGenerator.__init__, with the worker wrapped so that it ignores
        # Ctrl-C: the driver stops it, after the measurement in progress or at once.
        ctx = mp.get_context("spawn")
        self.jobs = ctx.Queue()
        self.results = ctx.Queue()
        self.proc = ctx.Process(target=self.worker, args=(self.jobs, self.results), daemon=True)
        self.proc.start()
        # An empty job (no connections) returns once the process has imported its modules,
        # so that the first measurement's client CPU does not include the start-up.
        self.jobs.put((0, b"", 0, 0.0, 0.0))
        self.results.get(timeout=120)

    def measure(self, port: int, request: bytes, concurrency: int, duration: float,
                pid: int | None = None, warmup: float = 0.3) -> dict:
        client = psutil.Process(self.proc.pid)
        client_before = sum(client.cpu_times()[:2])
        before = tree_cpu(pid)
        self.jobs.put((port, request, concurrency, warmup, duration))
        deadline = time.monotonic() + warmup + duration + 60
        rss = 0
        while self.results.empty():
            if not self.proc.is_alive():
                raise LoadFailed("the load process died (connection refused or dropped?)")
            if time.monotonic() > deadline:
                raise LoadFailed("no result from the load process within a minute of the end")
            rss = max(rss, tree_rss(pid))
            time.sleep(0.05)
        after = tree_cpu(pid)
        client_cpu = sum(client.cpu_times()[:2]) - client_before
        latencies, statuses = self.results.get(timeout=60)
        answered = max(statuses.pop(-1, 0), 1)  # every answer, warm-up included
        server_cpu = sum(t - before.get(p, 0.0) for p, t in after.items())
        lat = np.asarray(latencies) * 1000.0
        return {
            "concurrency": concurrency,
            "rps": lat.size / duration,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "errors": sum(n for status, n in statuses.items() if status != 200),
            "rss_mb": rss / 2**20,
            "cpu_us": 1e6 * server_cpu / answered,
            "client_cpu_us": 1e6 * client_cpu / answered,
        }

    def close(self) -> None:
        self.jobs.put(None)  # stops an idle worker; one in a measurement is stopped below
        self.proc.join(1)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


class GrpcTreeLoad(TreeLoad):
    """TreeLoad with the gRPC client (``_grpc_load_worker``) in its process: the same
    columns, measured the same way; the request is a serialized ModelInferRequest."""

    worker = staticmethod(_grpc_load_worker)


def load_for(protocol: str) -> type[TreeLoad]:
    return GrpcTreeLoad if protocol == "grpc" else TreeLoad


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system seconds of every process of the tree, by PID (a process that appears
    later counts from zero)."""
    out = {}
    for p in tree(pid):
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def summarize(runs: list[dict]) -> dict:
    """bench_service's median round (by requests/s; CPU per request: median of the rounds),
    with the client's CPU and every round's requests/s."""
    row = bench_service.median_run(runs)
    row["client_cpu_us"] = float(np.median([r["client_cpu_us"] for r in runs]))
    row["rounds_rps"] = [round(r["rps"], 1) for r in runs]
    return row


# -- the rest -----------------------------------------------------------------------------------


def versions(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        # -I: neither the working folder nor PYTHON* variables on the path (the project's
        # egg-info in the repository root would show up in every environment).
        done = subprocess.run([python, "-I", "-c", code, *VERSIONED], capture_output=True,
                              text=True, timeout=60)
        return json.loads(done.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def direct_ort(sess, x: np.ndarray, seconds: float) -> dict[str, float]:
    """Microseconds per ONNX Runtime call at batch 1, and per instance at batch 64."""
    out = {}
    for batch in (1, 64):
        inp = np.ascontiguousarray(np.resize(x, (batch, x.shape[1])), dtype=np.float32)
        for _ in range(20):
            sess.run(list(OUTPUTS), {"input": inp})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            sess.run(list(OUTPUTS), {"input": inp})
            n += 1
        out[f"batch{batch}_us_per_instance"] = 1e6 * (time.perf_counter() - t0) / n / batch
    return out


def default_model() -> Path | None:
    found = [p for p in ROOT.glob("models/digits/*/model.onnx") if p.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def fmt(v: float, digits: int = 0) -> str:
    return "nan" if v != v else f"{v:.{digits}f}"


def ratios_of(results: dict[str, list[dict]], protocols: dict[str, str],
              concurrency: list[int]) -> list[dict]:
    """Within the run, for every server with the project's server on its protocol beside it:
    the project's requests/s ÷ the server's, and the server's CPU per request ÷ the
    project's, by concurrency (above 1: the project better)."""
    ratios = []
    for sid, protocol in protocols.items():
        ref = REFERENCE[protocol]
        if ref == sid or ref not in results or not results.get(sid):
            continue
        ours = {r["concurrency"]: r for r in results[ref]}
        theirs = {r["concurrency"]: r for r in results[sid]}
        both = [c for c in concurrency if c in ours and c in theirs]
        rps = {c: ours[c]["rps"] / theirs[c]["rps"] if theirs[c]["rps"] else float("nan") for c in both}
        cpu = {c: theirs[c]["cpu_us"] / ours[c]["cpu_us"] if ours[c]["cpu_us"] else float("nan")
               for c in both}
        ratios.append({"ours": ref, "peer": sid, "rps": rps, "cpu": cpu})
    return ratios


def tables(labels: dict[str, str], protocols: dict[str, str], failed: dict[str, str],
           results: dict[str, list[dict]], sizes: dict[str, int],
           concurrency: list[int]) -> tuple[str, str, list[dict]]:
    """The Markdown table of every cell, the one of ratios, and the ratios as data; servers
    by id, in the order of ``labels``."""
    lines = ["| server | c | req/s | p50 ms | p99 ms | errors | server CPU µs/req | "
             "client CPU µs/req | RSS MB | answer B | batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for sid, label in labels.items():
        for r in results.get(sid, []):
            batch = fmt(r["batch"], 1) if "batch" in r else ""
            lines.append(f"| {label} | {r['concurrency']} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 2)} | "
                         f"{fmt(r['p99_ms'], 2)} | {r['errors']} | {fmt(r['cpu_us'])} | "
                         f"{fmt(r['client_cpu_us'])} | {fmt(r['rss_mb'])} | {sizes.get(sid, '')} | {batch} |")
        if failed.get(sid):
            lines.append(f"| {label} | | failed: {failed[sid]} | | | | | | | | |")
    ratios = ratios_of(results, protocols, concurrency)
    head = ("| ratio, same protocol (>1: the project better) | "
            + " | ".join(f"req/s c={c}" for c in concurrency) + " | "
            + " | ".join(f"peer CPU/req ÷ ours c={c}" for c in concurrency) + " |")
    rlines = [head, "|---|" + "---:|" * (2 * len(concurrency))]
    for ratio in ratios:
        rps, cpu = ratio["rps"], ratio["cpu"]
        rlines.append(f"| {labels[ratio['ours']]} ÷ {labels[ratio['peer']]} | "
                      + " | ".join(fmt(rps[c], 2) if c in rps else "" for c in concurrency) + " | "
                      + " | ".join(fmt(cpu[c], 2) if c in cpu else "" for c in concurrency) + " |")
    return "\n".join(lines), "\n".join(rlines) if ratios else "", ratios


# -- the gRPC goals -----------------------------------------------------------------------------

# hydra-grpc ÷ the best other gRPC server of the run in requests/s, at least, by concurrency.
GRPC_RPS_GOALS = ((1, 1.0), (64, 2.0))
# hydra-grpc ÷ hydra-v2 (V2 REST) in server CPU per request, at most, at every concurrency.
GRPC_CPU_GOAL = 1.0


def grpc_goals(results: dict[str, list[dict]], labels: dict[str, str], protocols: dict[str, str],
               concurrency: list[int]) -> dict[str, dict]:
    """The gRPC goals this run can judge, each as the project's goals are written (title,
    value, target, direction, met; training.evaluate's form): hydra-grpc against the best
    other gRPC server in requests/s at the concurrencies of GRPC_RPS_GOALS, and against
    hydra-v2 in server CPU per request at every concurrency of the run. A goal whose servers
    or concurrency are not in the run is left out."""
    from training.report_md import meets

    ref, v2 = REFERENCE["grpc"], REFERENCE["v2"]
    ours = {r["concurrency"]: r for r in results.get(ref, [])}
    goals: dict[str, dict] = {}

    def goal(key: str, title: str, value: float, target: float, higher_is_better: bool, **beside) -> None:
        goals[key] = {"title": title, "value": value, "target": target, "is_goal": True,
                      "met": bool(meets(value, target, higher_is_better)),
                      "higher_is_better": higher_is_better, **beside}

    peers = [sid for sid, p in protocols.items() if p == "grpc" and sid != ref and results.get(sid)]
    names = " and ".join(labels[p] for p in peers)
    for c, target in GRPC_RPS_GOALS:
        cells = {p: r for p in peers for r in results[p] if r["concurrency"] == c}
        if c not in ours or not cells:
            continue
        best = max(cells, key=lambda p: cells[p]["rps"])
        rps = cells[best]["rps"]
        goal(f"grpc_rps_over_best_peer/c={c}",
             f"{labels[ref]} ÷ the best of {names}, requests/s at concurrency {c}",
             ours[c]["rps"] / rps if rps else float("nan"), target, True, best_peer=best)
    rest = {r["concurrency"]: r for r in results.get(v2, [])}
    for c in concurrency:
        if c in ours and c in rest:
            goal(f"grpc_cpu_over_v2/c={c}",
                 f"{labels[ref]} ÷ {labels[v2]}, server CPU per request at concurrency {c}",
                 ours[c]["cpu_us"] / rest[c]["cpu_us"], GRPC_CPU_GOAL, False)
    return goals


def render(data: dict) -> list[str]:
    """The ``grpc`` section of BENCHMARKS.md from what ``main`` writes with --json: how the
    run was made, every cell, the ratios within the run and the goals with their verdicts."""
    from training.report_md import goals_table

    labels, protocols = data["servers"], data["protocols"]
    concurrency = data["concurrency"]
    cells, ratio_table, _ = tables(labels, protocols, data.get("failed", {}), data["results"],
                                   data["answer_bytes"], concurrency)
    before, after = data["loadavg_before"][0], data["loadavg_after"][0]
    sizes = data["request_bytes"]
    bodies = {"v1": f"V1 body {sizes['v1']} B", "v2": f"V2 body {sizes['v2']} B",
              "grpc": f"gRPC ModelInferRequest {sizes['grpc']} B (raw FP32 input)"}
    used = [bodies[p] for p in dict.fromkeys(protocols.values())]
    checks = data["checks"]
    exact = [sid for sid in labels if checks.get(sid, {}).get("exact")]
    differ = [f"{sid} (max abs diff {checks[sid]['max_abs_diff']:.3g})" for sid in labels
              if sid in checks and not checks[sid]["exact"]]
    check = (f"The outputs of {len(exact)} of {len(labels)} servers, for requests of 1 and of 4 "
             "instances, were equal to ONNX Runtime run directly, bit for bit"
             + (f"; they differed for {', '.join(differ)}" if differ else "") + ".")
    direct = data["direct_ort"]
    lines = [
        f"`{shlex.join(data['command'])}`",
        "",
        f"**Machine:** {data['machine']}" + (f", {data['cpu']}" if data.get("cpu") else "")
        + f"; load average {before:.2f} before the run and {after:.2f} after it. ONNX Runtime "
        f"{data['threads']} intra-op thread(s) in every server; `{data['model']}`; "
        f"{data['rounds']} round(s) of {data['duration_s']:g} s per cell after {data['warmup_s']:g} s "
        "of warm-up, every server measured in turn within each round; each row is the round "
        "with the median requests/s, with the median server CPU per request of the rounds. "
        f"One instance per request: {', '.join(used)}, asking for the six outputs. ONNX Runtime "
        f"called directly: {direct['batch1_us_per_instance']:.1f} µs per batch-1 call. {check} "
        "Server CPU: user + system time of the server's whole process tree over every answer, "
        "warm-up included; client CPU: the load process's own; batch: hydra-serve's mean "
        "instances per ONNX Runtime call in that round, from its /metrics.",
        "",
        cells,
    ]
    if ratio_table:
        lines += ["", "Ratios within the run (requests/s: the project's server ÷ the other; CPU "
                      "per request: the other's ÷ the project's; above 1 the project is better):",
                  "", ratio_table]
    goals = data.get("goals") or {}
    if goals:
        best = [f"{labels[g['best_peer']]} at concurrency {key.rpartition('=')[2]}"
                for key, g in goals.items() if "best_peer" in g]
        lines += ["", "Goals" + (f" (the best other gRPC server by requests/s: {', '.join(best)})"
                                 if best else "") + ":", "", *goals_table(goals)]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=default_model(),
                    help="the model.onnx to serve (default: the newest models/digits/N/model.onnx)")
    ap.add_argument("--hydra-serve", type=Path, default=Path(sys.executable).parent / "hydra-serve",
                    help="the project's hydra-serve executable (default: next to this python)")
    ap.add_argument("--venvs", type=Path, default=Path(DEFAULT_VENVS),
                    help="the folder setup_venvs.sh filled (default: $PEER_VENVS, else %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, every server")
    ap.add_argument("--concurrency", default="1,8,64", help="comma-separated (default %(default)s)")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds measured per cell and round")
    ap.add_argument("--warmup", type=float, default=0.3, help="seconds of load before each measurement")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per concurrency (median kept)")
    ap.add_argument("--only", help="server ids or patterns, comma-separated (see --list)")
    ap.add_argument("--list", action="store_true", help="print the server ids and exit")
    ap.add_argument("--json", type=Path, help="write every figure, check and version here")
    ap.add_argument("--ready-timeout", type=float, default=180.0, help="seconds for all to be ready")
    ap.add_argument("--no-exact", action="store_true",
                    help="report outputs that differ from ONNX Runtime instead of stopping")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and scratch")
    args = ap.parse_args(argv)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        ap.error("--concurrency: integers, comma-separated")
    if not args.concurrency or min(args.concurrency) < 1:
        ap.error("--concurrency: at least one value, each >= 1")
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1 or args.threads < 1:
        ap.error("--duration > 0, --warmup >= 0, --rounds >= 1, --threads >= 1")
    return args


def runnable(args: argparse.Namespace) -> list[Spec]:
    """The selected servers whose executable exists; a missing one that --only named is an
    error, any other is skipped with a note."""
    specs, named = select(args.only)
    found = []
    for spec in specs:
        exe = args.hydra_serve if spec.env is None else args.venvs / spec.env / "bin" / "python"
        if exe.exists():
            found.append(spec)
        elif spec.id in named:
            raise SystemExit(f"{spec.id}: {exe} not found (run setup_venvs.sh, or give --hydra-serve)")
        else:
            print(f"skipped: {spec.id} ({exe} not found)")
    if not found:
        raise SystemExit("no server to run")
    return found


def check_all(servers: list[Server], sess, x: np.ndarray, bodies: dict[str, bytes],
              exact: bool) -> tuple[dict[str, dict], dict[str, int]]:
    """Every server's outputs against ORT run directly, and its answer size for the timed
    request (sent twice on one connection: keep-alive and Content-Length are needed; for
    gRPC twice on one channel)."""
    checks, sizes, mismatched = {}, {}, []
    for s in servers:
        c = checks[s.spec.id] = check_outputs(s, sess, x)
        if s.spec.protocol == "grpc":
            answer = grpc_unary(s.load_port, s.spec.path, bodies["grpc"], repeat=2)
        else:
            _, _, answer = post(s.port, s.spec.path, bodies[s.spec.protocol], repeat=2)
        sizes[s.spec.id] = len(answer)
        print(f"check: {s.spec.id}: outputs {'equal to' if c['exact'] else 'DIFFER from'} ORT run "
              f"directly (max abs diff {c['max_abs_diff']:.3g}); answer {len(answer)} B", flush=True)
        if not c["exact"]:
            mismatched.append(s.spec.id)
    if mismatched and exact:
        raise RuntimeError(f"outputs differ from ONNX Runtime run directly: {', '.join(mismatched)} "
                           "(--no-exact measures anyway)")
    return checks, sizes


def batch_totals(port: int) -> tuple[float, float] | None:
    """hydra-serve's ``hydra_inference_batch_size`` histogram from its /metrics: (instances,
    ONNX Runtime calls) so far, all models; None where there is none (a peer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        text = answer.read().decode(errors="replace")
        if answer.status != 200:
            return None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for suffix in totals:
            if line.startswith(f"hydra_inference_batch_size{suffix}{{"):
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["_sum"], totals["_count"]


def measure_all(servers: list[Server], requests: dict[str, bytes],
                args: argparse.Namespace) -> dict[str, list[dict]]:
    """Interleaved rounds: for each concurrency, ``rounds`` times every server in turn, the
    order rotated from round to round. A server the load generator cannot finish with (it
    died, or drops connections) leaves the run; the others go on. HTTP servers get the HTTP
    load process, gRPC servers the gRPC one; both are started before the first measurement."""
    results: dict[str, list[dict]] = {}
    loads: dict[type[TreeLoad], TreeLoad] = {}
    try:
        for kind in dict.fromkeys(load_for(s.spec.protocol) for s in servers):
            loads[kind] = kind()
        for c in args.concurrency:
            runs: dict[str, list[dict]] = {s.spec.id: [] for s in servers}
            for r in range(args.rounds):
                active = [s for s in servers if not s.failed]
                k = r % max(len(active), 1)
                for s in active[k:] + active[:k]:
                    kind = load_for(s.spec.protocol)
                    # hydra-serve's batches: read outside the measured span (its CPU too).
                    before = batch_totals(s.port) if s.spec.env is None else None
                    try:
                        row = loads[kind].measure(s.load_port, requests[s.spec.id], c, args.duration,
                                                  s.proc.pid, args.warmup)
                        after = batch_totals(s.port) if before else None
                        if before and after and after[1] > before[1]:
                            # Mean instances per ONNX Runtime call, warm-up included.
                            row["batch"] = (after[0] - before[0]) / (after[1] - before[1])
                        runs[s.spec.id].append(row)
                    except LoadFailed as exc:
                        exited = s.proc.poll()
                        s.failed = f"c={c}: {exc}" + ("" if exited is None else f"; server exited {exited}")
                        print(f"FAILED: {s.spec.id}: {s.failed}\n{tail(s.log)}", flush=True)
                        loads.pop(kind).close()
                        loads[kind] = kind()
                print(f"c={c} round {r + 1}/{args.rounds} done", flush=True)
            for s in servers:
                if runs[s.spec.id] and not s.failed:
                    results.setdefault(s.spec.id, []).append(summarize(runs[s.spec.id]))
    finally:
        for load in loads.values():
            load.close()
    return results


def project_path(path: str | Path) -> str:
    """A path inside the project relative to its root (the JSON then reads the same in
    every checkout); any other as it is."""
    try:
        return str(Path(path).absolute().relative_to(ROOT))
    except ValueError:
        return str(path)


def command_line(argv: list[str] | None) -> list[str]:
    """How this run was asked for: interpreter, script and options."""
    script = sys.argv[0] if argv is None else __file__
    return [project_path(sys.executable), project_path(script), *(sys.argv[1:] if argv is None else argv)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in CATALOGUE:
            where = "hydra-serve" if s.env is None else f"{args.venvs / s.env}"
            print(f"{s.id:18} {s.protocol:5} {s.label}   [{where}]")
        return 0
    if args.model is None or not args.model.is_file():
        raise SystemExit(f"no model file: {args.model} (give --model)")
    specs = runnable(args)

    # SIGTERM and SIGHUP unwind like Ctrl-C, through the finally below.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    import onnxruntime as ort

    from contract.onnxrt import session_options

    started = time.perf_counter()
    meta = {
        "command": command_line(argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}",
        "cpu": bench_service.cpu_name(),
        "model": project_path(args.model), "threads": args.threads, "concurrency": args.concurrency,
        "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
        "loadavg_before": os.getloadavg(),
    }
    print(f"machine: {meta['machine']}; load average {meta['loadavg_before'][0]:.2f}; "
          f"ORT intra-op threads {args.threads}; model {args.model}")
    work = Path(tempfile.mkdtemp(prefix="peer-bench-"))
    servers: list[Server] = []
    try:
        repo = work / "repo"
        model = repo / MODEL_NAME / "1" / "model.onnx"
        model.parent.mkdir(parents=True)
        shutil.copy(args.model, model)
        sess = ort.InferenceSession(str(model), sess_options=session_options(args.threads),
                                    providers=["CPUExecutionProvider"])
        x = np.ascontiguousarray(bench_service.sample_inputs(model), dtype=np.float32)
        x = x.reshape(len(x), -1)
        bodies = {p: body_for(p, x[:1]) for p in ("v1", "v2", "grpc")}

        servers = prepare(specs, args, model, repo, work)
        pythons = {(s.spec.env or "hydra"): Path(s.argv[0]).parent / "python" for s in servers}
        meta["versions"] = {name: versions(str(exe)) for name, exe in pythons.items()}
        for name, v in meta["versions"].items():
            print(f"versions, {name}: " + ", ".join(f"{k} {val}" for k, val in v.items()))

        for s in servers:
            start(s, work)
        deadline = time.monotonic() + args.ready_timeout
        for s in servers:
            wait_ready(s, deadline)
            grpc = f", gRPC port {s.grpc_port}" if s.spec.protocol == "grpc" else ""
            print(f"ready: {s.spec.id} (pid {s.proc.pid}, port {s.port}{grpc})", flush=True)
        checks, sizes = check_all(servers, sess, x, bodies, exact=not args.no_exact)
        # What the load process sends: an HTTP request, or a serialized ModelInferRequest.
        requests = {s.spec.id: bodies["grpc"] if s.spec.protocol == "grpc"
                    else bench_service._request_bytes(s.spec.path, bodies[s.spec.protocol])
                    for s in servers}
        results = measure_all(servers, requests, args)
    finally:
        stop_all(servers)
        if args.keep_logs:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    direct = direct_ort(sess, x, min(args.duration, 1.0))
    meta["loadavg_after"] = os.getloadavg()
    labels = {s.spec.id: s.label for s in servers}
    protocols = {s.spec.id: s.spec.protocol for s in servers}
    failed = {s.spec.id: s.failed for s in servers if s.failed}
    cells, ratio_table, ratios = tables(labels, protocols, failed, results, sizes, args.concurrency)
    goals = grpc_goals(results, labels, protocols, args.concurrency)
    print(f"\nORT called directly in-process: {direct['batch1_us_per_instance']:.1f} µs per batch-1 "
          f"call, {direct['batch64_us_per_instance']:.2f} µs per instance at batch 64")
    print(f"request bodies: V1 {len(bodies['v1'])} B, V2 {len(bodies['v2'])} B, gRPC "
          f"{len(bodies['grpc'])} B, one instance each; "
          f"{args.rounds} round(s) of {args.duration:g} s per cell after {args.warmup:g} s of warm-up; "
          f"load average {meta['loadavg_before'][0]:.2f} before, {meta['loadavg_after'][0]:.2f} after\n")
    print(cells)
    if ratio_table:
        print("\nreq/s: the project's server ÷ the peer; CPU: the peer's server CPU per request ÷ "
              "the project's; both from this run\n")
        print(ratio_table)
    if goals:
        print("\ngoals:")
        for g in goals.values():
            sign = "≥" if g["higher_is_better"] else "≤"
            print(f"  {g['title']}: {g['value']:.3f} ({sign} {g['target']:g}: "
                  f"{'met' if g['met'] else 'MISSED'})")
    elapsed = time.perf_counter() - started
    print(f"\ntotal time: {elapsed:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            **meta, "direct_ort": direct, "servers": labels, "protocols": protocols,
            "request_bytes": {p: len(b) for p, b in bodies.items()}, "answer_bytes": sizes,
            "checks": checks, "failed": failed, "results": results, "ratios": ratios,
            "goals": goals, "total_s": elapsed,
        }, indent=2, default=str))
        print(f"wrote {args.json}")
    return 1 if any(s.failed for s in servers) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every server was stopped", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:
        print(f"\nerror: {exc}\nevery server was stopped", file=sys.stderr)
        sys.exit(1)
