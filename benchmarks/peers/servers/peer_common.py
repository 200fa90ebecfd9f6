"""What every peer server shares: the ONNX Runtime session and the answer per instance.

Each peer server imports this module from its own virtual environment, which has only numpy,
onnxruntime and the peer's own packages: keep it free of anything else.

The answer per instance carries the six outputs of the project's V1 answer that describe the
prediction and its uncertainty (the project also returns a label, a class index and an OOD
block, which no peer computes):

    {"mean_probs": [...], "total_uncertainty": x, "data_uncertainty": x,
     "model_uncertainty": x, "head_disagreement": x, "disagreement_rate": x}
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

INPUT = "input"
OUTPUTS = ("mean_probs", "total_uncertainty", "data_uncertainty", "model_uncertainty",
           "head_disagreement", "disagreement_rate")
MODEL_NAME = "digits"  # the name every server serves the model under


def session(model: str, threads: int) -> ort.InferenceSession:
    """The model on ONNX Runtime's CPU provider with ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def infer(sess: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    """A float32 batch ``[n, features]`` -> the six outputs, each with leading dimension n."""
    return dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {INPUT: x})))


def instances(out: dict[str, np.ndarray]) -> list[dict]:
    """The outputs of one call, one dict per instance (lists built once per output)."""
    columns = {name: out[name].tolist() for name in OUTPUTS}
    return [dict(zip(OUTPUTS, row)) for row in zip(*columns.values())]


def as_batch(instances_field: object) -> np.ndarray:
    """The ``instances`` field of a V1-style body as a float32 batch."""
    return np.asarray(instances_field, dtype=np.float32)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every peer server takes (each adds its own)."""
    p = argparse.ArgumentParser(description=doc, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model.onnx file")
    p.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    return p
