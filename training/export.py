"""Stage 4: calibration and ONNX export under the contract of ``contract.model``, of the Hydra
(``model.onnx``) and of an ensemble trained here (``ensemble.onnx``).

The exported graph takes raw features, normalizes them, runs every head and computes the
derived outputs (the same torch functions evaluation uses). Export checks itself: the ONNX
checker, then ONNX Runtime against PyTorch on random and real inputs for every output.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from contract.model import (INPUT_NAME, UNCERTAINTY_COMPONENTS, UNCERTAINTY_OUTPUTS, ModelMetadata,
                            derived_output_names, head_names, output_names)
from contract.drift import DriftReference
from contract.files import write_atomic
from contract.ood import OodCalibration
from contract.onnxrt import session_options
from training.config import CalibrationConfig, ExportConfig
from training.data import Dataset
from training.evaluate import SplitOutputs
from training.networks import Ensemble, HydraNet
from training.uncertainty import network_outputs

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported file failed its own checks; the message names the output and the gap."""


class ContractModule(nn.Module):
    """Wraps a network returning [B, M, ...] into the contract's flat tuple of outputs."""

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net = net
        self.task = task

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        heads, derived = network_outputs(self.net, x, self.task)  # heads [B, M, C] or [B, M, 2, D]
        return (*heads.float().unbind(1), *(derived[n] for n in derived_output_names(self.task)))


# How the calibration inputs are laid out in batches when their served scores are taken: alone,
# at every position of small batches (ONNX Runtime's kernels round a row differently by its
# position in a block of rows and by the batch's size), in a batch the size of the service's
# default largest, and all at once. (batch size, rotation of the rows); 0 = all rows.
SERVED_LAYOUTS: tuple[tuple[int, int], ...] = (
    (1, 0), *((b, r) for b in (2, 3, 4, 5, 8) for r in range(min(b, 4))), (64, 0), (0, 0))


@dataclass(frozen=True)
class ServedScores:
    """The derived outputs ONNX Runtime gives the calibration inputs, as the service runs the
    file: per output, the largest value over the batch layouts (``largest``) and the values
    of the whole split in one batch (``whole``); and how far one input's score moved between
    layouts (``jitter``: the largest absolute and relative move of the OOD score)."""

    largest: dict[str, np.ndarray]
    whole: dict[str, np.ndarray]
    jitter: dict[str, float]


def served_scores(model: onnx.ModelProto, X: np.ndarray, names: tuple[str, ...],
                  score: str) -> ServedScores:
    session = ort.InferenceSession(model.SerializeToString(), session_options(),
                                   providers=["CPUExecutionProvider"])
    n = len(X)
    runs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    whole: dict[str, np.ndarray] = {}
    for size, rotation in SERVED_LAYOUTS:
        order = np.roll(np.arange(n), rotation)
        size = size or n
        got = {name: np.empty(n, dtype=np.float64) for name in names}
        for start in range(0, n, size):
            rows = order[start:start + size]
            for name, value in zip(names, session.run(list(names), {INPUT_NAME: X[rows].astype(np.float32)})):
                got[name][rows] = value
        for name in names:
            runs[name].append(got[name])
        if size == n and rotation == 0:
            whole = got
    stacked = {name: np.stack(v) for name, v in runs.items()}  # [layouts, n]
    moved = stacked[score].max(0) - stacked[score].min(0)
    scale = np.maximum(np.abs(stacked[score]).max(0), np.finfo(np.float32).tiny)
    return ServedScores({name: v.max(0) for name, v in stacked.items()}, whole,
                        {"max_abs": float(moved.max()), "max_rel": float((moved / scale).max()),
                         "layouts": len(SERVED_LAYOUTS)})


def calibrate_served(model: onnx.ModelProto, X: np.ndarray,
                     config: CalibrationConfig) -> tuple[OodCalibration, dict[str, DriftReference], dict[str, Any]]:
    """The OOD threshold and drift references of the exported graph as ONNX Runtime runs it.

    The threshold is the (1 - alpha) quantile of each calibration input's largest score over
    the batch layouts, so no calibration input at or below it is flagged whatever batch the
    service puts it in, and the served flag rate on the calibration inputs stays at most alpha
    (scores move by about 1e-8 between layouts; measured and reported as ``score_jitter``).
    The drift references are the scores of the split in one batch. Returns also what the
    calibration inputs' flags are under the worst layout (``served_flag_rate``)."""
    names = tuple(f"{c}_uncertainty" for c in UNCERTAINTY_COMPONENTS)
    served = served_scores(model, X, names, config.score)
    ood = OodCalibration.from_scores(served.largest[config.score], alpha=config.alpha, score=config.score)
    drift = {c: DriftReference.from_scores(served.whole[f"{c}_uncertainty"], config.drift_bins)
             for c in UNCERTAINTY_COMPONENTS}
    figures = {"score_jitter": served.jitter,
               "served_flag_rate": float(ood.is_ood(served.largest[config.score]).mean())}
    return ood, drift, figures


def _strip_local_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node metadata and doc strings: the exporter records local source paths there."""
    def clean(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)
    clean(model.graph)
    for fn in model.functions:
        for node in fn.node:
            del node.metadata_props[:]
            node.doc_string = ""
    model.doc_string = ""
    del model.metadata_props[:]


def to_onnx(net: nn.Module, meta: ModelMetadata, config: ExportConfig) -> onnx.ModelProto:
    module = ContractModule(net, meta.task).eval().cpu().float()
    example = torch.zeros(4, *meta.feature_shape)
    names = output_names(meta.task, meta.num_heads)
    program = torch.onnx.export(
        module, (example,), input_names=[INPUT_NAME], output_names=names,
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=config.opset,
        dynamo=True, external_data=False, verbose=False)
    buf = io.BytesIO()
    program.save(buf)  # type: ignore[union-attr]
    model = onnx.load_from_string(buf.getvalue())
    _strip_local_metadata(model)
    set_metadata(model, meta)
    return model


def set_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Write ``meta`` as the file's metadata_props (replacing any), then run the checker."""
    del model.metadata_props[:]
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: dict[str, float]
    samples: int


def check_parity(model: onnx.ModelProto, net: nn.Module, meta: ModelMetadata, inputs: np.ndarray,
                 config: ExportConfig) -> ParityResult:
    """ONNX Runtime (CPU) vs PyTorch on ``inputs`` [N, *feature_shape], for every output."""
    session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: inputs.astype(np.float32)})
    with torch.no_grad():
        want = [t.numpy() for t in ContractModule(net, meta.task).eval().cpu().float()(torch.as_tensor(inputs))]
    names = [o.name for o in session.get_outputs()]
    if names != meta.output_names:
        raise ExportError(f"graph outputs {names} differ from the contract's {meta.output_names}")
    units = output_units(net, meta)
    diffs = {}
    for name, g, w in zip(names, got, want):
        if g.shape != w.shape:
            raise ExportError(f"output {name}: ONNX Runtime shape {g.shape}, PyTorch {w.shape}")
        unit = units.get(name, 1.0)
        diff = np.abs(g.astype(np.float64) - w) / unit
        bound = config.atol + config.rtol * np.abs(w) / unit
        if not np.all(diff <= bound):
            where = "" if name not in units else " in units of the target's std (or its square)"
            raise ExportError(f"output {name}: ONNX Runtime differs from PyTorch by up to "
                              f"{diff.max():.3g}{where} (allowed {config.atol} + {config.rtol}*|x|)")
        diffs[name] = float(diff.max()) if diff.size else 0.0
    return ParityResult(diffs, int(inputs.shape[0]))


def output_units(net: nn.Module, meta: ModelMetadata) -> dict[str, np.ndarray]:
    """The scale each regression output is judged in: parity is the same test whatever the
    target's units, so a model of y x 1e6 + 1e4 passes or fails as the model of y does.

    Means and head means are in units of the target's std, variances and uncertainties in
    units of its square (summed over the outputs, as the uncertainties are). Empty for
    classification and for networks without target statistics (everything in units of 1).
    """
    if meta.task != "regression" or not hasattr(net, "target_stats"):
        return {}
    std = net.target_stats()[1].detach().cpu().double().numpy()  # [D]
    square = std**2
    units = {"mean": std, "variance": square, "head_disagreement": np.array(square.sum())}
    units.update({name: np.array(square.sum()) for name in UNCERTAINTY_OUTPUTS})
    units.update({name: np.stack([std, square]) for name in head_names(meta.num_heads)})  # [2, D]
    return units


def export_checked(net: nn.Module, meta: ModelMetadata, config: ExportConfig, real_inputs: np.ndarray,
                   path: Path, seed: int = 0,
                   calibration: tuple[np.ndarray, CalibrationConfig] | None = None) -> dict[str, Any]:
    """Export, check, and write ``path`` atomically. Returns the parity figures for the report.

    With ``calibration`` (the calibration inputs and settings), the OOD threshold and drift
    references in the file are computed from the exported graph run in ONNX Runtime
    (``calibrate_served``) and added to ``meta``; the figures then hold the file's metadata
    (``"metadata"``) and the calibration's jitter and served flag rate."""
    net = net.eval().cpu().float()
    model = to_onnx(net, meta, config)
    served: dict[str, Any] = {}
    if calibration is not None:
        ood, drift, served = calibrate_served(model, *calibration)
        meta = replace(meta, ood=ood, drift=drift)
        set_metadata(model, meta)
    rng = np.random.default_rng(seed)
    lo, hi = real_inputs.min(axis=0), real_inputs.max(axis=0)
    random_inputs = rng.uniform(lo, hi, size=(64, *real_inputs.shape[1:])).astype(np.float32)
    parity = {"random": check_parity(model, net, meta, random_inputs, config).max_abs_diff,
              "real": check_parity(model, net, meta, real_inputs, config).max_abs_diff,
              "single": check_parity(model, net, meta, real_inputs[:1], config).max_abs_diff}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_bytes(model.SerializeToString()))
    worst = max(max(d.values()) for d in parity.values())
    log.info("exported %s (%d outputs, parity max |diff| %.2e)", path, len(meta.output_names), worst)
    return {"file": path.name, "opset": config.opset, "atol": config.atol, "rtol": config.rtol,
            "max_abs_diff": parity, "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "metadata": meta, **served}


def model_metadata(data: Dataset, kind: str, num_heads: int, summary: dict[str, Any]) -> ModelMetadata:
    """A model's metadata but its calibration, which export takes from the exported graph
    (``export_checked`` with ``calibration``)."""
    return ModelMetadata(
        task=data.task, kind=kind, num_heads=num_heads, feature_shape=data.feature_shape,  # type: ignore[arg-type]
        class_labels=data.class_labels, output_dim=data.output_dim,
        preprocessing={**data.preprocessing, "normalization": "per-feature standardization inside the graph"},
        training=summary)


def alpha_held(n: int, alpha: float) -> float:
    """The false-positive rate the threshold holds for a new in-distribution input: the
    threshold is the calibration score of 0-based rank i = ceil((1 - alpha)(n - 1)) (numpy's
    "higher" quantile), and a new exchangeable score lies above it with probability
    (n - i) / (n + 1). At most ``alpha`` when n >= 1/alpha - 1; with fewer inputs the threshold
    is the calibration maximum and the rate is 1 / (n + 1)."""
    rank = int(np.ceil((1.0 - alpha) * (n - 1)))
    return (n - rank) / (n + 1)


def calibration_summary(meta: ModelMetadata, outputs: dict[str, SplitOutputs],
                        data: Dataset) -> dict[str, Any]:
    """The OOD threshold, the false-positive rate it can hold, and the rate at which it flags
    test and OOD inputs (and the test inputs of each class)."""
    if meta.ood is None:
        return {}
    ood = meta.ood
    rates = {split: float(ood.is_ood(o.derived[ood.score]).mean())
             for split, o in outputs.items() if split == "test" or split.startswith("ood/")}
    held = alpha_held(ood.n_calibration, ood.alpha)
    summary = {"score": ood.score, "alpha": ood.alpha, "alpha_held": held,
               "threshold": ood.threshold, "n_calibration": ood.n_calibration, "flag_rate": rates,
               "drift_bins": {c: len(r.expected) for c, r in meta.drift.items()}}
    if held > ood.alpha * (1 + 1e-9):
        log.warning("%d calibration inputs cannot hold alpha = %g: the threshold is their "
                    "maximum and flags about %.3g of in-distribution inputs (at least %d are "
                    "needed; give more rows or a larger data.calibration_fraction)",
                    ood.n_calibration, ood.alpha, held, int(np.ceil(1 / ood.alpha - 1)))
    if data.task == "classification":
        flagged = ood.is_ood(outputs["test"].derived[ood.score])
        summary["flag_rate_by_class"] = [
            float(flagged[data.test.y == c].mean()) if np.any(data.test.y == c) else None
            for c in range(data.num_classes)]
    return summary


@dataclass(frozen=True)
class Exported:
    """What the export stage tells the report: per file its parity figures, size, sha256 and
    OOD threshold; and the Hydra's calibration summary."""

    files: dict[str, dict[str, Any]]
    calibration: dict[str, Any]


def export_models(folder: Path, data: Dataset, hydra: HydraNet, ensemble: Ensemble | None,
                  outputs: dict[str, dict[str, SplitOutputs]], summaries: dict[str, dict[str, Any]],
                  calibration: CalibrationConfig, config: ExportConfig) -> Exported:
    """Calibrate, export and check ``model.onnx`` (the Hydra) and, when given, ``ensemble.onnx``
    into ``folder``. ``outputs`` and ``summaries`` are by kind ("hydra", "ensemble")."""
    files: dict[str, dict[str, Any]] = {}
    hydra_calibration: dict[str, Any] = {}
    to_export: dict[str, tuple[nn.Module, str]] = {"model.onnx": (hydra, "hydra")}
    if ensemble is not None:
        to_export["ensemble.onnx"] = (ensemble, "ensemble")
    for filename, (net, kind) in to_export.items():
        meta = model_metadata(data, kind, net.num_heads, summaries[kind])
        figures = export_checked(net, meta, config, data.test.X, folder / filename,
                                 calibration=(data.calibration.X, calibration))
        meta = figures.pop("metadata")
        files[filename] = {**figures, "ood_threshold": meta.ood.threshold if meta.ood else None}
        if kind == "hydra":
            hydra_calibration = {**calibration_summary(meta, outputs["hydra"], data),
                                 "score_jitter": figures["score_jitter"],
                                 "served_flag_rate_calibration": figures["served_flag_rate"]}
    return Exported(files, hydra_calibration)
