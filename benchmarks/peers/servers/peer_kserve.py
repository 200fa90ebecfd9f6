"""KServe's Python model server: a ``kserve.Model`` with load()/predict(), served by
``kserve.ModelServer`` with one worker; KServe's defaults otherwise (a gRPC server on its
own port, a latency log line per request unless ``--no-latency-log``, uvicorn's access log).
KServe's Python server has no request batching.

    POST /v1/models/digits:predict   {"instances": [[64 floats], ...]} -> {"predictions": [...]}
    gRPC inference.GRPCInferenceService/ModelInfer on --grpc-port (Open Inference Protocol):
                                     one FP32 input [n, 64] -> the six outputs, each FP32
                                     [n, ...] as raw_output_contents
    GET  /v2/health/ready            200 once the model is loaded

KServe 0.21 calls ``predict`` with the V1 body (a dict) for REST and with a
``kserve.InferRequest`` for gRPC; the gRPC answer is a ``kserve.InferResponse`` whose outputs
are numpy arrays, which KServe sends as raw bytes.

    python peer_kserve.py --model model.onnx --port 9000 --grpc-port 9001 [--threads 1] [--no-latency-log]
"""

from __future__ import annotations

import sys

import numpy as np

import peer_common


def serve(model: str, port: int, grpc_port: int, threads: int, latency_log: bool) -> None:
    # kserve reads sys.argv with its own parser when it is imported, and with argparse's
    # prefix matching it would take --model for its --model_name: it sees no options of ours.
    sys.argv = sys.argv[:1]
    import kserve

    class Digits(kserve.Model):
        def __init__(self) -> None:
            super().__init__(peer_common.MODEL_NAME)
            self.load()

        def load(self) -> bool:
            self._sess = peer_common.session(model, threads)
            self.ready = True
            return self.ready

        def predict(self, payload, headers: dict | None = None):
            if isinstance(payload, kserve.InferRequest):  # gRPC (Open Inference Protocol)
                x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
                out = peer_common.infer(self._sess, x)
                outputs = []
                for name in peer_common.OUTPUTS:
                    tensor = kserve.InferOutput(name, list(out[name].shape), "FP32")
                    tensor.set_data_from_numpy(out[name], binary_data=True)
                    outputs.append(tensor)
                return kserve.InferResponse(payload.id, self.name, outputs)
            out = peer_common.infer(self._sess, peer_common.as_batch(payload["instances"]))
            return {"predictions": peer_common.instances(out)}

    server = kserve.ModelServer(http_port=port, grpc_port=grpc_port, workers=1,
                                enable_latency_logging=latency_log)
    server.start([Digits()])


if __name__ == "__main__":
    p = peer_common.parser(__doc__)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--no-latency-log", action="store_true", help="enable_latency_logging=False")
    args = p.parse_args()
    serve(args.model, args.port, args.grpc_port, args.threads, not args.no_latency_log)
