"""What makes a trained model trustworthy: it is fitted on what the config and the data say,
never on held-out rows, and the exported file's numbers follow from its own heads."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from scipy.special import log_softmax

from contract.model import ModelMetadata, output_names
from training import ensemble as ensemble_module
from training.cli import main as cli_main
from training.config import ConfigError, ExportConfig, ModelConfig, RunConfig
from training.datasets import load_dataset
from training.distill import distill
from training.export import export_checked
from training.losses import gaussian_distill_loss, gaussian_kl, moment_match
from training.networks import HydraNet, NetSpec
from training.checkpoints import Checkpoints
from training.device import Runtime
from training.pipeline import run_pipeline
from training.teachers import teachers
from training.transfer import TransferSet, row_keys
from tests.training.test_export import _meta


def _blobs(path: Path, n: int = 300, features: int = 4, flip: bool = False, seed: int = 0) -> Path:
    """Two well separated classes; ``flip`` swaps the labels of the same inputs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, features)) + 4.0 * y[:, None]
    np.savez(path, X=X, y=(1 - y) if flip else y)
    return path


def _user_config(tiny_config: RunConfig, path: Path) -> RunConfig:
    optim = replace(tiny_config.ensemble.optim, epochs=15)
    return replace(tiny_config, name="blobs",
                   data=replace(tiny_config.data, source="npz", path=str(path)),
                   ensemble=replace(tiny_config.ensemble, optim=optim),
                   distill=replace(tiny_config.distill, phase1=replace(tiny_config.distill.phase1, epochs=10),
                                   phase2=replace(tiny_config.distill.phase2, epochs=10)))


def _test_accuracy(version: Path) -> float:
    return json.loads((version / "report.json").read_text())["test"]["hydra"]["accuracy"]


@pytest.mark.slow
def test_rewritten_data_file_retrains(tiny_config: RunConfig, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    data_file = _blobs(tmp_path / "blobs.npz")
    config = _user_config(tiny_config, data_file)
    repo = tmp_path / "models"
    assert _test_accuracy(run_pipeline(config, repo)) > 0.95

    _blobs(data_file, flip=True)  # same path, every label swapped
    with caplog.at_level(logging.INFO):
        second = run_pipeline(config, repo)
    assert "loaded finished checkpoint" not in caplog.text
    assert _test_accuracy(second) > 0.95  # a stale model would score about 0 here

    _blobs(data_file, features=6)  # same path, more features: a clean retrain, no traceback
    # ... refused under the same name before any training (clients of "blobs" send 4 features),
    with pytest.raises(ConfigError, match=r"this run has feature shape \[6\] \(version 2: \[4\]\)"):
        run_pipeline(config, repo)
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == ["1", "2"]
    # ... and published when the config says so.
    third = run_pipeline(replace(config, export=replace(config.export, replace_model=True)), repo)
    session = ort.InferenceSession(str(third / "model.onnx"), providers=["CPUExecutionProvider"])
    assert ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map).feature_shape == (6,)


def test_members_and_transfer_set_never_see_held_out_rows(tiny_config: RunConfig, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = _user_config(tiny_config, _blobs(tmp_path / "blobs.npz"))
    config = replace(config, ensemble=replace(config.ensemble, members=2,
                                              optim=replace(config.ensemble.optim, epochs=1)))
    data = load_dataset(config.data)
    seen: list[np.ndarray] = []
    real_fit = ensemble_module.fit

    def spy(model, tensors, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.append(tensors[0].numpy().copy())
        return real_fit(model, tensors, *args, **kwargs)

    monkeypatch.setattr(ensemble_module, "fit", spy)
    transfer = teachers(data, config.model, config.ensemble, config.distill, Runtime(torch.device("cpu")),
                        Checkpoints.of_run(config)).transfer
    held_out = set(row_keys(data.calibration.X)) | set(row_keys(data.test.X))
    assert len(seen) == 2
    for rows in seen:
        np.testing.assert_array_equal(rows, data.train.X)
    assert not held_out & set(row_keys(transfer.X))
    # Ground truth is attached to exactly the training rows of the transfer set.
    assert transfer.labelled.sum() == len(data.train)
    np.testing.assert_array_equal(transfer.y[transfer.labelled], data.train.y)


def test_phase2_starts_from_copies_of_the_phase1_head(tiny_config: RunConfig, tmp_path: Path) -> None:
    config = _user_config(tiny_config, _blobs(tmp_path / "blobs.npz"))
    # A learning rate that moves nothing in phase 2: the Hydra must still be M copies of KD.
    config = replace(config, distill=replace(config.distill, phase2=replace(
        config.distill.phase2, lr=1e-12, epochs=1)))
    data = load_dataset(config.data)
    rng = np.random.default_rng(0)
    X = data.train.X
    teacher = rng.normal(size=(len(X), 4, 2)).astype(np.float32)
    transfer = TransferSet(X, teacher, data.train.y, np.ones(len(X), bool), "k")
    students = distill(data, transfer, config.model, config.distill, Runtime(torch.device("cpu")),
                       Checkpoints.of_run(config))
    kd, hydra = students.kd, students.hydra
    with torch.no_grad():
        kd_out = kd(torch.as_tensor(data.test.X))  # [B, 1, C]
        hydra_out = hydra(torch.as_tensor(data.test.X))  # [B, 4, C]
    assert hydra_out.shape[1] == 4
    torch.testing.assert_close(hydra_out, kd_out.expand_as(hydra_out), atol=1e-5, rtol=1e-5)


def test_regression_phase1_matches_the_moment_matched_gaussian() -> None:
    torch.manual_seed(0)
    teacher = torch.stack([torch.randn(16, 5, 3), torch.rand(16, 5, 3) + 0.1], dim=2)  # [B, M, 2, D]
    student = torch.stack([torch.randn(16, 1, 3), torch.rand(16, 1, 3) + 0.1], dim=2)  # [B, 1, 2, D]
    mixture = moment_match(teacher)
    want = gaussian_kl(mixture[:, :, 0], mixture[:, :, 1], student[:, :, 0], student[:, :, 1]).mean()
    assert gaussian_distill_loss(student, teacher).item() == pytest.approx(want.item(), rel=1e-6)
    # Not the mean of the per-member KLs, which has the same minimiser but other values.
    per_member = gaussian_kl(teacher[:, :, 0], teacher[:, :, 1], student[:, :, 0], student[:, :, 1]).mean()
    assert abs(per_member.item() - want.item()) > 1e-3


def _recompute(task: str, heads: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The derived outputs from the file's own head outputs, in float64 numpy."""
    if task == "classification":
        logits = np.stack(heads, 1).astype(np.float64)  # [B, M, C]
        log_p = log_softmax(logits, -1)
        p = np.exp(log_p)
        p_bar = p.mean(1)  # [B, C]
        entropy = lambda q: -(q * np.log(np.clip(q, 1e-300, None))).sum(-1)  # noqa: E731
        kl = (p * (log_p - np.log(p_bar)[:, None])).sum(-1)  # [B, M]
        return {"mean_probs": p_bar, "total_uncertainty": entropy(p_bar),
                "data_uncertainty": entropy(p).mean(1), "model_uncertainty": kl.mean(1),
                "head_disagreement": kl,
                "disagreement_rate": (logits.argmax(-1) != p_bar.argmax(-1)[:, None]).mean(1)}
    g = np.stack(heads, 1).astype(np.float64)  # [B, M, 2, D]
    mu, var = g[:, :, 0], g[:, :, 1]
    mean = mu.mean(1)
    dev = ((mu - mean[:, None]) ** 2)
    return {"mean": mean, "variance": var.mean(1) + dev.mean(1),
            "total_uncertainty": var.mean(1).sum(-1) + dev.mean(1).sum(-1),
            "data_uncertainty": var.mean(1).sum(-1), "model_uncertainty": dev.mean(1).sum(-1),
            "head_disagreement": dev.sum(-1)}


@pytest.mark.parametrize("task, out_dim", [("classification", 5), ("regression", 2)])
def test_exported_derived_outputs_follow_from_its_heads(tmp_path: Path, task: str, out_dim: int) -> None:
    torch.manual_seed(1)
    heads = 4
    net = HydraNet(ModelConfig(hidden=(16,)), NetSpec(task, (6,), out_dim), heads)
    with torch.no_grad():  # spread the heads so they disagree
        net.heads.weights[0].mul_(torch.linspace(0.2, 5.0, heads)[:, None, None])
    real = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    export_checked(net, _meta(task, heads, (6,), out_dim), ExportConfig(), real, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = output_names(task, heads)
    got = dict(zip(names, session.run(None, {"input": real * 3.0})))
    want = _recompute(task, [got[f"head_{m}"] for m in range(heads)])
    assert set(want) == set(names) - {f"head_{m}" for m in range(heads)}
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    if task == "classification":
        assert got["model_uncertainty"].max() > 0.05  # the check above is not between zeros


def test_data_errors_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,target\n1,2,0\n3,0\n")
    assert cli_main(["run", "--set", 'data.source="csv"', "--set", f'data.path="{bad}"']) == 2
    err = capsys.readouterr().err
    assert "line 3 has 2 fields, the header (line 1) has 3" in err and "Traceback" not in err
    labels = tmp_path / "labels.npz"
    np.savez(labels, X=np.zeros((40, 2)), y=np.arange(40) % 3)
    assert cli_main(["run", "--set", 'data.source="npz"', "--set", f'data.path="{labels}"']) == 2
    assert 'set data.task = "classification" or "regression"' in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (['model.body="vit"'], r"unknown model.body 'vit'; registered: \['cnn', 'mlp', 'resnet', 'resnet18', 'resnet34'\]"),
    (['model.body="cnn"', "model.image_shape=[1, 4, 4]"], r"model.image_shape \[1, 4, 4\] holds 16 values, the data has 64"),
    (['name="no/slash"'], r"model name \(the config's name\) must match"),
])
def test_setting_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str],
                               message: str) -> None:
    import re
    args = ["run", "--config", "configs/tiny.toml", "--repository", str(tmp_path / "models"),
            "--set", f'runs_dir="{tmp_path / "runs"}"']
    for o in overrides:
        args += ["--set", o]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_transfer_range_share_counts_values_inside_the_transfer_range() -> None:
    from training.transfer import transfer_range_share

    transfer = np.array([[0.0, 0.0], [16.0, 4.0]], dtype=np.float32)  # ranges [0, 16] and [0, 4]
    inside = np.array([[1.0, 1.0], [15.0, 3.0]], dtype=np.float32)
    half = np.array([[1.0, 9.0], [15.0, 9.0]], dtype=np.float32)  # second feature outside
    outside = np.array([[-1.0, 5.0]], dtype=np.float32)
    assert transfer_range_share(transfer, inside) == 1.0
    assert transfer_range_share(transfer, half) == 0.5
    assert transfer_range_share(transfer, outside) == 0.0


def test_uniform_noise_is_reported_near_transfer_only_with_uniform_inputs() -> None:
    from training.config import DataConfig
    from training.pipeline import near_transfer

    data = load_dataset(DataConfig())
    X = data.train.X
    base = TransferSet(X, np.zeros((len(X), 2, 10), np.float32), data.train.y, np.ones(len(X), bool), "k")
    assert near_transfer(data, base) == {}
    with_uniform = replace(base, summary={"uniform_rows": 100})
    assert list(near_transfer(data, with_uniform)) == ["uniform_noise"]


def test_goals_survive_a_perfect_ensemble() -> None:
    from training.evaluate import _ratio

    assert _ratio(0.2, 0.1) == pytest.approx(2.0)
    assert _ratio(0.0, 0.0) == 1.0  # both perfect on the test set
    assert _ratio(0.1, 0.0) is None  # undefined, reported as such, never a crash


def test_image_copies_are_flipped_and_shifted_versions_of_the_originals() -> None:
    from training.config import TransferConfig
    from training.transfer import augment_images

    X = np.zeros((200, 1, 5, 5), np.float32)
    X[:, 0, 2, 1] = 1.0  # one bright pixel left of centre
    rng = np.random.default_rng(0)
    flipped = augment_images(X, TransferConfig(flip=True), rng)
    where = [tuple(np.argwhere(img[0])[0]) for img in flipped]
    assert set(where) == {(2, 1), (2, 3)} and 60 < where.count((2, 3)) < 140  # mirrored about half
    shifted = augment_images(X, TransferConfig(crop_padding=1), rng)
    moves = {(r - 2, c - 1) for img in shifted for r, c in np.argwhere(img[0])}
    assert moves == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}  # every shift of 1 pixel
    assert np.all(shifted.sum(axis=(1, 2, 3)) == 1.0)  # the pixel is never cropped away here
