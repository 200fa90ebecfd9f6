"""LitServe (Lightning AI): a LitAPI on one CPU worker behind one API-server process,
LitServe's defaults otherwise. ``--max-batch-size N`` > 1 turns on LitServe's own batching
(requests gathered in the worker for up to ``--batch-timeout`` seconds).

    POST /predict   {"instances": [[64 floats], ...]} -> {"predictions": [...]}
    GET  /health    200 once the worker is set up

    python peer_litserve.py --model model.onnx --port 9000 [--threads 1] \
        [--max-batch-size 64 --batch-timeout 0.002]
"""

from __future__ import annotations

import litserve as ls
import numpy as np

import peer_common


class DigitsAPI(ls.LitAPI):
    """One ONNX Runtime call per request."""

    def __init__(self, model: str, threads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self._model, self._threads = model, threads

    def setup(self, device) -> None:
        self._sess = peer_common.session(self._model, self._threads)

    def decode_request(self, request: dict) -> np.ndarray:
        return peer_common.as_batch(request["instances"])

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return peer_common.infer(self._sess, x)

    def encode_response(self, output: dict[str, np.ndarray]) -> dict:
        return {"predictions": peer_common.instances(output)}


class BatchedDigitsAPI(DigitsAPI):
    """One call per batch of requests. A request may carry several instances, so the
    requests' sizes travel with the batch to unbatch()."""

    def batch(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, batch: tuple[np.ndarray, list[int]]):
        x, sizes = batch
        return peer_common.infer(self._sess, x), sizes

    def unbatch(self, output) -> list[dict[str, np.ndarray]]:
        out, sizes = output
        bounds = np.cumsum([0, *sizes])
        return [{k: v[a:b] for k, v in out.items()} for a, b in zip(bounds[:-1], bounds[1:])]


if __name__ == "__main__":
    p = peer_common.parser(__doc__)
    p.add_argument("--max-batch-size", type=int, default=1, help="> 1: LitServe's batching")
    p.add_argument("--batch-timeout", type=float, default=0.0, help="seconds")
    args = p.parse_args()
    if args.max_batch_size > 1:
        api = BatchedDigitsAPI(args.model, args.threads, max_batch_size=args.max_batch_size,
                               batch_timeout=args.batch_timeout)
    else:
        api = DigitsAPI(args.model, args.threads)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False)
