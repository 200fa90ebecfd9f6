"""The HTTP surface: the V1 and V2 routes, their codecs, OpenAPI, the error answers and the
one ASGI middleware. Inference routes hand a call and their protocol's codec to the data plane
(app/dataplane.py); no route reaches the runtime itself."""
