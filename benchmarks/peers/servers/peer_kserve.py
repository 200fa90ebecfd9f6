"""KServe's Python model server: a ``kserve.Model`` with load()/predict(), served by
``kserve.ModelServer`` with one worker; KServe's defaults otherwise (a gRPC server on its
own port, a latency log line per request unless ``--no-latency-log``, uvicorn's access log).
KServe's Python server has no request batching.

    POST /v1/models/digits:predict   {"instances": [[64 floats], ...]} -> {"predictions": [...]}
    GET  /v2/health/ready            200 once the model is loaded

    python peer_kserve.py --model model.onnx --port 9000 --grpc-port 9001 [--threads 1] [--no-latency-log]
"""

from __future__ import annotations

import sys

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

        def predict(self, payload: dict, headers: dict | None = None) -> dict:
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
