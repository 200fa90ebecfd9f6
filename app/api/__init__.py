"""The HTTP surface: the V1 and V2 routes, their codecs, OpenAPI, request parsing, the
error answers and the one ASGI middleware. Routes decode, call the inference service
(app/service.py) and encode; they never reach the runtime themselves."""
