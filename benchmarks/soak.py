"""Soak: mixed good, malformed and hostile traffic against the real service while model
versions keep being published, some of them broken.

The service (``hydra-serve``, one uvicorn worker, default settings) runs as a subprocess on
127.0.0.1 over a temporary repository of small contract models (tests/app/contract_models.py,
built without training). For ``--minutes`` minutes, ``--concurrency`` clients send a weighted
mix of requests (valid V1/V2 predictions, huge and non-finite numbers, duplicate outputs,
unicode version ids, bad JSON, oversized bodies, text/plain bodies, oversized headers, wrong
shapes, unknown models) while a publisher adds a version every ``--publish-every`` seconds,
cycling through: a good version by
atomic folder rename, a corrupt file, a good file copied into place byte by byte without a
rename, and another good one; only the newest four versions are kept (older folders are
deleted, so unloading is exercised too).

Recorded: responses by status and request kind, every 5xx with its request, every 200 whose
JSON holds a non-finite number, the server's RSS, and latency per minute. Goals: no 5xx, RSS
growth under 5% after the first minute (warm-up), every response finite.

    .venv/bin/python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "app"))

MODEL = "digits"


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    kind: str
    method: str
    path: str
    body: bytes | None
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


def _v2(rows: np.ndarray, outputs: list[str] | None = None, version: str | None = None) -> tuple[str, bytes]:
    path = f"/v2/models/{MODEL}/infer" if version is None else f"/v2/models/{MODEL}/versions/{version}/infer"
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                        "data": rows.ravel().tolist()}]}
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return path, json.dumps(body).encode()


class Traffic:
    """Weighted request kinds; inputs are held-out digits and far-away noise."""

    def __init__(self, digits: np.ndarray, far: np.ndarray, max_body: int, seed: int) -> None:
        self.digits, self.far, self.max_body = digits, far, max_body
        self.rng = random.Random(seed)
        self.versions: list[int] = [1]
        self.kinds = [
            ("v1 good", 30), ("v2 good", 20), ("v2 good, version", 8), ("v1 ood", 6),
            ("huge floats", 5), ("non-finite tokens", 4), ("duplicate outputs", 4),
            ("unicode version", 4), ("bad json", 5), ("wrong shape", 4), ("unknown model", 3),
            ("not json", 2), ("oversized body", 1), ("metadata", 2), ("health", 2),
            ("text/plain body", 1), ("oversized headers", 1),
        ]

    def _rows(self, source: np.ndarray) -> np.ndarray:
        n = self.rng.randint(1, 8)
        return source[[self.rng.randrange(len(source)) for _ in range(n)]]

    def next(self) -> Probe:
        kind = self.rng.choices([k for k, _ in self.kinds], weights=[w for _, w in self.kinds])[0]
        rows = self._rows(self.digits)
        v1 = f"/v1/models/{MODEL}:predict"
        if kind == "v1 good":
            return Probe(kind, "POST", v1, json.dumps({"instances": rows.tolist()}).encode())
        if kind == "v1 ood":
            return Probe(kind, "POST", v1, json.dumps({"instances": self._rows(self.far).tolist()}).encode())
        if kind == "v2 good":
            return Probe(kind, "POST", *_v2(rows))
        if kind == "v2 good, version":
            return Probe(kind, "POST", *_v2(rows, version=str(self.rng.choice(self.versions))))
        if kind == "huge floats":
            x = rows.astype(np.float64)
            x[0, self.rng.randrange(64)] = self.rng.choice([3.4e38, 1e39, -1e300, 1.7e308, 1e30])
            return Probe(kind, "POST", v1, json.dumps({"instances": x.tolist()}).encode())
        if kind == "non-finite tokens":
            text = json.dumps({"instances": rows.tolist()})
            token = self.rng.choice(["NaN", "Infinity", "-Infinity", "1e999"])
            return Probe(kind, "POST", v1, text.replace("0.0", token, 1).encode())
        if kind == "duplicate outputs":
            return Probe(kind, "POST", *_v2(rows, outputs=["mean_probs", "mean_probs", "model_uncertainty"]))
        if kind == "unicode version":
            version = self.rng.choice(["\u0661", "\u00b2", "\uff11", "1\u200b", "\U0001d7d9"])
            path, body = _v2(rows)
            return Probe(kind, "POST", f"/v2/models/{MODEL}/versions/{version}/infer", body)
        if kind == "bad json":
            text = json.dumps({"instances": rows.tolist()})
            return Probe(kind, "POST", v1, text[: self.rng.randrange(1, len(text))].encode())
        if kind == "wrong shape":
            return Probe(kind, "POST", v1, json.dumps({"instances": [[1.0] * self.rng.randint(1, 63)]}).encode())
        if kind == "unknown model":
            return Probe(kind, "POST", "/v1/models/nope:predict", json.dumps({"instances": rows.tolist()}).encode())
        if kind == "not json":
            return Probe(kind, "POST", v1, b"instances=1,2,3", "application/x-www-form-urlencoded")
        if kind == "text/plain body":  # what a web page can post cross-site: 415
            return Probe(kind, "POST", v1, json.dumps({"instances": rows.tolist()}).encode(), "text/plain")
        if kind == "oversized headers":  # past HYDRA_MAX_HEADER_BYTES: 431, connection closed
            return Probe(kind, "GET", "/v2/health/ready", None, headers={"X-Big": "a" * 64 * 1024})
        if kind == "oversized body":
            return Probe(kind, "POST", v1, b'{"instances": [' + b"1.0," * (self.max_body // 4 + 10) + b"1.0]}")
        if kind == "metadata":
            return Probe(kind, "GET", f"/v2/models/{MODEL}", None)
        return Probe(kind, "GET", "/v2/health/ready", None)


def non_finite(value: Any) -> bool:
    """Any NaN or infinity anywhere in a parsed JSON value (json.loads accepts those tokens)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    return False


@dataclass
class Record:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    by_minute: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    non_finite: list[str] = field(default_factory=list)


async def client(url: str, traffic: Traffic, record: Record, start: float, stop: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        while time.monotonic() < stop:
            probe = traffic.next()
            t0 = time.monotonic()
            try:
                headers = {"Content-Type": probe.content_type} if probe.body else {}
                r = await http.request(probe.method, probe.path, content=probe.body,
                                       headers={**headers, **(probe.headers or {})})
                status, text = r.status_code, r.text
            except httpx.HTTPError as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            elapsed = time.monotonic() - t0
            minute = int((t0 - start) // 60)
            record.statuses[(probe.kind, status)] += 1
            record.by_minute[minute][f"{status // 100}xx" if status else "conn"] += 1
            if probe.kind.endswith("good") or probe.kind.endswith("version"):
                record.latencies[minute].append(elapsed)
            if status >= 500 or status == 0:
                record.failures.append(f"{probe.kind} {probe.method} {probe.path} -> {status}: {text[:200]}")
            elif status == 200 and text:
                try:
                    parsed = json.loads(text)
                except ValueError:
                    record.non_finite.append(f"{probe.kind}: 200 with a body that is not JSON: {text[:100]}")
                    continue
                if non_finite(parsed):
                    record.non_finite.append(f"{probe.kind} {probe.path}: {text[:200]}")


# -- publishing -----------------------------------------------------------------------------


class Publisher(threading.Thread):
    """A new version every ``every`` s: good (atomic), corrupt, slow in-place copy, good."""

    def __init__(self, root: Path, models: list[bytes], every: float, stop: threading.Event,
                 keep: int = 4) -> None:
        super().__init__(daemon=True)
        self.root, self.models, self.every, self.stop_event = root, models, every, stop
        self.keep = keep
        self.log: list[str] = []

    def run(self) -> None:
        version, cycle = 1, ("good", "corrupt", "slow copy", "good")
        t0 = time.monotonic()
        while not self.stop_event.wait(self.every):
            version += 1
            kind = cycle[(version - 2) % len(cycle)]
            data = self.models[version % len(self.models)]
            folder = self.root / MODEL / str(version)
            if kind == "slow copy":
                folder.mkdir()
                with (folder / "model.onnx").open("wb") as f:  # in place, byte by byte
                    for i in range(len(data)):
                        f.write(data[i : i + 1])
                        if i % 256 == 0:
                            f.flush()
                            time.sleep(0.05)  # about 8 s for these models
            else:
                staging = self.root / MODEL / f".staging-{version}"
                staging.mkdir()
                payload = data if kind == "good" else data[: len(data) // 3] + os.urandom(512)
                (staging / "model.onnx").write_bytes(payload)
                os.rename(staging, folder)
            self.log.append(f"{time.monotonic() - t0:6.0f} s: version {version} published ({kind})")
            existing = sorted(int(p.name) for p in (self.root / MODEL).iterdir() if p.name.isdigit())
            for old in existing[: -self.keep]:
                shutil.rmtree(self.root / MODEL / str(old), ignore_errors=True)


# -- the run ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--publish-every", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import contract_models as cm

    split = cm.digits_split()
    models = [cm.build_classifier(split["train_x"], split["train_y"], split["calib_x"], seed=s).data
              for s in (0, 7)]
    work = Path(tempfile.mkdtemp(prefix="hydra-soak-"))
    root = work / "models"
    cm.write_version(root, MODEL, 1, models[1])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"HYDRA_REPOSITORY": str(root), "HYDRA_PORT": str(port), "HYDRA_HOST": "127.0.0.1",
                "HYDRA_PROVIDERS": "CPUExecutionProvider", "HYDRA_LOG_LEVEL": "WARNING"})
    log_path = work / "service.log"
    max_body = 4 * 1024 * 1024
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-c", "from app.__main__ import main; main()"],
                                  env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start; log: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        proc = psutil.Process(server.pid)
        traffic = Traffic(np.asarray(split["test_x"]), cm.far_inputs(400), max_body, args.seed)
        record = Record()
        stop_publishing = threading.Event()
        publisher = Publisher(root, models, args.publish_every, stop_publishing)
        rss: list[tuple[float, float]] = []
        start = time.monotonic()
        stop = start + args.minutes * 60

        served: list[tuple[float, str]] = []

        def sample_rss() -> None:
            while time.monotonic() < stop:
                rss.append((time.monotonic() - start, proc.memory_info().rss / 2**20))
                try:
                    versions = httpx.get(f"{url}/v2/models/{MODEL}", timeout=5).json()["versions"]
                    served.append((time.monotonic() - start, ",".join(versions)))
                    # Clients address the versions the service lists (a client asking for a
                    # version still being published gets 503 + Retry-After, by design).
                    traffic.versions = [int(v) for v in versions]
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                time.sleep(2)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        publisher.start()
        sampler.start()

        async def run_clients() -> None:
            await asyncio.gather(*(client(url, traffic, record, start, stop) for _ in range(args.concurrency)))

        asyncio.run(run_clients())
        stop_publishing.set()
        publisher.join(30)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    report(args, record, rss, served, publisher.log, metrics, log_path.read_text())
    shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, record: Record, rss: list[tuple[float, float]],
           served: list[tuple[float, str]], published: list[str], metrics: str, log: str) -> None:
    total = sum(record.statuses.values())
    print(f"soak: {args.minutes:g} min, concurrency {args.concurrency}, a version every "
          f"{args.publish_every:g} s; {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print()
    print("| minute | requests | 2xx | 4xx | 5xx | no answer | valid predictions p50 / p99 (ms) | server RSS (MiB) | versions served (end of minute) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for minute in sorted(record.by_minute):
        c = record.by_minute[minute]
        lat = np.asarray(record.latencies[minute]) * 1000
        mem = [m for t, m in rss if minute * 60 <= t < (minute + 1) * 60]
        p = f"{np.percentile(lat, 50):.0f} / {np.percentile(lat, 99):.0f}" if lat.size else "-"
        mem_text = f"{max(mem):.0f}" if mem else "-"
        seen = [v for t, v in served if t < (minute + 1) * 60]
        print(f"| {minute + 1} | {sum(c.values())} | {c['2xx']} | {c['4xx']} | {c['5xx']} | {c['conn']} | "
              f"{p} | {mem_text} | {seen[-1] if seen else '-'} |")
    print()
    print("| request kind | statuses (count) |")
    print("|---|---|")
    kinds = sorted({k for k, _ in record.statuses})
    for kind in kinds:
        statuses = ", ".join(f"{s}: {n}" for (k, s), n in sorted(record.statuses.items()) if k == kind)
        print(f"| {kind} | {statuses} |")
    fivexx = sum(n for (_, s), n in record.statuses.items() if s >= 500 or s == 0)
    warm_up_s = min(60.0, args.minutes * 60 * 0.2)
    warm = [m for t, m in rss if t >= warm_up_s]
    last = [m for t, m in rss if t >= rss[-1][0] - 60]
    growth = (float(np.mean(last)) / warm[0] - 1) if len(warm) > 1 else float("nan")
    refused = log.count("refused model")
    print()
    print(f"requests: {total}; 5xx or no answer: {fivexx}; 200 answers with a non-finite number: "
          f"{len(record.non_finite)}")
    print(f"server RSS: {rss[0][1]:.0f} MiB at start, {warm[0] if warm else float('nan'):.0f} MiB after "
          f"{warm_up_s:.0f} s of warm-up, {rss[-1][1]:.0f} MiB at the end; growth after warm-up (the last "
          f"minute's mean against the first sample after warm-up): {growth:+.1%}")
    print(f"versions: {len(published)} published; the service logged {refused} refusals "
          f"(hydra_model_load_failures_total {_metric(metrics, 'hydra_model_load_failures_total')})")
    for line in published:
        print(f"  {line}")
    print(f"goals: 0 5xx {'met' if fivexx == 0 else 'MISSED'}; every response finite "
          f"{'met' if not record.non_finite else 'MISSED'}; RSS growth < 5% "
          f"{'met' if growth < 0.05 else 'MISSED'}")
    for line in sorted(set(record.failures))[:30]:
        print(f"  5xx: {line}")
    for line in record.non_finite[:10]:
        print(f"  non-finite: {line}")


def _metric(text: str, name: str) -> str:
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name)]
    return ", ".join(values) or "0"


if __name__ == "__main__":
    main()
