"""BentoML: a ``@bentoml.service`` with one worker, served by `bentoml serve`; BentoML's
defaults otherwise. ``--batch`` serves ``DigitsBatched`` instead, whose API is
``batchable=True`` (BentoML's adaptive batching, up to ``--max-batch-size`` instances).

Run as a script, it replaces itself with `bentoml serve peer_bentoml:Digits` (or
``:DigitsBatched``) from the same virtual environment; the model file and the intra-op threads
reach the services through PEER_BENTOML_MODEL / PEER_BENTOML_THREADS.

    POST /predict   {"instances": [[64 floats], ...]} -> {"predictions": [...]}
                    (batched: a list of per-instance answers)
    GET  /readyz    200 once the service is up

    python peer_bentoml.py --model model.onnx --port 9000 [--threads 1] [--batch --max-batch-size 64]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml
import numpy as np

import peer_common

MODEL = os.environ.get("PEER_BENTOML_MODEL", "model.onnx")
THREADS = int(os.environ.get("PEER_BENTOML_THREADS", "1"))
MAX_BATCH = int(os.environ.get("PEER_BENTOML_MAX_BATCH", "64"))


@bentoml.service(workers=1)
class Digits:
    def __init__(self) -> None:
        self._sess = peer_common.session(MODEL, THREADS)

    @bentoml.api
    def predict(self, instances: list[list[float]]) -> dict:
        out = peer_common.infer(self._sess, peer_common.as_batch(instances))
        return {"predictions": peer_common.instances(out)}


@bentoml.service(workers=1)
class DigitsBatched:
    def __init__(self) -> None:
        self._sess = peer_common.session(MODEL, THREADS)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH)
    def predict(self, instances: np.ndarray) -> list[dict]:
        out = peer_common.infer(self._sess, instances.astype(np.float32, copy=False))
        return peer_common.instances(out)


if __name__ == "__main__":
    p = peer_common.parser(__doc__)
    p.add_argument("--batch", action="store_true", help="serve the batchable API")
    p.add_argument("--max-batch-size", type=int, default=64)
    args = p.parse_args()
    env = {**os.environ, "PEER_BENTOML_MODEL": str(Path(args.model).resolve()),
           "PEER_BENTOML_THREADS": str(args.threads), "PEER_BENTOML_MAX_BATCH": str(args.max_batch_size),
           "BENTOML_DO_NOT_TRACK": "True"}
    here = Path(__file__).resolve().parent
    target = f"{Path(__file__).stem}:{'DigitsBatched' if args.batch else 'Digits'}"
    exe = str(Path(sys.executable).parent / "bentoml")
    os.execve(exe, [exe, "serve", target, "--host", "127.0.0.1", "--port", str(args.port),
                    "--working-dir", str(here)], env)
