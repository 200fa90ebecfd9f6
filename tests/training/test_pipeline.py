"""A tiny end-to-end run: teachers, distillation, report, export, publication, resume."""

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract.model import ModelMetadata
from training.cli import main as cli_main
from training.config import RunConfig
from training.pipeline import run_pipeline


@pytest.mark.slow
def test_tiny_pipeline_publishes_versions(tiny_config: RunConfig, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "models"
    first = run_pipeline(tiny_config, repo)
    assert first == repo / "tiny" / "1"
    files = {p.name for p in first.iterdir()}
    assert {"model.onnx", "ensemble.onnx", "report.json", "report.md", "reliability.png",
            "uncertainty_hist.png", "model_uncertainty_scatter.png", "shift.png", "config.json"} <= files
    report = json.loads((first / "report.json").read_text())
    assert set(report["test"]) == {"ensemble", "kd", "hydra"}
    assert report["fidelity"]["kd"]["test"]["model"]["spearman"] is None  # KD: undefined
    assert report["parameters"]["ensemble"] == 3 * report["parameters"]["member"]
    assert len(report["per_head"]["hydra"]["accuracy"]) == 3
    assert set(report["ood_detection"]) == {"photo_patches", "inverted_digits", "uniform_noise"}
    assert {"member 1/3", "member 3/3", "hydra phase 1", "hydra phase 2"} <= set(report["training_samples_per_s"])
    assert "## Training throughput" in (first / "report.md").read_text()

    session = ort.InferenceSession(str(first / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    assert meta.num_heads == 3 and meta.kind == "hydra" and meta.ood is not None
    assert meta.ood.n_calibration == report["splits"]["calibration"]
    # The threshold flags about alpha of fresh in-distribution inputs (finite-sample slack).
    assert report["calibration"]["flag_rate"]["test"] < 0.15

    # A rerun loads every checkpoint instead of training, and publishes version 2.
    with caplog.at_level(logging.INFO):
        second = run_pipeline(tiny_config, repo)
    assert second == repo / "tiny" / "2"
    assert "member 3: loaded finished checkpoint" in caplog.text
    assert "phase 2: loaded finished checkpoint" in caplog.text
    assert not list((repo / "tiny").glob(".staging-*"))


@pytest.mark.slow
def test_user_member_predictions_are_distilled(tiny_config: RunConfig, tmp_path: Path) -> None:
    from dataclasses import replace

    from training.datasets import load_dataset
    data = load_dataset(tiny_config.data)
    rng = np.random.default_rng(0)
    X = data.train.X
    onehot = np.eye(10)[data.train.y]
    logits = (5 * onehot[:, None, :] + rng.normal(0, 1, size=(len(X), 3, 10))).astype(np.float32)
    path = tmp_path / "members.npz"
    np.savez(path, X=X, logits=logits)
    config = replace(tiny_config, ensemble=replace(tiny_config.ensemble, predictions=str(path)))
    version = run_pipeline(config, tmp_path / "models")
    assert (version / "model.onnx").is_file() and not (version / "ensemble.onnx").exists()
    report = json.loads((version / "report.json").read_text())
    assert set(report["test"]) == {"kd", "hydra"}
    assert report["test"]["hydra"]["accuracy"] > 0.5


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", "--set", "distill.temprature=2"]) == 2
    assert "unknown config key distill.'temprature'" in capsys.readouterr().err


@pytest.mark.slow
def test_member_predictions_on_held_out_rows_are_dropped_and_reported(tiny_config: RunConfig,
                                                                       tmp_path: Path) -> None:
    from dataclasses import replace

    from training.datasets import load_dataset
    data = load_dataset(tiny_config.data)
    # A user who scored every row of the data set with their members.
    X = np.concatenate([data.train.X, data.calibration.X, data.test.X])
    y = np.concatenate([data.train.y, data.calibration.y, data.test.y])
    rng = np.random.default_rng(0)
    logits = (5 * np.eye(10)[y][:, None, :] + rng.normal(0, 1, size=(len(X), 3, 10))).astype(np.float32)
    path = tmp_path / "members.npz"
    np.savez(path, X=X, logits=logits)
    config = replace(tiny_config, ensemble=replace(tiny_config.ensemble, predictions=str(path)),
                     distill=replace(tiny_config.distill, gt_weight=0.5))
    version = run_pipeline(config, tmp_path / "models")
    transfer = json.loads((version / "report.json").read_text())["transfer"]
    # Digits holds a few duplicate images, so a handful of training rows equal held-out ones.
    held_out = {"calibration": len(data.calibration), "test": len(data.test)}
    for split, n in held_out.items():
        assert n <= transfer["dropped_held_out_rows"][split] <= n + 5, split
    assert transfer["rows"] == len(X) - sum(transfer["dropped_held_out_rows"].values())
    assert transfer["rows"] >= len(data.train) - 10 and transfer["training_rows"] == transfer["rows"]
    # tiny.toml asks for noisy copies, which need the members themselves.
    assert transfer["ignored_settings"] == ["distill.transfer.copies", "distill.transfer.noise_std"]
    text = (version / "report.md").read_text()
    assert f"{transfer['dropped_held_out_rows']['test']} test rows were dropped" in text
