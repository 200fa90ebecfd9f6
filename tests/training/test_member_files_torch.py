"""Members given as PyTorch files: torch.export programs (.pt2) and state dicts of a registered
architecture (.pt/.pth), checked against the models run directly; bad files refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from training.checkpoints import Checkpoints
from training.config import ModelConfig, RunConfig, load_config
from training.data import DataError
from training.datasets import load_dataset
from training.device import Runtime
from training.members import load_member_files
from training.networks import build_network
from training.teachers import teachers

ROOT = Path(__file__).resolve().parents[2]
CPU = Runtime(torch.device("cpu"))


class Member(nn.Module):
    """A member as another code base writes it: its own scaling, raw features in."""

    def __init__(self, seed: int, features: int = 64, out: int = 10, mode: str = "logits") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, out))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> object:
        z = self.net(x.flatten(1) / 16.0)
        if self.mode == "probabilities":
            return torch.softmax(z, -1)
        if self.mode == "with_features":  # logits first, then something else of another shape
            return z, x.flatten(1)
        if self.mode == "gaussian":  # regression: mean, variance
            return z, nn.functional.softplus(z) + 0.1
        return z


def export(model: nn.Module, path: Path, features: int = 64) -> str:
    example = (torch.randn(2, features),)
    program = torch.export.export(model.eval(), example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return str(path)


def export_onnx(model: nn.Module, path: Path, features: int = 64) -> str:
    program = torch.onnx.export(model.eval(), (torch.randn(2, features),), input_names=["x"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                external_data=False, verbose=False)
    program.save(str(path))  # type: ignore[union-attr]
    return str(path)


def cumsum_member(path: Path, data: Any) -> Path:
    """A linear member with a CumSum over its logits, an operator the torch translation does
    not cover."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(data.feature_shape[0], data.num_classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("CumSum", ["xw", "axis"], ["logits"])], "member",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", W.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", W.shape[1]])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(1), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _with_models(config: RunConfig, paths: list[str], **transfer: object) -> RunConfig:
    return replace(config, ensemble=replace(config.ensemble, models=tuple(paths), members=len(paths)),
                   distill=replace(config.distill, transfer=replace(config.distill.transfer, **transfer)))


def test_pt2_teacher_outputs_are_the_programs_outputs(tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    models = [Member(m) for m in range(3)]
    paths = [export(model, tmp_path / f"m{m}.pt2") for m, model in enumerate(models)]
    config = _with_models(tiny_config, paths, uniform_fraction=0.5)
    taught = teachers(data, config.model, config.ensemble, config.distill, CPU, Checkpoints.of_run(config))
    transfer = taught.transfer
    assert len(transfer) == 2 * len(data.train) + round(0.5 * len(data.train))
    with torch.no_grad():
        for m, model in enumerate(models):
            want = model(torch.as_tensor(transfer.X)).numpy()
            np.testing.assert_allclose(transfer.teacher[:, m], want, rtol=1e-5, atol=1e-5)
    assert transfer.summary["source"] == "member files"
    assert [f["format"] for f in transfer.summary["member_files"]] == ["torch.export"] * 3
    assert transfer.summary["member_files"][0]["parameters"] == 64 * 16 + 16 + 16 * 10 + 10


def test_the_first_output_is_the_logits_and_probabilities_become_log_probabilities(
        tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    x = torch.as_tensor(data.test.X[:20])
    with torch.no_grad():
        want = torch.log_softmax(Member(0)(x), -1)
    tupled = load_member_files((export(Member(0, mode="with_features"), tmp_path / "t.pt2"),), data, 1, "logits")
    np.testing.assert_allclose(torch.log_softmax(tupled(x)[:, 0], -1).numpy(), want.numpy(), atol=1e-5)
    probs = load_member_files((export(Member(0, mode="probabilities"), tmp_path / "p.pt2"),), data, 1,
                              "probabilities")
    # log-probabilities are the logits up to a constant per row: the same softmax, the same scores
    np.testing.assert_allclose(probs(x)[:, 0].numpy(), want.numpy(), atol=1e-5)
    with pytest.raises(DataError, match=r"t.pt2: member outputs are not probabilities"):
        load_member_files((str(tmp_path / "t.pt2"),), data, 1, "probabilities")


def test_regression_members_give_mean_then_variance(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "tiny.toml", [f'runs_dir="{tmp_path / "runs"}"',
                                                          'data.source="diabetes"'])
    data = load_dataset(config.data)
    model = Member(0, features=10, out=1, mode="gaussian")
    ens = load_member_files((export(model, tmp_path / "g.pt2", 10),), data, 1, "logits")
    x = torch.as_tensor(data.test.X[:15])
    with torch.no_grad():
        mean, var = model(x)
    out = ens(x)  # [B, 1, 2, 1]
    np.testing.assert_allclose(out[:, 0, 0].numpy(), mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1].numpy(), var.numpy(), rtol=1e-6)
    # a state dict of this project's regression network gives its own [B, 1, 2, D]
    torch.manual_seed(3)
    net = build_network(config.model, data, 1).eval()
    torch.save(net.state_dict(), tmp_path / "r.pt")
    sd = load_member_files((str(tmp_path / "r.pt"),), data, 1, "logits", config.model)
    with torch.no_grad():
        np.testing.assert_allclose(sd(x).numpy(), net(x).numpy(), rtol=1e-6)


def test_state_dicts_of_a_registered_network_plain_or_under_model(tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    arch = ModelConfig(body="mlp", hidden=(24,), head="mlp", head_hidden=8)
    nets = []
    for m in range(2):
        torch.manual_seed(10 + m)
        nets.append(build_network(arch, data, 1).eval())
    torch.save(nets[0].state_dict(), tmp_path / "plain.pt")
    torch.save({"key": "abc", "model": nets[1].state_dict(), "config": {"name": "x"}}, tmp_path / "ckpt.pth")
    ens = load_member_files((str(tmp_path / "plain.pt"), str(tmp_path / "ckpt.pth")), data, 2, "logits", arch)
    x = torch.as_tensor(data.test.X[:30])
    with torch.no_grad():
        want = torch.cat([n(x) for n in nets], dim=1)
        np.testing.assert_allclose(ens(x).numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    assert [f.parameters for f in ens.files] == [sum(p.numel() for p in n.parameters()) for n in nets]
    # The same files read as another architecture: refused, naming the file and the mismatch.
    with pytest.raises(DataError, match=r"plain.pt: not a state dict of the ensemble.member_model network "
                                        r"\(body 'mlp', head 'mlp'\): shape mismatches body.net.0.weight \[24, 64\] "
                                        r"\(network: \[32, 64\]\)"):
        load_member_files((str(tmp_path / "plain.pt"),), data, 1, "logits", replace(arch, hidden=(32,)))
    with pytest.raises(DataError, match=r"plain.pt: .*\(body 'mlp', head 'linear'\): missing keys heads.weights.0, "
                                        r"heads.biases.0; unexpected keys heads.weights.0, heads.weights.1|"
                                        r"plain.pt: .*head 'linear'.*(unexpected keys|shape mismatches)"):
        load_member_files((str(tmp_path / "plain.pt"),), data, 1, "logits", replace(arch, head="linear"))
    torch.save({"model": {"x_mean": torch.zeros(64)}}, tmp_path / "few.pt")
    with pytest.raises(DataError, match=r"few.pt: .*missing keys x_std, y_mean, y_std and \d+ more"):
        load_member_files((str(tmp_path / "few.pt"),), data, 1, "logits", arch)
    with pytest.raises(DataError, match=r"a state dict of this project's network gives logits"):
        load_member_files((str(tmp_path / "plain.pt"),), data, 1, "probabilities", arch)


def test_bad_torch_member_files_are_refused(tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    good = export(Member(0), tmp_path / "good.pt2")
    nine = export(Member(0, out=9), tmp_path / "nine.pt2")
    with pytest.raises(DataError, match=r"nine.pt2: outputs of shape \[2, 9\] for 2 rows, expected \[2, 10\]"):
        load_member_files((good, nine), data, 2, "logits")
    narrow = export(Member(0, features=10), tmp_path / "narrow.pt2", 10)
    with pytest.raises(DataError, match=r"narrow.pt2: running it on two training rows of shape \[2, 64\] failed"):
        load_member_files((narrow,), data, 1, "logits")
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(DataError, match=r"junk.pt2: not a torch.export program"):
        load_member_files((str(tmp_path / "junk.pt2"),), data, 1, "logits")
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    with pytest.raises(DataError, match=r"junk.pt: not a state dict torch.load can read"):
        load_member_files((str(tmp_path / "junk.pt"),), data, 1, "logits")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match=r"list.pt: expected a state dict \(parameter name -> tensor\)"):
        load_member_files((str(tmp_path / "list.pt"),), data, 1, "logits")
    (tmp_path / "m.h5").write_bytes(b"")
    with pytest.raises(DataError, match=r"m.h5: unknown format; give .onnx, .pt2"):
        load_member_files((str(tmp_path / "m.h5"),), data, 1, "logits")


def test_ascent_runs_through_torch_and_onnx_members_and_is_skipped_when_one_does_not_translate(
        tiny_config: RunConfig, tmp_path: Path) -> None:
    data = load_dataset(tiny_config.data)
    pt2 = [export(Member(m), tmp_path / f"m{m}.pt2") for m in range(2)]

    def transfer(paths: list[str], steps: int):  # noqa: ANN202
        config = _with_models(tiny_config, paths, perturb_steps=steps, perturb_step_size=0.3)
        return teachers(data, config.model, config.ensemble, config.distill, CPU,
                        Checkpoints.of_run(config)).transfer

    # The ascent's space: inputs normalized by the training rows' statistics.
    ens = load_member_files(tuple(pt2), data, 2, "logits")
    x = torch.as_tensor(data.test.X[:10])
    z = (x.reshape(10, -1) - torch.as_tensor(ens.x_mean)) / torch.as_tensor(ens.x_std)
    torch.testing.assert_close(ens.forward_normalized(z), ens(x), rtol=1e-5, atol=1e-5)
    plain, pushed = transfer(pt2, 0), transfer(pt2, 2)
    n = len(data.train)
    np.testing.assert_array_equal(plain.X[:n], pushed.X[:n])
    moved = np.abs(pushed.X[n:] - plain.X[n:]).reshape(n, -1).max(1)
    assert (moved > 0.1).mean() > 0.9  # signed-gradient steps of 0.3 sigma moved the copies
    assert "ignored_settings" not in pushed.summary
    # The ascent raised the members' disagreement on the copies.
    def disagreement(t) -> float:  # noqa: ANN001
        p = torch.softmax(torch.as_tensor(t.teacher[n:]), -1)
        return float((p - p.mean(1, keepdim=True)).abs().sum(-1).mean())
    assert disagreement(pushed) > disagreement(plain)

    # The same members as ONNX files: the ascent runs through their graphs translated to
    # torch and moves the copies as it does through the .pt2 programs (sign steps: equal
    # wherever the two gradients' signs agree, which is almost everywhere).
    onnx_files = [export_onnx(Member(m), tmp_path / f"m{m}.onnx") for m in range(2)]
    through_onnx = transfer(onnx_files, 2)
    assert "ignored_settings" not in through_onnx.summary
    assert np.isclose(through_onnx.X, pushed.X, rtol=0, atol=1e-4).mean() > 0.999

    # A member whose graph does not translate (CumSum): the ascent is not applied, and the
    # report says through which member and why.
    mixed = [pt2[0], str(cumsum_member(tmp_path / "cumsum.onnx", data))]
    t = transfer(mixed, 2)
    assert t.summary["ignored_settings"] == [
        "distill.transfer.perturb_steps (no gradients through cumsum.onnx: operators without a "
        "PyTorch translation here: CumSum)"]
    assert [(f["format"], f["runs_on"], f["gradients"]) for f in t.summary["member_files"]] == [
        ("torch.export", "cpu", "PyTorch"),
        ("onnx", "CPUExecutionProvider", "none: operators without a PyTorch translation here: CumSum")]
    np.testing.assert_array_equal(t.X, plain.X)  # no ascent: the same inputs as without it
    gradients = through_onnx.summary["member_files"][0]["gradients"]
    assert gradients.startswith("ONNX graph translated to torch (") and gradients.endswith("from ONNX Runtime)")
    assert float(gradients.split("(")[1].split()[0]) <= 1e-5


def test_an_onnx_translation_that_disagrees_with_onnx_runtime_is_not_used(
        tiny_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_dataset(tiny_config.data)
    path = export_onnx(Member(0), tmp_path / "m0.onnx")
    config = _with_models(tiny_config, [path], perturb_steps=2)

    def transfer():  # noqa: ANN202
        return teachers(data, config.model, config.ensemble, config.distill, CPU,
                        Checkpoints.of_run(config)).transfer

    assert load_member_files((path,), data, 1, "logits").differentiable
    ascended = transfer()
    monkeypatch.setattr("training.members.largest_difference", lambda *a: 0.25)
    ens = load_member_files((path,), data, 1, "logits")
    assert not ens.differentiable
    assert ens.no_gradients() == [
        "m0.onnx: its torch translation differs from ONNX Runtime by 2.5e-01 (relative) on 16 "
        "training rows, more than 0.001"]
    # Without gradients the set has no ascent, so a checkpoint made with one is not reused.
    plain = transfer()
    assert plain.key != ascended.key
    assert not np.array_equal(plain.X, ascended.X)


@pytest.mark.slow
def test_example_pt2_members_distilled_on_an_image_folder(tmp_path: Path) -> None:
    """The example generator's members and PNG folder, end to end through ``hydra-train run``."""
    out = tmp_path / "example"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_example_data.py"), str(out),
                    "--members", "2", "--epochs", "2"], check=True, capture_output=True, timeout=600)
    members = sorted(str(p) for p in (out / "members").glob("*.pt2"))
    assert len(members) == 2
    overrides = [
        'name="pngdigits"', f'runs_dir="{tmp_path / "runs"}"', 'data.source="folder"',
        f'data.path="{out / "digits-png"}"', f'data.ood_path="{out / "digits-png-ood"}"',
        "data.image_size=[32, 32]", 'model.body="resnet"', "model.channels=[8, 16]", "model.blocks=[1, 2]",
        "model.image_shape=[3, 32, 32]", 'model.head="block"', "ensemble.members=2",
        f"ensemble.models={json.dumps(members)}", "distill.transfer.copies=1", "distill.transfer.flip=true",
        "distill.transfer.crop_padding=2", "distill.transfer.noise_std=0.0",
        "distill.phase1.epochs=1", "distill.phase2.epochs=1", "distill.phase1.batch_size=128",
        "distill.phase2.batch_size=128"]
    cmd = [sys.executable, "-m", "training.cli", "run", "--config", str(ROOT / "configs" / "tiny.toml"),
           "--repository", str(tmp_path / "models")]
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=1200)
    version = tmp_path / "models" / "pngdigits" / "1"
    assert (version / "model.onnx").is_file() and not (version / "ensemble.onnx").exists()
    report = json.loads((version / "report.json").read_text())
    # Independently: the members run directly on the test split's images.
    config = load_config(ROOT / "configs" / "tiny.toml", ["data.source=\"folder\"", f'data.path="{out / "digits-png"}"',
                                                          f'data.ood_path="{out / "digits-png-ood"}"',
                                                          "data.image_size=[32, 32]"])
    data = load_dataset(config.data)
    x = torch.as_tensor(data.test.X)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(torch.export.load(p).module()(x), -1) for p in members]).mean(0)
    accuracy = float((probs.argmax(1).numpy() == data.test.y).mean())
    assert report["test"]["ensemble"]["accuracy"] == pytest.approx(accuracy)
    assert report["transfer"]["source"] == "member files"
    assert report["parameters"]["ensemble"] == 2 * report["parameters"]["member"]
    assert any(k.startswith("member 1 (member_1.pt2") for k in report["parameters"])


def test_onnx_members_run_on_the_training_gpu_with_tf32_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from training.members import member_providers

    cuda = ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"})
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert member_providers(torch.device("cuda", 1)) == [cuda, "CPUExecutionProvider"]
    assert member_providers(torch.device("cuda"))[0][1]["device_id"] == "0"
    assert member_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    assert member_providers(None) == ["CPUExecutionProvider"]
    # The CPU package of onnxruntime has no CUDA provider: the CPU, not an error.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert member_providers(torch.device("cuda", 1)) == ["CPUExecutionProvider"]
