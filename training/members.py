"""An ensemble trained elsewhere, given as its members' files: ONNX, torch.export programs, or
state dicts of a registered architecture (``[ensemble] models``; one file per member).

Formats, chosen by the file's suffix:

- ``.onnx``: any framework's export, run in ONNX Runtime: on its CUDA provider (TF32 off,
  the training device's GPU) when training on CUDA and the provider is there, else on the CPU.
- ``.pt2``: a ``torch.export`` program (``torch.export.save(torch.export.export(model, example,
  dynamic_shapes=...))``), loaded with ``torch.export.load(path).module()`` (no class
  definition needed) and run on the training device.
- ``.pt`` / ``.pth``: a state dict (plain, or under a ``"model"`` key as this project's own
  member checkpoints are) of the network that ``[ensemble.member_model]`` names (body and
  head from the registry, one head), run on the training device. For a network of this
  project the normalization buffers are in the state dict.

Every member takes the raw features (float32 ``[B, *feature_shape]``, batch dynamic; it does
its own normalization) and gives, for classification, logits ``[B, C]`` (or probabilities, with
``ensemble.member_output = "probabilities"``); for regression two outputs, the mean and the
variance ``[B, D]``, in that order (a state dict of this project's network gives its own
``[B, 1, 2, D]``). PyTorch members always run in float32, never under autocast. One list may
mix the formats. The disagreement ascent (``distill.transfer.perturb_steps``) needs gradients
with respect to the inputs. They flow through PyTorch members as loaded, and through an ONNX
member's graph translated into torch operations (``training.onnx_graph``), checked at load
against ONNX Runtime on training rows; its outputs still come from ONNX Runtime. When a
member's graph has operators the translation does not cover, or the check fails, the ascent
is listed as not applied, with the member and the reason.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from contract.onnxrt import session_options
from training.config import ModelConfig
from training.data import Dataset, DataError
from training.networks import build_network, net_spec
from training.onnx_graph import OnnxGraph, Unsupported, largest_difference, translate
from training.scaling import feature_stats

log = logging.getLogger(__name__)

OUTPUT_KINDS = ("logits", "probabilities")
# Largest difference (relative to the outputs' size) allowed between an ONNX member's torch
# translation and ONNX Runtime on training rows before its gradients are used for the ascent.
GRADIENT_PARITY = 1e-3
PARITY_ROWS = 16
# Suffix -> format name (as the report names it).
FORMATS = {".onnx": "onnx", ".pt2": "torch.export", ".pt": "state_dict", ".pth": "state_dict"}


def member_providers(device: torch.device | None) -> list[Any]:
    """ONNX Runtime providers for a member on the training ``device``: the CUDA provider of
    that GPU (TF32 off, so the teachers' outputs are float32 as on the CPU) when training on
    CUDA and onnxruntime has it; the CPU provider always (ONNX Runtime falls back to it)."""
    if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": str(device.index or 0), "use_tf32": "0"}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, device: torch.device | None) -> ort.InferenceSession:
    try:  # M sessions in one process: one thread each, no competing pools
        return ort.InferenceSession(str(path), session_options(1), providers=member_providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise DataError(f"{path}: not a model ONNX Runtime can load: {str(exc)[:300]}") from exc


def parameter_count(path: Path) -> int:
    """Weights of an ONNX file: the elements of its initializers."""
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(math.prod(t.dims) for t in model.graph.initializer))


class MemberFile:
    """One member file: ``run(x)`` gives its raw outputs (a tensor or a tuple of them) on a
    raw input batch."""

    path: Path
    format: str
    parameters: int
    # Gradients flow from its outputs back to its inputs (the disagreement ascent needs them).
    differentiable: bool
    # Outputs already in this project's member shape ([B, 1, C] or [B, 1, 2, D]).
    native: bool = False

    def run(self, x: torch.Tensor) -> Any:
        raise NotImplementedError


class OnnxMember(MemberFile):
    """A member run in ONNX Runtime. Its graph translated into torch operations gives the
    gradients for the ascent (``graph``; None, with ``no_gradients`` saying why, when the
    graph cannot be translated or its translation does not match ONNX Runtime)."""

    def __init__(self, path: Path, device: torch.device | None = None) -> None:
        self.path, self.format = path, "onnx"
        self.session = _session(path, device)
        self.provider = self.session.get_providers()[0]  # the one that runs it (CPU if CUDA failed)
        self.parameters = parameter_count(path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(f"{path}: a member must take one input, this one takes "
                            f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.graph: OnnxGraph | None = None
        self.no_gradients = ""
        self.parity: float | None = None  # the translation's largest difference from ONNX Runtime
        try:
            self.graph = translate(path).to(device or torch.device("cpu"))
        except Unsupported as exc:
            self.no_gradients = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever the translation trips on, it is only for gradients
            self.no_gradients = f"its graph could not be translated to torch: {str(exc)[:200]}"

    @property  # type: ignore[override]
    def differentiable(self) -> bool:
        return self.graph is not None

    def outputs_available(self) -> int:
        return len(self.session.get_outputs())

    def _ort(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})

    def check_gradients(self, rows: np.ndarray) -> None:
        """Keep the translation only if it gives ONNX Runtime's outputs on ``rows``."""
        if self.graph is None:
            return
        feed = np.ascontiguousarray(rows, dtype=np.float32)
        try:
            worst = largest_difference(self.graph, feed, self._ort(feed))
        except Exception as exc:  # a translated operator that fails on these shapes
            self.graph, self.no_gradients = None, f"its torch translation fails: {str(exc)[:200]}"
            return
        self.parity = worst
        if not worst <= GRADIENT_PARITY:  # NaN too
            self.graph = None
            self.no_gradients = (f"its torch translation differs from ONNX Runtime by {worst:.1e} "
                                 f"(relative) on {len(feed)} training rows, more than {GRADIENT_PARITY:g}")

    def run(self, x: torch.Tensor) -> Any:
        if self.graph is not None and x.requires_grad and torch.is_grad_enabled():
            with torch.autocast(device_type=x.device.type, enabled=False):  # float32, always
                return self.graph(x.float())
        outs = self._ort(x.detach().float().cpu().numpy())
        return tuple(torch.as_tensor(np.asarray(o, dtype=np.float32)).to(x.device) for o in outs)


class TorchMember(MemberFile):
    """A PyTorch module on the training device. Held outside any module tree: an exported
    program's module refuses ``train()``/``eval()``; its mode was fixed when it was exported."""

    def __init__(self, path: Path, module: nn.Module, fmt: str, device: torch.device,
                 native: bool = False) -> None:
        self.path, self.format, self.differentiable, self.native = path, fmt, True, native
        self.module = module.to(device)
        for p in self.module.parameters():
            p.requires_grad_(False)  # the members are fixed; inputs may still need gradients
        self.parameters = int(sum(p.numel() for p in self.module.parameters()))
        self.device = device

    def run(self, x: torch.Tensor) -> Any:
        with torch.autocast(device_type=self.device.type, enabled=False):  # float32, always
            return self.module(x.to(self.device).float())


def _load_pt2(path: Path, device: torch.device) -> TorchMember:
    try:
        module = torch.export.load(str(path)).module()
    except Exception as exc:  # torch raises many types for a file that is not a program
        raise DataError(f"{path}: not a torch.export program torch.export.load can read: "
                        f"{str(exc)[:300]}") from exc
    return TorchMember(path, module, "torch.export", device)


def _load_state_dict(path: Path, data: Dataset, model: ModelConfig, device: torch.device) -> TorchMember:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one holding more than tensors and plain data
        raise DataError(f"{path}: not a state dict torch.load can read (weights only): "
                        f"{str(exc)[:300]}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # this project's member checkpoints keep it under "model"
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: expected a state dict (parameter name -> tensor), plain or under "
                        "a \"model\" key")
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: leave torch's RNG alone
        net = build_network(model, data, 1)
    want = net.state_dict()
    missing = [k for k in want if k not in obj]
    unexpected = [k for k in obj if k not in want]
    shapes = [f"{k} {list(obj[k].shape)} (network: {list(want[k].shape)})"
              for k in want if k in obj and obj[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        problems = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                problems.append(f"{label} {', '.join(items[:3])}{more}")
        raise DataError(f"{path}: not a state dict of the ensemble.member_model network (body "
                        f"{model.body!r}, head {model.head!r}): {'; '.join(problems)}")
    net.load_state_dict(obj)
    return TorchMember(path, net.eval(), "state_dict", device, native=True)


class FileEnsemble(nn.Module):
    """Members given as files behind the same output shape as a Hydra: [B, M, C] logits, or
    [B, M, 2, D] (mean, variance). Outputs come back on the input's device."""

    def __init__(self, files: list[MemberFile], data: Dataset, member_output: str) -> None:
        super().__init__()
        if member_output not in OUTPUT_KINDS:
            raise DataError(f"ensemble.member_output must be one of {OUTPUT_KINDS}, got {member_output!r}")
        self.files = files
        self.spec = net_spec(data)
        self.task = data.task
        self.member_output = member_output
        self.feature_shape = data.feature_shape
        self.out_dim = self.spec.out_dim
        mean, std = feature_stats(data.train.X.reshape(len(data.train), -1))
        self.x_mean, self.x_std = mean, std  # for the transfer set's noise and mixup
        for f in files:
            self._check(f, data)

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]

    @property
    def num_heads(self) -> int:
        return len(self.files)

    @property
    def differentiable(self) -> bool:
        """Whether gradients reach the inputs through every member (the ascent needs them)."""
        return all(f.differentiable for f in self.files)

    def summary(self) -> list[dict[str, Any]]:
        """Per file, for the report: name, format, parameters and where gradients come from."""
        out = []
        for f in self.files:
            if not isinstance(f, OnnxMember):
                gradients = "PyTorch"
            elif f.graph is not None:
                gradients = f"ONNX graph translated to torch ({f.parity:.1e} from ONNX Runtime)"
            else:
                gradients = f"none: {f.no_gradients}"
            runs_on = f.provider if isinstance(f, OnnxMember) else str(getattr(f, "device", "cpu"))
            out.append({"file": f.path.name, "format": f.format, "parameters": f.parameters,
                        "runs_on": runs_on, "gradients": gradients})
        return out

    def no_gradients(self) -> list[str]:
        """Why gradients do not reach the inputs, one line per member that gives none."""
        return [f"{f.path.name}: {f.no_gradients}" for f in self.files
                if isinstance(f, OnnxMember) and not f.differentiable]

    def _check(self, member: MemberFile, data: Dataset) -> None:
        path = member.path
        want = 1 if self.task == "classification" else 2
        if isinstance(member, OnnxMember) and member.outputs_available() < want:
            raise DataError(f"{path}: a {self.task} member must give {want} output(s) "
                            f"({'logits' if want == 1 else 'mean, variance'}), this one gives "
                            f"{member.outputs_available()}")
        probe = torch.as_tensor(data.train.X[:2].astype(np.float32))
        try:
            with torch.no_grad():
                outs = self._run_one(member, probe)
        except DataError:
            raise
        except Exception as exc:  # wrong feature shape or dtype, seen by the runtime
            raise DataError(f"{path}: running it on two training rows of shape "
                            f"{list(probe.shape)} failed: {str(exc)[:300]}") from exc
        expected = (2, self.out_dim) if self.task == "classification" else (2, 2, self.out_dim)
        if tuple(outs.shape) != expected:
            raise DataError(f"{path}: outputs of shape {list(outs.shape)} for 2 rows, expected "
                            f"{list(expected)} ({self.out_dim} {'classes' if self.task == 'classification' else 'outputs'})")
        if isinstance(member, OnnxMember):
            member.check_gradients(data.train.X[:PARITY_ROWS])

    def _run_one(self, member: MemberFile, x: torch.Tensor) -> torch.Tensor:
        """One member's outputs on raw inputs x: [B, C] logits or [B, 2, D]."""
        outs = member.run(x)
        b = x.shape[0]
        if member.native:  # this project's network: [B, 1, C] logits or [B, 1, 2, D]
            if self.task == "classification" and self.member_output == "probabilities":
                raise DataError(f"{member.path}: a state dict of this project's network gives "
                                "logits; set ensemble.member_output = \"logits\"")
            return outs.reshape(b, *outs.shape[2:])
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        if not isinstance(outs, (tuple, list)) or not all(isinstance(o, torch.Tensor) for o in outs):
            raise DataError(f"{member.path}: a member must return a tensor or a tuple of tensors, "
                            f"got {type(outs).__name__}")
        if self.task == "classification":
            first = outs[0].float()
            if self.member_output == "probabilities":
                if bool((first < 0).any()) or not torch.allclose(
                        first.sum(-1), torch.ones((), device=first.device), atol=1e-3):
                    raise DataError(f"{member.path}: member outputs are not probabilities (negative, "
                                    "or rows not summing to 1); set ensemble.member_output = \"logits\"")
                first = torch.log(first.clamp_min(1e-30))
            return first.reshape(b, -1)  # [B, C]
        if len(outs) < 2:
            raise DataError(f"{member.path}: a regression member must give 2 outputs (mean, "
                            f"variance), this one gives {len(outs)}")
        mean = outs[0].float().reshape(b, -1)
        var = outs[1].float().reshape(b, -1)
        if bool((var <= 0).any()):
            raise DataError(f"{member.path}: member variances must be > 0")
        return torch.stack([mean, var], dim=1)  # [B, 2, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.float().reshape(x.shape[0], *self.feature_shape)
        outs = []
        for member in self.files:
            out = self._run_one(member, batch).to(x.device)
            if not bool(torch.isfinite(out).all()):
                raise DataError(f"{member.path}: non-finite outputs on the transfer or evaluation inputs")
            outs.append(out)
        return torch.stack(outs, dim=1)  # [B, M, C] or [B, M, 2, D]

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Outputs from inputs normalized by the training rows' statistics (the ascent's space);
        gradients flow back to ``z`` when ``differentiable``."""
        mean = torch.as_tensor(self.x_mean, device=z.device)
        std = torch.as_tensor(self.x_std, device=z.device)
        return self.forward(z * std + mean)


def load_member_files(paths: tuple[str, ...], data: Dataset, expected_members: int,
                      member_output: str, member_model: ModelConfig | None = None,
                      device: torch.device | None = None) -> FileEnsemble:
    """Load and check every member file; PyTorch members are placed on ``device`` (the CPU
    by default)."""
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(f"member file(s) {', '.join(missing)} do not exist")
    if expected_members and len(files) != expected_members:
        raise DataError(f"{len(files)} member files given, the config says ensemble.members = "
                        f"{expected_members}")
    unknown = [str(p) for p in files if p.suffix.lower() not in FORMATS]
    if unknown:
        raise DataError(f"member file(s) {', '.join(unknown)}: unknown format; give .onnx, .pt2 "
                        "(torch.export) or .pt/.pth (a state dict of ensemble.member_model)")
    device = device or torch.device("cpu")
    loaded: list[MemberFile] = []
    for p in files:
        fmt = FORMATS[p.suffix.lower()]
        if fmt == "onnx":
            loaded.append(OnnxMember(p, device))
        elif fmt == "torch.export":
            loaded.append(_load_pt2(p, device))
        else:
            loaded.append(_load_state_dict(p, data, member_model or ModelConfig(), device))
    ensemble = FileEnsemble(loaded, data, member_output)
    log.info("ensemble: %d members from files (%s) in %s", len(files),
             ", ".join(sorted({f.format for f in loaded})), files[0].parent)
    return ensemble
