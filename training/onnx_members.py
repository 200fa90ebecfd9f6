"""An ensemble trained elsewhere, given as its members' ONNX files (any framework exports one).

Each file takes the raw features (one input, float32 ``[B, *feature_shape]``, batch dynamic)
and gives, for classification, one output of logits ``[B, C]`` (or probabilities, with
``ensemble.member_output = "probabilities"``); for regression, two outputs, the mean and the
variance ``[B, D]`` (in that order). The members run in ONNX Runtime on the CPU, so teacher
outputs are computed on the fly on the whole transfer set (its noisy, mixup and uniform
inputs included) and the ensemble is evaluated beside the students like one trained here.
Gradients do not flow through ONNX Runtime, so the disagreement ascent cannot apply.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from contract.onnxrt import session_options
from training.data import Dataset, DataError
from training.scaling import feature_stats

log = logging.getLogger(__name__)

OUTPUT_KINDS = ("logits", "probabilities")


def _session(path: Path) -> ort.InferenceSession:
    try:  # M sessions in one process: one thread each, no competing pools
        return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise DataError(f"{path}: not a model ONNX Runtime can load: {str(exc)[:300]}") from exc


def parameter_count(path: Path) -> int:
    """Weights of an ONNX file: the elements of its initializers."""
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(math.prod(t.dims) for t in model.graph.initializer))


class OnnxEnsemble(nn.Module):
    """Members in ONNX Runtime behind the same output shape as a Hydra: [B, M, C] logits, or
    [B, M, 2, D] (mean, variance). Forward only; inputs are moved to the CPU."""

    def __init__(self, paths: list[Path], data: Dataset, member_output: str) -> None:
        super().__init__()
        if member_output not in OUTPUT_KINDS:
            raise DataError(f"ensemble.member_output must be one of {OUTPUT_KINDS}, got {member_output!r}")
        self.paths = paths
        self.task = data.task
        self.member_output = member_output
        self.feature_shape = data.feature_shape
        self.out_dim = data.num_classes if data.task == "classification" else data.output_dim
        self.sessions = [_session(p) for p in paths]
        mean, std = feature_stats(data.train.X.reshape(len(data.train), -1))
        self.x_mean, self.x_std = mean, std  # for the transfer set's noise and mixup
        for path, session in zip(paths, self.sessions):
            self._check(path, session, data)

    @property
    def num_heads(self) -> int:
        return len(self.sessions)

    def _check(self, path: Path, session: ort.InferenceSession, data: Dataset) -> None:
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{path}: a member must take one input, this one takes "
                            f"{[i.name for i in inputs]}")
        want = 1 if self.task == "classification" else 2
        if len(session.get_outputs()) < want:
            raise DataError(f"{path}: a {self.task} member must give {want} output(s) "
                            f"({'logits' if want == 1 else 'mean, variance'}), this one gives "
                            f"{len(session.get_outputs())}")
        probe = data.train.X[:2].astype(np.float32)
        try:
            outs = self._run_one(session, probe)
        except DataError:
            raise
        except Exception as exc:  # wrong feature shape or dtype, seen by ONNX Runtime
            raise DataError(f"{path}: running it on two training rows of shape "
                            f"{list(probe.shape)} failed: {str(exc)[:300]}") from exc
        expected = (2, self.out_dim) if self.task == "classification" else (2, 2, self.out_dim)
        if outs.shape != expected:
            raise DataError(f"{path}: outputs of shape {list(outs.shape)} for 2 rows, expected "
                            f"{list(expected)} ({self.out_dim} {'classes' if self.task == 'classification' else 'outputs'})")

    def _run_one(self, session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        name = session.get_inputs()[0].name
        outs = session.run(None, {name: x})
        if self.task == "classification":
            first = np.asarray(outs[0], dtype=np.float32)
            if self.member_output == "probabilities":
                if np.any(first < 0) or not np.allclose(first.sum(-1), 1.0, atol=1e-3):
                    raise DataError("member outputs are not probabilities (negative, or rows not "
                                    "summing to 1); set ensemble.member_output = \"logits\"")
                first = np.log(np.clip(first, 1e-30, None))
            return first.reshape(x.shape[0], -1)  # [B, C]
        mean = np.asarray(outs[0], dtype=np.float32).reshape(x.shape[0], -1)
        var = np.asarray(outs[1], dtype=np.float32).reshape(x.shape[0], -1)
        if np.any(var <= 0):
            raise DataError("member variances must be > 0")
        return np.stack([mean, var], axis=1)  # [B, 2, D]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().float().cpu().numpy().reshape(x.shape[0], *self.feature_shape)
        outs = []
        for path, session in zip(self.paths, self.sessions):
            out = self._run_one(session, batch)
            if not np.all(np.isfinite(out)):
                raise DataError(f"{path}: non-finite outputs on the transfer or evaluation inputs")
            outs.append(out)
        return torch.as_tensor(np.stack(outs, axis=1))  # [B, M, C] or [B, M, 2, D]


def load_onnx_members(paths: tuple[str, ...], data: Dataset, expected_members: int,
                      member_output: str) -> OnnxEnsemble:
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(f"member file(s) {', '.join(missing)} do not exist")
    if expected_members and len(files) != expected_members:
        raise DataError(f"{len(files)} member files given, the config says ensemble.members = "
                        f"{expected_members}")
    ensemble = OnnxEnsemble(files, data, member_output)
    log.info("ensemble: %d ONNX members from %s", len(files), files[0].parent)
    return ensemble
