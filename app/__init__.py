"""hydra-serving's HTTP service: FastAPI and ONNX Runtime, never torch.

Layers, each importing only those below it: ``api`` (HTTP routes and codecs) -> ``service``
(the inference service) -> ``serving`` (repository, sessions, batching) -> ``monitoring``
(metrics, live gauges, live drift, logs) -> the shared ``contract`` package."""
