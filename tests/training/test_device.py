"""Where training runs: the CPU when asked, and two processes under torchrun with the gloo
backend on the CPU training with DDP."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.device import Runtime, setup_runtime, teardown_runtime

ROOT = Path(__file__).resolve().parents[2]


def test_single_process_cpu_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    rt = setup_runtime("cpu")
    assert rt == Runtime(torch.device("cpu"))
    assert rt.is_main and not rt.distributed and not rt.amp
    rt.barrier()  # a no-op with one process
    teardown_runtime(rt)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["materialized", "streamed"])
def test_two_process_ddp_distill(tmp_path: Path, stream: bool) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.cli", "distill", "--config", str(ROOT / "configs" / "tiny.toml"),
           "--set", f'runs_dir="{tmp_path}"', "--set", "device=cpu"]
    if stream:
        cmd += ["--set", "distill.transfer.stream=true", "--set", "distill.loader_workers=1"]
    # A session of its own, so a hang kills torchrun and both workers, not only the launcher.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert "training on cpu (rank 0 of 2)" in stderr
    hydra = torch.load(tmp_path / "tiny" / "hydra.pt", weights_only=False)
    assert hydra["model"]["heads.weights.0"].shape[0] == 3
    assert not list((tmp_path / "tiny").glob("*.partial.pt"))  # finished stages leave no partials
