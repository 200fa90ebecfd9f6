"""The prepared GPU benchmark runs here too, on the CPU provider at small sizes, so that the
script a GPU machine will run is known to work end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_gpu_quick_runs_every_part_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--quick", "--device", "cpu",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    training = result["training"]
    assert training["device"] == "cpu"
    assert set(training["samples_per_s"]) == {"member 1/2", "member 2/2", "hydra phase 1", "hydra phase 2"}
    assert all(v > 0 for v in training["samples_per_s"].values())
    assert training["export_parity"] < 1e-3

    onnx = result["onnx"]
    assert [(r["head"], r["batch"]) for r in onnx] == [("linear", 1), ("linear", 16), ("block", 1), ("block", 16)]
    for row in onnx:
        assert row["ratio"] == pytest.approx(row["hydra_samples_per_s"] / row["ensemble_samples_per_s"], abs=0.01)
        params = row["params"]
        assert params["ensemble"] == 3 * params["member"]  # M full members
        # Linear heads share the whole body; block heads each copy the last residual block.
        assert params["member"] < params["hydra"] < params["ensemble"]

    service = result["service"]
    assert service["provider"] == "CPUExecutionProvider"
    assert service["parity_with_cpu"] is None  # nothing to compare against on the CPU provider
    assert [r["concurrency"] for r in service["service"]] == [1, 8]
    assert all(r["errors"] == 0 and r["rps"] > 0 for r in service["service"])
    assert [d["batch"] for d in service["direct"]] == [1, 8]

    members = result["members"]
    assert members["members"] == 3 and members["batch"] == 64
    formats = members["formats"]
    assert formats["onnx"]["gradients"] == ["ONNX graph translated to torch"]
    assert formats["torch.export"]["gradients"] == ["PyTorch"]
    assert formats["onnx"]["gradient_device"] == formats["torch.export"]["gradient_device"] == ["cpu"]
    assert formats["onnx"]["runs_on"] == ["CPUExecutionProvider"] and formats["torch.export"]["runs_on"] == ["cpu"]
    assert all(f["ascent_samples_per_s"] > 0 for f in formats.values())
    # The same members in both formats: the same labels, and the same ascent but for sign ties.
    assert members["teacher_outputs_max_abs_diff"] < 1e-4
    assert members["moved_inputs_equal_share"] > 0.99

    # The printed tables carry the same figures.
    assert (f"| linear | {onnx[0]['params']['hydra']:,} | 1 | {onnx[0]['hydra_samples_per_s']} | "
            f"{onnx[0]['ensemble_samples_per_s']} |") in done.stdout
    assert "not applicable (the CPU provider is the active one)" in done.stdout
    assert (f"| onnx | CPUExecutionProvider | {formats['onnx']['ascent_samples_per_s']} | ONNX graph translated "
            "to torch | cpu |") in done.stdout
