"""The real-scale benchmark: a ResNet Hydra trained, exported and served, on one GPU.

Prepared for a machine with one CUDA GPU (under 4 minutes there); it runs unchanged, at
smaller sizes, on the CPU provider, which is how it is tested:

    python benchmarks/bench_gpu.py                    # CUDA when present, else CPU sizes
    python benchmarks/bench_gpu.py --device cpu       # the CPU goal: ResNet-18 bodies, batch 256
    python benchmarks/bench_gpu.py --quick            # small sizes, about a minute on 2 cores
    python benchmarks/bench_gpu.py --device cpu --parts onnx   # only the Hydra vs ensemble part

On the GPU machine (its own CUDA torch, no network) run it from the source tree, with
onnxruntime-gpu and the service's wheels on PYTHONPATH; the client side uses the standard
library only.

It prints one Markdown table per part, for BENCHMARKS.md, and writes them as JSON (--json):

1. training: ``hydra-train run`` on ``configs/digits_resnet.toml`` (shortened), its training
   samples/s per stage from the report, its export parity, test accuracy of Hydra and ensemble;
2. Hydra vs ensemble in ONNX Runtime: a ResNet body (ResNet-18 layout unless --quick) with M
   linear heads, and with M copies of the last residual block, against M full members, at
   several batch sizes, timed side by side in interleaved rounds;
3. the service (``python -m app`` on the trained model) at concurrency 1, 8 and 64 against
   ONNX Runtime called directly at the matching batch size; on CUDA also the service on the
   CPU provider at concurrency 1 (the one-instance latency goal);
4. parity: the largest difference between the active provider and the CPU provider per
   output, as the service measured it when it loaded the model (TF32 off unless set);
5. members given as files on the device: M ResNet members (the part 2 body) saved as ONNX
   files and as ``torch.export`` programs, loaded as ``[ensemble] models`` are on the training
   device (ONNX files on ONNX Runtime's CUDA provider there), and the disagreement ascent run
   through each (ONNX: their graphs translated to torch) on the same batch: samples/s per
   format, where outputs and gradients ran, and how far the two formats' moved inputs and
   teacher outputs agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_service as bs  # noqa: E402
from train_run import train_and_publish  # noqa: E402

from contract.onnxrt import session_options  # noqa: E402

IMAGE = (3, 32, 32)
HEADS = ("linear", "block")
CLASSES = 10

# Per device: training shortening, the ONNX comparison's body and batches, the service load.
PLANS = {
    "cuda": {
        "train": ["ensemble.members=5", "ensemble.optim.epochs=6", "distill.phase1.epochs=4",
                  "distill.phase2.epochs=6"],
        "resnet": {"channels": (64, 128, 256, 512), "blocks": (2, 2, 2, 2)}, "members": 10, "ascent_batch": 512,
        "batches": (1, 64, 512), "rounds": 3, "seconds": 1.0,
        "concurrency": (1, 8, 64), "duration": 2.0,
    },
    "cpu": {
        "train": ["ensemble.members=3", "ensemble.optim.epochs=2", "distill.phase1.epochs=1",
                  "distill.phase2.epochs=2", "distill.transfer.copies=1"],
        "resnet": {"channels": (64, 128, 256, 512), "blocks": (2, 2, 2, 2)}, "members": 10, "ascent_batch": 32,
        "batches": (1, 64, 256), "rounds": 1, "seconds": 3.0,
        "concurrency": (1, 8, 64), "duration": 2.0,
    },
    "quick": {
        "train": ["ensemble.members=2", "ensemble.optim.epochs=1", "ensemble.optim.min_steps=0",
                  "distill.phase1.epochs=1", "distill.phase2.epochs=1", "distill.transfer.copies=1",
                  "model.channels=[8, 16]", "model.blocks=[1, 2]"],
        "resnet": {"channels": (8, 16), "blocks": (1, 2)}, "members": 3, "ascent_batch": 64,
        "batches": (1, 16), "rounds": 1, "seconds": 0.3,
        "concurrency": (1, 8), "duration": 0.5,
    },
}


def providers_for(device: str) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def provider_options(device: str) -> list[str | tuple[str, dict[str, str]]]:
    # TF32 off, as the service runs it: the comparison is between the same numerics.
    return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"] if device == "cuda" \
        else ["CPUExecutionProvider"]


# -- 1. training ----------------------------------------------------------------------------------

def train(device: str, overrides: list[str], tmp: Path) -> tuple[Path, dict]:
    started = time.perf_counter()
    version, report = train_and_publish(ROOT / "configs" / "digits_resnet.toml", tmp / "models", tmp / "runs",
                                        [f'device="{device}"', *overrides])
    parity = report["export"]["model.onnx"]["max_abs_diff"]
    return version, {
        "wall_s": round(time.perf_counter() - started, 1),
        "device": report["device"],
        "samples_per_s": report["training_samples_per_s"],
        "accuracy": {k: report["test"][k]["accuracy"] for k in ("ensemble", "hydra")},
        "export_parity": max(max(v.values(), default=0.0) for v in parity.values()),
    }


# -- 2. Hydra vs ensemble in ONNX Runtime -----------------------------------------------------------

def export_models(plan: dict, tmp: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """An ensemble of M full members and a Hydra per head type (linear, block), random
    weights, as ONNX files; parameter counts."""
    import torch

    from training.config import ModelConfig
    from training.networks import Ensemble, HydraNet, NetSpec, count_parameters

    spec = NetSpec("classification", IMAGE, CLASSES)
    m = plan["members"]
    body = dict(body="resnet", image_shape=IMAGE, **plan["resnet"])
    torch.manual_seed(0)
    nets = {"ensemble": Ensemble([HydraNet(ModelConfig(head="linear", **body), spec, 1) for _ in range(m)])}
    for head in HEADS:
        nets[head] = HydraNet(ModelConfig(head=head, **body), spec, m)
    paths = {}
    for name, net in nets.items():
        paths[name] = tmp / f"{name}.onnx"
        program = torch.onnx.export(net.eval(), (torch.zeros(2, *IMAGE),), input_names=["input"],
                                    output_names=["heads"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                    dynamo=True, external_data=False, verbose=False)
        program.save(str(paths[name]))  # type: ignore[union-attr]
    params = {name: count_parameters(net) for name, net in nets.items()}
    params["member"] = count_parameters(nets["ensemble"].members[0])
    return paths, params


def samples_per_s(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> float:
    sess.run(None, {"input": x})
    calls, started = 0, time.perf_counter()
    while True:
        sess.run(None, {"input": x})
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 3:
            return calls * x.shape[0] / elapsed


def hydra_vs_ensemble(device: str, plan: dict, tmp: Path) -> list[dict]:
    paths, params = export_models(plan, tmp)
    sessions = {name: ort.InferenceSession(str(path), session_options(), providers=provider_options(device))
                for name, path in paths.items()}
    rows = []
    rng = np.random.default_rng(0)
    for batch in plan["batches"]:
        x = rng.uniform(0, 16, size=(batch, *IMAGE)).astype(np.float32)
        speed: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(plan["rounds"]):  # interleaved: noise hits all alike
            for name, sess in sessions.items():
                speed[name].append(samples_per_s(sess, x, plan["seconds"]))
        ensemble = float(np.median(speed["ensemble"]))
        for head in HEADS:
            hydra = float(np.median(speed[head]))
            rows.append({"head": head, "batch": batch, "members": plan["members"],
                         "hydra_samples_per_s": round(hydra, 1), "ensemble_samples_per_s": round(ensemble, 1),
                         "ratio": round(hydra / ensemble, 2),
                         "params": {"hydra": params[head], "ensemble": params["ensemble"], "member": params["member"]},
                         "provider": sessions[head].get_providers()[0]})
            print(f"  {head} heads, batch {batch}: Hydra {hydra:.0f}/s, ensemble {ensemble:.0f}/s, "
                  f"{hydra / ensemble:.2f}x", file=sys.stderr)
    return sorted(rows, key=lambda r: (HEADS.index(r["head"]), r["batch"]))


# -- 3 and 4. the service -------------------------------------------------------------------------
# Only the standard library on the client side (the GPU machine has neither httpx nor psutil).

def _get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def start_service(repo: Path, providers: list[str]) -> tuple[subprocess.Popen, int]:
    port = bs._free_port()
    env = {**os.environ, "HYDRA_REPOSITORY": str(repo), "HYDRA_PORT": str(port), "HYDRA_QUEUE_SIZE": "1024",
           "HYDRA_PROVIDERS": ",".join(providers), "HYDRA_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "app"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    bs.stop(proc)
    raise SystemExit("the service was not ready within 180 s")


def measure(load: bs.LoadGenerator, port: int, request: bytes, concurrency: int, duration: float) -> dict:
    """Requests/s, p50/p99 latency and errors of ``concurrency`` keep-alive clients."""
    load.jobs.put((port, request, concurrency, 0.3, duration))
    latencies, statuses = load.results.get(timeout=duration + 120)
    statuses.pop(-1, None)  # the count of answered requests, not a status
    lat = np.asarray(latencies) * 1000.0
    return {"concurrency": concurrency, "rps": len(lat) / duration,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "errors": sum(n for code, n in statuses.items() if code != 200)}


def serve_and_measure(version: Path, device: str, plan: dict, tmp: Path) -> dict:
    repo = tmp / "serve"
    (repo / "bench").mkdir(parents=True)
    os.symlink(version, repo / "bench" / "1")
    x = np.random.default_rng(1).uniform(0, 16, size=(64, *IMAGE)).astype(np.float32)
    body = json.dumps({"instances": [x[0].tolist()]}).encode()
    request = bs._request_bytes("/v1/models/bench:predict", body)
    load = bs.LoadGenerator()
    result: dict = {"service": [], "direct": []}
    try:
        runs = [(device, plan["concurrency"])]
        if device == "cuda":
            runs.append(("cpu", (1,)))
        for run_device, levels in runs:
            proc, port = start_service(repo, providers_for(run_device))
            try:
                meta = _get_json(port, "/v1/models/bench")
                if run_device == device:
                    result["provider"] = meta.get("provider")
                    result["parity_with_cpu"] = meta.get("parity_with_cpu")
                for c in levels:
                    row = measure(load, port, request, c, plan["duration"])
                    row.update(provider=meta.get("provider"))
                    result["service"].append({k: (round(v, 3) if isinstance(v, float) else v)
                                              for k, v in row.items()})
            finally:
                bs.stop(proc)
    finally:
        load.close()
    sess = ort.InferenceSession(str(version / "model.onnx"), session_options(), providers=provider_options(device))
    for batch in plan["concurrency"]:
        xb = np.ascontiguousarray(np.resize(x, (batch, *IMAGE)))
        result["direct"].append({"batch": batch, "samples_per_s": round(samples_per_s(sess, xb, plan["duration"]), 1),
                                 "provider": sess.get_providers()[0]})
    return result


# -- report ---------------------------------------------------------------------------------------

# -- 5. members given as files, on the device ------------------------------------------------------

def members_on_device(device: str, plan: dict, tmp: Path) -> dict:
    """The same M members as ONNX files and as torch.export programs, loaded on ``device`` as
    a run loads ``[ensemble] models``; the ascent (3 steps of 0.1) through each on one batch."""
    import torch

    from training.config import ModelConfig, TransferConfig
    from training.data import Dataset, Split
    from training.device import Runtime
    from training.members import OnnxMember, load_member_files
    from training.networks import HydraNet, NetSpec
    from training.transfer import disagreement_ascent

    m, n = plan["members"], plan["ascent_batch"]
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 255, size=(max(n, 32), *IMAGE)).astype(np.float32)
    split = Split(X, rng.integers(0, CLASSES, size=len(X)))
    data = Dataset(name="members", task="classification", feature_shape=IMAGE,
                   class_labels=tuple(map(str, range(CLASSES))), train=split, calibration=split, test=split)
    spec = NetSpec("classification", IMAGE, CLASSES)

    class Logits(torch.nn.Module):
        """A member as another code base saves it: raw images in, logits [B, C] out."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[:, 0]  # the network's [B, 1, C]

    def gradient_device(f: object) -> str:
        if isinstance(f, OnnxMember):
            return str(next(f.graph.buffers()).device) if f.graph is not None else "none"
        return str(getattr(f, "device", "none"))

    torch.manual_seed(0)
    files: dict[str, list[str]] = {"onnx": [], "torch.export": []}
    batch = {"x": {0: torch.export.Dim("batch")}}
    for i in range(m):
        net = HydraNet(ModelConfig(head="linear", body="resnet", image_shape=IMAGE, **plan["resnet"]), spec, 1)
        net.set_stats(X.reshape(len(X), -1).mean(0), X.reshape(len(X), -1).std(0) + 1.0)
        module = Logits(net).eval()
        example = (torch.zeros(2, *IMAGE),)
        program = torch.onnx.export(module, example, input_names=["x"], dynamic_shapes=batch, dynamo=True,
                                    external_data=False, verbose=False)
        program.save(str(tmp / f"m{i}.onnx"))  # type: ignore[union-attr]
        torch.export.save(torch.export.export(module, example, dynamic_shapes=batch), str(tmp / f"m{i}.pt2"))
        files["onnx"].append(str(tmp / f"m{i}.onnx"))
        files["torch.export"].append(str(tmp / f"m{i}.pt2"))
    rt = Runtime(torch.device(device))
    cfg = TransferConfig(perturb_steps=3, perturb_step_size=0.1)
    out: dict = {"members": m, "batch": n, "formats": {}}
    moved, labels = {}, {}
    for fmt, paths in files.items():
        ens = load_member_files(tuple(paths), data, m, "logits", device=rt.device)
        z = torch.as_tensor((X[:n].reshape(n, -1) - ens.x_mean) / ens.x_std, dtype=torch.float32)
        disagreement_ascent(ens, z[:2], cfg, rt)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        moved[fmt] = disagreement_ascent(ens, z, cfg, rt)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        with torch.no_grad():
            labels[fmt] = ens(torch.as_tensor(X[:n]).to(rt.device)).cpu()
        out["formats"][fmt] = {
            "ascent_samples_per_s": round(n / seconds, 1),
            "runs_on": sorted({f["runs_on"] for f in ens.summary()}),
            "gradients": sorted({f["gradients"].split(" (")[0] for f in ens.summary()}),
            "gradient_device": sorted({gradient_device(f) for f in ens.files}),
        }
    out["moved_inputs_equal_share"] = round(float(torch.isclose(
        moved["onnx"], moved["torch.export"], rtol=0, atol=1e-4).float().mean()), 4)
    out["teacher_outputs_max_abs_diff"] = float((labels["onnx"] - labels["torch.export"]).abs().max())
    return out


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(result: dict) -> str:
    out = [f"Machine: {result['machine']}; device {result['device']}"]
    tr = result.get("training")
    out += [] if tr is None else ["", "Training (configs/digits_resnet.toml, shortened):", "",
            table(["stage", "samples/s"], [[k, v] for k, v in tr["samples_per_s"].items()]),
            "", f"wall {tr['wall_s']} s; test accuracy ensemble {tr['accuracy']['ensemble']:.4f}, "
            f"Hydra {tr['accuracy']['hydra']:.4f}; export parity {tr['export_parity']:.1e}"]
    rows = result.get("onnx")
    if rows:
        p = rows[0]["params"]
        out += ["", f"Hydra vs ensemble in ONNX Runtime (ResNet body {result['resnet']}, M = {rows[0]['members']}, "
                f"{rows[0]['provider']}; parameters: member {p['member']:,}):", "",
                table(["heads", "Hydra parameters", "batch", "Hydra samples/s", "ensemble samples/s", "ratio",
                       "ratio / M"],
                      [[r["head"], f"{r['params']['hydra']:,}", r["batch"], r["hydra_samples_per_s"],
                        r["ensemble_samples_per_s"], r["ratio"], round(r["ratio"] / r["members"], 2)] for r in rows])]
    mb = result.get("members")
    if mb:
        out += ["", f"Members given as files on {result['device']} ({mb['members']} members, ResNet body {result['resnet']}; "
                f"disagreement ascent, 3 steps, batch {mb['batch']}):", "",
                table(["format", "outputs ran on", "ascent samples/s", "gradients", "gradients ran on"],
                      [[fmt, ", ".join(r["runs_on"]), r["ascent_samples_per_s"], ", ".join(r["gradients"]),
                        ", ".join(r["gradient_device"])] for fmt, r in mb["formats"].items()]),
                "", f"ONNX against torch.export: moved inputs equal (1e-4) for a share of "
                f"{mb['moved_inputs_equal_share']}; teacher outputs differ by at most "
                f"{mb['teacher_outputs_max_abs_diff']:.1e}"]
    sv = result.get("service")
    if sv is None:
        return "\n".join(out)
    direct = {d["batch"]: d["samples_per_s"] for d in sv["direct"]}
    out += ["", "Service (V1, one instance per request) vs ONNX Runtime directly at the same batch size:", "",
            table(["provider", "concurrency", "requests/s", "p50 ms", "p99 ms", "errors", "direct samples/s",
                   "service / direct"],
                  [[r["provider"], r["concurrency"], round(r["rps"], 1), round(r["p50_ms"], 2), round(r["p99_ms"], 2),
                    r["errors"], direct.get(r["concurrency"], "-"),
                    round(r["rps"] / direct[r["concurrency"]], 2) if r["provider"] == sv.get("provider")
                    and r["concurrency"] in direct else "-"]
                   for r in sv["service"]])]
    parity = sv.get("parity_with_cpu")
    worst = max(parity.values()) if parity else None
    out += ["", f"Parity with the CPU provider, measured by the service at load ({sv.get('provider')}): " + (
        f"largest |diff| {worst:.1e} over {len(parity)} outputs" if parity else
        "not applicable (the CPU provider is the active one)")]
    return "\n".join(out)


def main() -> int:
    if sys.argv[1:2] == ["--render"]:  # print the tables of a JSON this script wrote
        print(render(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes (the tested path)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--parts", default="train,onnx,service,members",
                        help="comma-separated parts to run: train, onnx, service, members (service needs train)")
    args = parser.parse_args()
    import torch

    # onnxruntime-gpu lists its CUDA provider even where no GPU is: ask torch whether one is.
    cuda = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
    device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not cuda:
        print("no CUDA device (torch) or no CUDA provider (onnxruntime)", file=sys.stderr)
        return 1
    plan = PLANS["quick" if args.quick else device]
    started = time.perf_counter()
    result: dict = {"device": device, "quick": args.quick, "resnet": plan["resnet"],
                    "machine": f"{bs.cpu_name()}, {os.cpu_count()} cores"}
    if device == "cuda":
        result["machine"] += f", {torch.cuda.get_device_name(0)}"
    parts = set(args.parts.split(","))
    if not parts <= {"train", "onnx", "service", "members"} or ("service" in parts and "train" not in parts):
        parser.error(f"--parts: train, onnx, service, members (service needs train), got {args.parts!r}")
    with tempfile.TemporaryDirectory(prefix="hydra-bench-gpu-") as name:
        tmp = Path(name)
        if "train" in parts:
            print("training", file=sys.stderr)
            version, result["training"] = train(device, plan["train"], tmp)
        if "onnx" in parts:
            print("Hydra vs ensemble in ONNX Runtime", file=sys.stderr)
            result["onnx"] = hydra_vs_ensemble(device, plan, tmp)
        if "service" in parts:
            print("the service", file=sys.stderr)
            result["service"] = serve_and_measure(version, device, plan, tmp)
        if "members" in parts:
            print("members given as files", file=sys.stderr)
            result["members"] = members_on_device(device, plan, tmp)
    result["duration_s"] = round(time.perf_counter() - started, 1)
    print(render(result))
    print(f"\n(bench_gpu.py took {result['duration_s']} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
