"""The floor: the simplest server a user could write around the model.

A bare Starlette route on uvicorn (uvicorn[standard]: uvloop and httptools), ONNX Runtime
called on the event loop for every request (no batching), the answer written with the
standard library's json (Starlette's JSONResponse). uvicorn's defaults otherwise, its access
log included.

    POST /v1/models/digits:predict   {"instances": [[64 floats], ...]} -> {"predictions": [...]}
    GET  /health                     200 once the session is loaded

    python peer_floor.py --model model.onnx --port 9000 [--threads 1]
"""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import peer_common


def app(model: str, threads: int) -> Starlette:
    sess = peer_common.session(model, threads)

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        out = peer_common.infer(sess, peer_common.as_batch(body["instances"]))
        return JSONResponse({"predictions": peer_common.instances(out)})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(routes=[
        Route(f"/v1/models/{peer_common.MODEL_NAME}:predict", predict, methods=["POST"]),
        Route("/health", health),
    ])


if __name__ == "__main__":
    args = peer_common.parser(__doc__).parse_args()
    uvicorn.run(app(args.model, args.threads), host="127.0.0.1", port=args.port)
