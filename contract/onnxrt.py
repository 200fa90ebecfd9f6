"""ONNX Runtime session options used by every session of the project (export checks,
ONNX ensemble members, the service)."""

from __future__ import annotations

import onnxruntime as ort


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """Quiet options with thread pools that sleep rather than spin when idle.

    Several sessions share a process (versions in the service, M members in training):
    spin-waiting pools thrash on few cores. ``intra_op_threads`` 0 leaves ONNX Runtime's
    default (one thread per core).
    """
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3
    return opts
