"""ONNX Runtime sessions: load a model file, check it against the contract, warm it up.

Nothing here touches the event loop: loading and ``LoadedModel.infer`` are blocking and run
in worker threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import re
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from contract.onnxrt import session_options
from contract.model import INPUT_NAME, ContractError, ModelMetadata, expected_output_shapes, head_names
from contract.ood import Arrays, add_outputs

logger = logging.getLogger("app.runtime")  # the name log lines carry (their "logger" field)

# One inference's arrays by output name: the graph's outputs and the ones the service adds
# (contract.ood.ADDED_OUTPUTS).
OutputArrays = Arrays
WARMUP_BATCH = 2
HEAD_OUTPUT = re.compile(r"head_[0-9]+")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One version of one model, ready to run. ``infer`` is thread-safe (ORT sessions are).
    Compared and hashed by identity: each load is its own object."""

    name: str
    version: int
    path: Path
    sha256: str
    meta: ModelMetadata
    session: ort.InferenceSession
    provider: str
    # On an accelerator: the largest |difference| from the CPU provider on a probe batch, per
    # output (None on the CPU provider itself).
    parity: dict[str, float] | None = None

    @property
    def input_shape(self) -> list[int]:
        """[-1, *feature_shape]: -1 is the dynamic batch, as the V2 metadata writes it."""
        return [-1, *self.meta.feature_shape]

    @cached_property
    def head_outputs(self) -> frozenset[str]:
        """The per-head outputs ``head_m``: fetched only for requests that ask for them."""
        return frozenset(head_names(self.meta.num_heads))

    @cached_property
    def _fetched(self) -> tuple[list[str], list[str]]:
        """The graph outputs fetched without and with the per-head ones."""
        every = self.meta.output_names
        return [n for n in every if n not in self.head_outputs], every

    def output_names(self, heads: bool) -> list[str]:
        """The graph outputs a call fetches: the per-head ``head_m`` only when ``heads``."""
        return self._fetched[1] if heads else self._fetched[0]

    def infer(self, batch: npt.NDArray[np.float32], heads: bool = False) -> OutputArrays:
        """Run the graph on [B, *feature_shape] float32; add the service's extra outputs.
        ``heads``: fetch the per-head outputs too (else ONNX Runtime is asked only for the
        others)."""
        names = self.output_names(heads)
        values = self.session.run(names, {INPUT_NAME: batch})
        return add_outputs(self.meta.task, self.meta.ood, dict(zip(names, values)), batch.shape[0])


ProviderSpec = str | tuple[str, dict[str, str]]


def provider_specs(providers: list[str], cuda_tf32: bool = False) -> list[ProviderSpec]:
    """ONNX Runtime's provider list with our options. The CUDA provider computes float32
    matrix products in TF32 by default, which moves head log-probabilities by about 1e-2 and
    can flip a head's argmax; off unless asked for, so CUDA and CPU agree to float32 rounding."""
    return [(p, {"use_tf32": "1" if cuda_tf32 else "0"}) if p == "CUDAExecutionProvider" else p
            for p in providers]


def _cuda_libraries_load() -> str | None:
    """None when ONNX Runtime's CUDA provider library and the CUDA libraries it links (cuBLAS,
    cuDNN, the runtime) load in this process, else why not. Asking ONNX Runtime for the provider
    where they do not load prints an error on every session before it falls back to the CPU."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this ONNX Runtime build has no CUDA provider"
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(library))  # what ONNX Runtime does first; fails on a missing dependency
    except OSError as exc:
        return f"its libraries do not load ({exc})"
    return None


def runtime_providers(requested: list[str]) -> tuple[list[str], str]:
    """The providers to ask ONNX Runtime for, in order, and one sentence that says which
    provider runs and why: CUDA only where its libraries load."""
    if "CUDAExecutionProvider" not in requested:
        return list(requested), f"providers {', '.join(requested)} as configured (HYDRA_PROVIDERS)"
    why_not = _cuda_libraries_load()
    if why_not is None:
        return list(requested), (
            "CUDAExecutionProvider: its libraries load (each model's session says whether a GPU "
            "takes it; parity with the CPU provider is measured at load)"
        )
    rest = [p for p in requested if p != "CUDAExecutionProvider"]
    if not rest:
        raise RuntimeError(f"HYDRA_PROVIDERS asks for CUDAExecutionProvider only, but {why_not}")
    return rest, f"{rest[0]}: CUDAExecutionProvider left out because {why_not}"


PARITY_ROWS = 16


def measure_parity(data: bytes, session: ort.InferenceSession, meta: ModelMetadata,
                   intra_op_threads: int = 0) -> dict[str, float]:
    """Largest |difference| per graph output between ``session`` and a CPU session of the same
    bytes, on a fixed probe batch (spread over the raw input range of typical features)."""
    cpu = ort.InferenceSession(data, sess_options=session_options(intra_op_threads),
                               providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 16.0, size=(PARITY_ROWS, *meta.feature_shape)).astype(np.float32)
    names = meta.output_names
    got = session.run(names, {INPUT_NAME: x})
    want = cpu.run(names, {INPUT_NAME: x})
    return {n: float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
            for n, g, w in zip(names, got, want)}


def load_model(
    name: str,
    version: int,
    path: Path,
    *,
    providers: list[str],
    intra_op_threads: int = 0,
    cuda_tf32: bool = False,
    data: bytes | None = None,
) -> LoadedModel:
    """Read, check and warm up one model file. Raises ContractError with what was wrong.

    ``data``: the file's bytes, already read (the repository reads them in a thread of their
    own, where a read that never finishes holds up nothing else); else the file is read here."""
    if data is None:
        data = path.read_bytes()  # one read: a file replaced meanwhile cannot mix two versions
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(intra_op_threads),
            providers=provider_specs(providers, cuda_tf32),
        )
    except Exception as exc:  # ORT raises its own exception types for any unreadable file
        raise ContractError(f"ONNX Runtime cannot load {path.name}: {exc}") from exc
    meta = ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
    check_graph(session, meta)
    active = session.get_providers()
    model = LoadedModel(
        name=name,
        version=version,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        meta=meta,
        session=session,
        provider=active[0] if active else "unknown",
    )
    warm_up(model)
    if model.provider != "CPUExecutionProvider":
        try:
            parity = measure_parity(data, session, meta, intra_op_threads)
        except Exception as exc:  # the CPU reference failing is a broken file, like warm-up
            raise ContractError(f"parity check against the CPU provider failed: {exc}") from exc
        worst = max(parity.values(), default=0.0)
        logger.info("model %s version %s on %s: largest difference from the CPU provider %.2g",
                    name, version, model.provider, worst,
                    extra={"model": name, "version": version, "event": "provider_parity"})
        model = replace(model, parity=parity)
    return model


def _dims_match(actual: list[object], expected: list[int | str]) -> bool:
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        # Symbolic or unknown dims are checked at warm-up, on real output arrays.
        if isinstance(e, int) and isinstance(a, int) and a != e:
            return False
    return True


def check_graph(session: ort.InferenceSession, meta: ModelMetadata) -> None:
    """The graph's input and outputs are the contract's, with compatible shapes and types."""
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ContractError(f"one input {INPUT_NAME!r} expected, got {[i.name for i in inputs]}")
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise ContractError(f"input {INPUT_NAME!r} must be tensor(float), got {inp.type}")
    expected_in: list[int | str] = ["batch", *meta.feature_shape]
    if not _dims_match(list(inp.shape), expected_in):
        raise ContractError(f"input shape {expected_in} expected, got {inp.shape}")
    outputs = {o.name: o for o in session.get_outputs()}
    heads = sorted((n for n in outputs if HEAD_OUTPUT.fullmatch(n)), key=lambda n: int(n[5:]))
    if len(heads) != meta.num_heads:
        raise ContractError(
            f"hydra.num_heads is {meta.num_heads}, but the graph has {len(heads)} head outputs "
            f"({', '.join(heads[:3])}{', ...' if len(heads) > 3 else ''})"
        )
    missing = [n for n in meta.output_names if n not in outputs]
    if missing:
        raise ContractError(f"outputs {missing} missing; the contract needs {meta.output_names}")
    for name, shape in expected_output_shapes(meta).items():
        out = outputs[name]
        if out.type != "tensor(float)":
            raise ContractError(f"output {name!r} must be tensor(float), got {out.type}")
        if not _dims_match(list(out.shape), shape):
            raise ContractError(f"output {name!r}: shape {shape} expected, got {out.shape}")


def warm_up(model: LoadedModel) -> None:
    """One inference on a small batch: shapes as the contract says and every value finite."""
    x = np.zeros((WARMUP_BATCH, *model.meta.feature_shape), dtype=np.float32)
    try:
        out = model.infer(x, heads=True)
    except Exception as exc:  # ORT failures at run time come as its own exception types
        raise ContractError(f"warm-up inference failed: {exc}") from exc
    for name, shape in expected_output_shapes(model.meta).items():
        want = tuple(WARMUP_BATCH if d == "batch" else d for d in shape)
        if out[name].shape != want:
            raise ContractError(f"warm-up: output {name!r} shape {want} expected, got {out[name].shape}")
        if not np.all(np.isfinite(out[name])):
            raise ContractError(f"warm-up: output {name!r} has NaN or infinite values")
    logger.debug("warm-up passed for %s/%s", model.name, model.version)
