"""Service benchmark: throughput and latency of the HTTP service against two baselines.

In one run on this machine: requests/s and p50/p99 latency at concurrency 1, 8 and 64, with
batching on and off, beside (a) ONNX Runtime called directly in-process on the same inputs
and (b) a bare FastAPI endpoint on the same server stack (uvicorn) that reads the request
and returns a JSON body of the same size as the service's answer (also as a plain Starlette
route inside a FastAPI app, the way the service serves its inference endpoints). Prints the ratios
(service / bare at c=64; batching on / off) and the service's resident memory under load.

Each server runs as a subprocess on 127.0.0.1; the load comes from a separate process with a
minimal keep-alive HTTP/1.1 client (asyncio streams), so the client's own cost stays small.

    python benchmarks/bench_service.py                       # models/digits newest, else a test model
    python benchmarks/bench_service.py --model-dir models/cnn/2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 64)


# -- load generation (runs in its own process) ------------------------------------------------


def _request_bytes(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(port: int, request: bytes, start: float, stop: float,
                      latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            statuses[-1] = statuses.get(-1, 0) + 1  # every answer, warm-up included
            if t0 >= start:  # the first part of each run is warm-up
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def _load_worker(jobs: mp.Queue, results: mp.Queue) -> None:
    """One long-lived load process: runs (port, request, concurrency, warmup, duration) jobs."""
    while True:
        job = jobs.get()
        if job is None:
            return
        port, request, concurrency, warmup, duration = job

        async def main() -> tuple[list[float], dict[int, int]]:
            latencies: list[float] = []
            statuses: dict[int, int] = {}
            now = time.perf_counter()
            await asyncio.gather(*[
                _connection(port, request, now + warmup, now + warmup + duration, latencies, statuses)
                for _ in range(concurrency)
            ])
            return latencies, statuses

        results.put(asyncio.run(main()))


class LoadGenerator:
    """The client side, in its own process so its CPU time is not the server's."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.jobs: mp.Queue = ctx.Queue()
        self.results: mp.Queue = ctx.Queue()
        self.proc = ctx.Process(target=_load_worker, args=(self.jobs, self.results), daemon=True)
        self.proc.start()

    def measure(self, port: int, request: bytes, concurrency: int, duration: float,
                pid: int | None = None, warmup: float = 0.3) -> dict:
        """Requests/s and latency percentiles; the server's peak RSS and its CPU time per
        request (all threads; robust to other load on the machine, unlike requests/s)."""
        import psutil

        server = psutil.Process(pid)
        cpu_before = sum(server.cpu_times()[:2])
        self.jobs.put((port, request, concurrency, warmup, duration))
        rss = 0
        while self.results.empty():
            rss = max(rss, server.memory_info().rss)
            time.sleep(0.05)
        cpu = sum(server.cpu_times()[:2]) - cpu_before
        latencies, statuses = self.results.get(timeout=60)
        answered = statuses.pop(-1, 0)
        lat = np.asarray(latencies) * 1000.0
        return {
            "concurrency": concurrency,
            "rps": len(lat) / duration,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "errors": sum(n for s, n in statuses.items() if s != 200),
            "rss_mb": rss / 2**20,
            "cpu_us": 1e6 * cpu / max(answered, 1),
        }

    def close(self) -> None:
        self.jobs.put(None)
        self.proc.join(10)


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (the machine is shared: rounds smooth out noise)."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    best = dict(ordered[len(ordered) // 2])
    best["rss_mb"] = max(r["rss_mb"] for r in runs)
    best["cpu_us"] = float(np.median([r["cpu_us"] for r in runs]))
    best["errors"] = sum(r["errors"] for r in runs)
    return best


# -- servers -----------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (for the machine line of a benchmark's record)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(port: int, path: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready after {timeout}s")


def start_service(repo: Path, batching: bool) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {
        **os.environ,
        "HYDRA_REPOSITORY": str(repo),
        "HYDRA_PORT": str(port),
        "HYDRA_BATCHING": "true" if batching else "false",
        "HYDRA_QUEUE_SIZE": "1024",
        # A fresh copy is loaded once it has been quiet for a poll interval: keep it short.
        "HYDRA_POLL_INTERVAL_S": "2",
    }
    proc = subprocess.Popen([sys.executable, "-m", "app"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(port, "/v2/health/ready")
    except BaseException:  # never leave a server behind
        proc.kill()
        raise
    return proc, port


def start_bare(size: int, starlette_route: bool = False) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    flavour = "1" if starlette_route else "0"
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port), str(size), flavour],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_http(port, "/health")
    return proc, port


def run_bare_server(port: int, size: int, starlette_route: int = 0) -> None:
    """A FastAPI app on the same stack (uvicorn, same options) returning `size` bytes from
    an ordinary FastAPI route, or (``starlette_route``) from a plain Starlette route in the
    FastAPI app, as the service's inference endpoints are."""
    import uvicorn
    from starlette.routing import Route

    payload = json.dumps({"data": "x" * max(0, size - 12)}).encode()
    app = FastAPI()

    async def bare(request: Request) -> Response:
        await request.body()
        return Response(payload, media_type="application/json")

    if starlette_route:
        app.router.routes.insert(0, Route("/v1/models/{name}:predict", bare, methods=["POST"]))
    else:
        @app.post("/v1/models/{name}:predict")
        async def predict(name: str, request: Request) -> Response:
            return await bare(request)

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    # The service's HTTP protocol too (uvicorn's httptools parser with the request head
    # bounded, app/http_server.py), so that the two differ only by the application.
    sys.path.insert(0, str(ROOT))
    from app.http_server import uvicorn_options
    from app.settings import Settings

    http = uvicorn_options(Settings())["http"]
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False, http=http)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- direct ONNX Runtime -------------------------------------------------------------------------


def direct_ort(model: Path, x: np.ndarray, duration: float) -> list[dict]:
    import onnxruntime as ort

    from contract.onnxrt import session_options

    sess = ort.InferenceSession(str(model), sess_options=session_options(),
                                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    rows = []
    for batch in (1, 64):
        inp = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])), dtype=np.float32)
        for _ in range(20):
            sess.run(None, {"input": inp})
        lat = []
        stop_at = time.perf_counter() + duration
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            sess.run(None, {"input": inp})
            lat.append(time.perf_counter() - t0)
        arr = np.asarray(lat) * 1000
        rows.append({"batch": batch, "samples_per_s": batch * len(arr) / duration,
                     "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
                     "provider": sess.get_providers()[0]})
    return rows


# -- model --------------------------------------------------------------------------------------


def find_model(model_dir: str | None, tmp: Path) -> tuple[Path, str]:
    """The model file to serve and a description of where it came from."""
    if model_dir:
        d = Path(model_dir)
        if (d / "model.onnx").is_file():
            return d / "model.onnx", str(d)
        versions = sorted((p for p in d.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()),
                          key=lambda p: int(p.name))
        if versions:
            return versions[-1] / "model.onnx", str(versions[-1])
        raise SystemExit(f"no model.onnx in {d} or its version folders")
    found = sorted(ROOT.glob("models/digits/*/model.onnx"), key=lambda p: int(p.parent.name)
                   if p.parent.name.isdigit() else -1)
    if found:
        return found[-1], str(found[-1].parent.relative_to(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "app"))
    import contract_models as cm

    split = cm.digits_split()
    built = cm.build_classifier(split["train_x"], split["train_y"], split["calib_x"])
    path = tmp / "contract_model.onnx"
    path.write_bytes(built.data)
    return path, "tests/app/contract_models.py classifier (5 linear heads, no trained model found)"


def sample_inputs(model: Path) -> np.ndarray:
    import onnxruntime as ort

    from contract.model import ModelMetadata

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(dict(sess.get_modelmeta().custom_metadata_map))
    shape = meta.feature_shape
    if int(np.prod(shape)) == 64:  # digits-like: real images
        from sklearn.datasets import load_digits

        return load_digits().data[:256].astype(np.float32).reshape(-1, *shape)
    return np.random.default_rng(0).normal(size=(256, *shape)).astype(np.float32)


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a version folder with model.onnx, or a model folder")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell (the median is kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--bare-server", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        run_bare_server(*args.bare_server)
        return

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="hydra-bench-"))
    try:
        model, source = find_model(args.model_dir, tmp)
        repo = tmp / "repo"
        (repo / "bench" / "1").mkdir(parents=True)
        shutil.copy(model, repo / "bench" / "1" / "model.onnx")
        x = sample_inputs(model)
        body = json.dumps({"instances": [x[0].ravel().tolist()]}).encode()
        request = _request_bytes("/v1/models/bench:predict", body)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
              f"python {platform.python_version()}")
        print(f"model: {source}; one instance per request ({len(body)} bytes)")

        # All three servers run at once and are measured in turns, round after round, so a
        # change in the machine's background load hits all of them alike.
        servers: dict[str, tuple[subprocess.Popen, int, bool]] = {}  # (process, port, is service)
        load = LoadGenerator()
        try:
            for label, batching in (("service, batching on", True), ("service, batching off", False)):
                proc, port = start_service(repo, batching)
                servers[label] = (proc, port, True)
            import httpx

            port = servers["service, batching on"][1]
            response_size = len(httpx.post(f"http://127.0.0.1:{port}/v1/models/bench:predict",
                                           content=body, headers={"content-type": "application/json"}).content)
            proc, port = start_bare(response_size)
            servers["bare FastAPI endpoint"] = (proc, port, False)
            proc, port = start_bare(response_size, starlette_route=True)
            servers["bare Starlette route"] = (proc, port, False)
            results: dict[str, list[dict]] = {label: [] for label in servers}
            for c in CONCURRENCY:
                runs: dict[str, list[dict]] = {label: [] for label in servers}
                for _ in range(args.rounds):
                    for label, (proc, port, _) in servers.items():
                        runs[label].append(load.measure(port, request, c, args.duration, proc.pid))
                for label in servers:
                    results[label].append(median_run(runs[label]))
        finally:
            load.close()
            for proc, _, _ in servers.values():
                stop(proc)
        direct = direct_ort(model, x, 2.0)

        print(f"response body: {response_size} bytes (the bare endpoint returns the same size)\n")
        print("| server | concurrency | requests/s | p50 ms | p99 ms | errors | server CPU µs/request | RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, rows in results.items():
            for r in rows:
                print(f"| {name} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                      f"{r['p99_ms']:.2f} | {r['errors']} | {r['cpu_us']:.0f} | {r['rss_mb']:.0f} |")
        print("\n| ONNX Runtime in-process | batch | samples/s | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        for r in direct:
            print(f"| {r['provider']} | {r['batch']} | {r['samples_per_s']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")

        on = {r["concurrency"]: r for r in results["service, batching on"]}
        off = {r["concurrency"]: r for r in results["service, batching off"]}
        bare = {r["concurrency"]: r for r in results["bare FastAPI endpoint"]}
        bare_route = {r["concurrency"]: r for r in results["bare Starlette route"]}
        rss = max(r["rss_mb"] for r in [*on.values(), *off.values()])
        print("\nratios:")
        print(f"  service (batching on) / bare endpoint at c=64: {on[64]['rps'] / bare[64]['rps']:.2f} (goal >= 0.60)")
        print(f"  service (batching on) / bare Starlette route at c=64: "
              f"{on[64]['rps'] / bare_route[64]['rps']:.2f}")
        print("  by server CPU per request at c=64 (the throughput ratio a CPU-bound server reaches "
              "on an otherwise idle machine):")
        print(f"    bare endpoint / service: {bare[64]['cpu_us'] / on[64]['cpu_us']:.2f} (goal >= 0.60); "
              f"bare Starlette route / service: {bare_route[64]['cpu_us'] / on[64]['cpu_us']:.2f}; "
              f"batching off / on: {off[64]['cpu_us'] / on[64]['cpu_us']:.2f}")
        for c in CONCURRENCY:
            print(f"  batching on / off at c={c}: {on[c]['rps'] / off[c]['rps']:.2f}")
        print(f"  service at c=64 / direct ORT batch-1 calls: {on[64]['rps'] / direct[0]['samples_per_s']:.2f}")
        print(f"service RSS under load (one worker): {rss:.0f} MB (goal < 300 MB)")
        print(f"total time: {time.perf_counter() - started:.0f}s")
        if args.json:
            args.json.write_text(json.dumps({"model": source, "results": results, "direct": direct,
                                             "response_bytes": response_size, "rss_mb": rss}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
