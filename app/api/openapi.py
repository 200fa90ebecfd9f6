"""OpenAPI for the inference endpoints, which are plain Starlette routes, and the schema of
the whole service.

FastAPI's per-request machinery (dependency resolution, response-model handling) costs
about 0.1 ms of CPU per request on this stack, a quarter of the service's whole per-request
budget (BENCHMARKS.md). The two inference endpoints therefore run as Starlette routes inside
the FastAPI app, parse and check their own bodies, and get their OpenAPI entries here, from
the same pydantic models. Every other endpoint is an ordinary FastAPI route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.error_responses import INFERENCE_ERROR_STATUSES
from app.api.http import TemplatedRoute


EndpointT = TypeVar("EndpointT", bound=Callable[..., Any])


def get_and_head(router: APIRouter, path: str, **options: Any) -> Callable[[EndpointT], EndpointT]:
    """``router.get(path, **options)`` and HEAD on the same path (RFC 9110, 9.3.2: GET's
    answer without its body), which FastAPI's routes do not answer by themselves: the same
    endpoint, dependencies (the API key) and headers; the server (uvicorn) drops the body.
    Left out of the schema, where it would only repeat GET."""

    def register(endpoint: EndpointT) -> EndpointT:
        hidden = {**options, "include_in_schema": False}
        router.api_route(path, methods=["HEAD"], **hidden)(endpoint)
        return router.get(path, **options)(endpoint)

    return register


@dataclass(frozen=True)
class InferenceRoute:
    """An inference endpoint: its Starlette route and its OpenAPI operation."""

    path: str
    endpoint: Callable[[Request], Awaitable[Response]]
    summary: str
    tag: str
    request_model: type[Any]  # a pydantic model or TypedDict
    response_model: type[BaseModel]
    error_model: type[BaseModel]
    operation_id: str | None = None  # default: "<endpoint name>_<tag>"

    def route(self) -> Route:
        return TemplatedRoute(self.path, self.endpoint, methods=["POST"], include_in_schema=False)

    def operation(self) -> dict[str, Any]:
        def ref(model: type[Any]) -> dict[str, Any]:
            return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}

        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string", "title": p}}
            for p in re.findall(r"{(\w+)}", self.path)
        ]
        responses: dict[str, Any] = {
            "200": {"description": "Successful Response", "content": ref(self.response_model)}
        }
        for status in INFERENCE_ERROR_STATUSES:
            responses[str(status)] = {"description": "Error", "content": ref(self.error_model)}
        return {
            "tags": [self.tag],
            "summary": self.summary,
            "operationId": self.operation_id or f"{self.endpoint.__name__}_{self.tag}",
            "parameters": params,
            "requestBody": {"required": True, "content": ref(self.request_model)},
            "responses": responses,
        }


def build_openapi(app: FastAPI, inference: Sequence[InferenceRoute]) -> dict[str, Any]:
    """FastAPI's schema of the ordinary routes, with the inference operations added."""
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for item in inference:
        schema["paths"].setdefault(item.path, {})["post"] = item.operation()
        for model in (item.request_model, item.response_model, item.error_model):
            extra = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
            components.update(extra.pop("$defs", {}))
            components[model.__name__] = extra
    return schema


def install_openapi(app: FastAPI, inference: Sequence[InferenceRoute]) -> None:
    """Serve ``build_openapi``'s schema (built once, on first request) as /openapi.json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, inference)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
