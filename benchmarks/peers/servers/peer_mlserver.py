"""MLServer (Seldon): a custom runtime over the ONNX Runtime session, started with
`mlserver start` on a model repository this script writes.

Run as a script, it writes ``settings.json`` and ``digits/model-settings.json`` into
--workdir and replaces itself with `mlserver start WORKDIR` from the same virtual
environment; MLServer then imports this module again for ``DigitsRuntime``. MLServer's
defaults otherwise: one inference worker process beside the HTTP process
(``parallel_workers`` 1; ``--parallel-workers 0`` runs inference in the HTTP process), a gRPC
server and a metrics server on their own ports, no adaptive batching unless
``--max-batch-size`` > 1 (with ``--max-batch-time`` seconds).

    POST /v2/models/digits/infer     Open Inference Protocol V2 (all six outputs answered)
    GET  /v2/models/digits/ready     200 once loaded

    python peer_mlserver.py --model model.onnx --port 9000 --grpc-port 9001 \
        --metrics-port 9002 --workdir SCRATCH [--threads 1] [--parallel-workers 0] \
        [--max-batch-size 64 --max-batch-time 0.002]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

import peer_common


class DigitsRuntime(MLModel):
    """model-settings.json: parameters.uri is the model file, parameters.extra.threads the
    intra-op threads."""

    async def load(self) -> bool:
        params = self.settings.parameters
        threads = int((params.extra or {}).get("threads", 1))
        self._sess = peer_common.session(params.uri, threads)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        out = peer_common.infer(self._sess, x)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, out[name]) for name in peer_common.OUTPUTS],
        )


def write_repository(args) -> Path:
    root = Path(args.workdir).resolve()
    model_dir = root / peer_common.MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    settings = {"host": "127.0.0.1", "http_port": args.port, "grpc_port": args.grpc_port,
                "metrics_port": args.metrics_port}
    if args.parallel_workers is not None:
        settings["parallel_workers"] = args.parallel_workers
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model = {
        "name": peer_common.MODEL_NAME,
        "implementation": f"{Path(__file__).stem}.DigitsRuntime",
        "parameters": {"uri": str(Path(args.model).resolve()), "extra": {"threads": args.threads}},
    }
    if args.max_batch_size > 1:
        model["max_batch_size"] = args.max_batch_size
        model["max_batch_time"] = args.max_batch_time
    (model_dir / "model-settings.json").write_text(json.dumps(model, indent=2))
    return root


if __name__ == "__main__":
    p = peer_common.parser(__doc__)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--workdir", required=True, help="scratch folder for the model repository")
    p.add_argument("--parallel-workers", type=int, default=None,
                   help="inference worker processes (default: MLServer's, 1)")
    p.add_argument("--max-batch-size", type=int, default=0, help="> 1: adaptive batching")
    p.add_argument("--max-batch-time", type=float, default=0.002, help="seconds")
    args = p.parse_args()
    root = write_repository(args)
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    exe = str(Path(sys.executable).parent / "mlserver")
    os.chdir(root)
    os.execve(exe, [exe, "start", str(root)], {**os.environ, "PYTHONPATH": path})
