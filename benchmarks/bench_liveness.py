"""Liveness under junk: does parsing maximum-size bodies stall other requests?

Starts the service (``python -m app``: uvicorn, one worker, on 127.0.0.1) serving the contract
test model of tests/app/contract_models.py, then measures the latency of
``GET /v2/health/live`` (one probe every 10 ms) twice: on an idle server, and while several
client processes keep sending maximum-size (HYDRA_MAX_BODY_BYTES, 4 MiB by default) junk
bodies to both inference endpoints, bodies that must all be refused. Prints p50/p99/max of
the probe, the probes that failed, and the status codes the junk got.

    .venv/bin/python benchmarks/bench_liveness.py                  # about 30 s
    .venv/bin/python benchmarks/bench_liveness.py --clients 4 --seconds 10
    .venv/bin/python benchmarks/bench_liveness.py --source /tmp/old   # another checkout's app/

The goal is a p99 under 50 ms with 4 junk clients.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench_service import _free_port, _wait_http  # same folder: the servers start alike

ROOT = Path(__file__).resolve().parents[1]
MAX_BODY = 4 * 1024 * 1024


def junk_bodies(limit: int = MAX_BODY) -> dict[str, bytes]:
    """Bodies of (almost) exactly ``limit`` bytes that no valid request looks like."""
    n = limit - 64
    return {
        "empty rows": b'{"instances": [' + b"[]," * (n // 3) + b"[]]}",
        "empty objects": b'{"instances": [[0], ' + b"{}," * (n // 3) + b"{}]}",
        "zeros in one instance": b'{"instances": [[' + b"0," * (n // 2) + b"0]]}",
        "floats in an extra field": b'{"instances": [[1]], "x": [' + b"0.5," * (n // 4) + b"0]}",
        "deep nesting": b'{"instances": ' + b"[" * n,
        "empty strings": b'{"instances": [[' + b'"",' * (n // 3) + b'""]]}',
    }


def build_repository(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "app"))
    import contract_models as cm

    split = cm.digits_split()
    built = cm.build_classifier(split["train_x"], split["train_y"], split["calib_x"])
    repo = tmp / "models"
    cm.write_version(repo, "digits", 1, built.data)
    return repo


def start_service(repo: Path, source: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "HYDRA_REPOSITORY": str(repo),
        "HYDRA_PORT": str(port),
        "HYDRA_PROVIDERS": "CPUExecutionProvider",
        "HYDRA_POLL_INTERVAL_S": "0.5",
        "HYDRA_LOG_LEVEL": "ERROR",
    }
    proc = subprocess.Popen([sys.executable, "-m", "app"], env=env, cwd=source,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_http(port, "/v2/health/ready")
    return proc, url


def junk_client(url: str, seconds: float, seed: int, out: mp.Queue) -> None:
    """Sends junk until the time is up; reports (kind, status) counts."""
    import httpx

    bodies = list(junk_bodies().items())
    paths = ["/v1/models/digits:predict", "/v2/models/digits/infer"]
    counts: Counter[tuple[str, str]] = Counter()
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as client:
        while time.monotonic() < deadline:
            kind, body = bodies[int(rng.integers(len(bodies)))]
            path = paths[int(rng.integers(2))]
            try:
                status = str(client.post(url + path, content=body).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            counts[(kind, status)] += 1
    out.put(dict(counts))


def probe(url: str, seconds: float, every_s: float = 0.01) -> tuple[list[float], int]:
    """Latencies (ms) of GET /v2/health/live, one every ``every_s``; and failures."""
    import httpx

    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        client.get(url + "/v2/health/live")  # connect outside the measurement
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = client.get(url + "/v2/health/live").status_code == 200
            except httpx.HTTPError:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000.0
            if ok:
                latencies.append(elapsed)
            else:
                failures += 1
            time.sleep(max(0.0, every_s - elapsed / 1000.0))
    return latencies, failures


def _row(name: str, latencies: list[float], failures: int) -> str:
    a = np.asarray(latencies)
    return (f"| {name} | {len(a)} | {np.percentile(a, 50):.2f} | {np.percentile(a, 99):.2f} | "
            f"{a.max():.2f} | {failures} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4, help="concurrent junk client processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--source", type=Path, default=ROOT, help="folder holding the app/ to serve")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = build_repository(Path(tmp))
        proc, url = start_service(repo, args.source.resolve())
        try:
            idle, idle_failed = probe(url, args.seconds)
            ctx = mp.get_context("spawn")
            results: mp.Queue = ctx.Queue()
            clients = [ctx.Process(target=junk_client, args=(url, args.seconds + 1.0, i, results))
                       for i in range(args.clients)]
            for c in clients:
                c.start()
            time.sleep(1.0)  # every client has a body in flight
            loaded, loaded_failed = probe(url, args.seconds)
            counts: Counter[tuple[str, str]] = Counter()
            for _ in clients:
                counts.update(results.get(timeout=120))
            for c in clients:
                c.join()
        finally:
            proc.terminate()
            proc.wait(15)

    print(f"service: {args.source.resolve()}/app, {args.clients} junk clients of {MAX_BODY} bytes each, "
          f"{args.seconds:g} s per phase, probe every 10 ms\n")
    print("| phase | probes | p50 ms | p99 ms | max ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("idle", idle, idle_failed))
    print(_row(f"{args.clients} clients sending junk", loaded, loaded_failed))
    print("\n| junk body | status | count |")
    print("|---|---|---:|")
    for (kind, status), n in sorted(counts.items()):
        print(f"| {kind} | {status} | {n} |")
    p99 = float(np.percentile(loaded, 99))
    print(f"\ngoal: p99 under 50 ms under junk: {'met' if p99 < 50.0 else 'NOT met'} ({p99:.1f} ms)")


if __name__ == "__main__":
    main()
