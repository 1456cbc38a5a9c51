"""The app's OpenAPI document, telling what the server really answers.

FastAPI documents a 422 it never sends here (validation failures are 400s in each API's own
error shape) and none of the statuses the edge and the backend produce. This rewrites every
operation's responses once, when the document is first asked for: each error status the
request can meet, with its API's error schema (OpenAI, Ollama or Anthropic by path), and
``Retry-After`` where we send it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from serve_app.core.request_limits import RequestLimits
from serve_app.edge.middleware import OPEN_PATHS, api_of_path
from serve_app.transport.error_schemas import AnthropicErrorBody, OllamaErrorBody, OpenAIErrorBody

_ERROR_MODELS: dict[str, type[BaseModel]] = {
    "openai": OpenAIErrorBody,
    "ollama": OllamaErrorBody,
    "anthropic": AnthropicErrorBody,
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}
_WITH_RETRY_AFTER = {429, 503, 529}

# Every status the edge or the backend may answer an operation with, and why.
_COMMON = {
    408: "The body did not arrive within the server's body timeout.",
    431: "Too many request headers, or too many bytes of them.",
    400: "The request is invalid (a field, the JSON itself, or text that is not valid Unicode).",
    401: "The API key is missing or wrong (when keys are configured).",
    404: "No such model, object or route, or the key may not use it.",
    413: "The body is larger than the server's limit.",
    429: "A per-key limit or the model's queue is full; retry after Retry-After seconds.",
    500: "The server failed; the body carries a request id and the detail is in the server log.",
    503: "The model is starting or unavailable, or the state store is down; retry later.",
}
_GENERATING = {504: "Our generation deadline passed before the first byte (not retried by SDKs)."}
_ANTHROPIC = {529: "The model's replicas and queue are full (Anthropic's overloaded_error)."}


def _statuses(path: str, method: str, keyed: bool) -> dict[int, str]:
    """The error statuses an operation can answer (beyond those its route declares)."""
    if path in OPEN_PATHS:
        return {status: _COMMON[status] for status in (408, 413, 431)}
    statuses = dict(_COMMON)
    if not keyed:
        del statuses[401]
    if method in ("post", "put", "patch"):
        statuses.update(_GENERATING)
    if api_of_path(path) == "anthropic":
        statuses.update(_ANTHROPIC)
    return statuses


def _error_response(description: str, status: int, schema_ref: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": schema_ref}}},
    }
    if status in _WITH_RETRY_AFTER:
        response["headers"] = dict(_RETRY_AFTER)
    return response


def _members(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a property's schema (itself when it is not a union)."""
    return list(schema.get("anyOf") or schema.get("oneOf") or [schema])


def _cap(schema: dict[str, Any], keyword: str, value: int, kind: str, item_type: str | None = None) -> None:
    """Set ``keyword`` to ``value`` on the members of ``schema`` of type ``kind`` (arrays of
    ``item_type`` items when given)."""
    for member in _members(schema):
        if member.get("type") != kind:
            continue
        if item_type is not None and member.get("items", {}).get("type") != item_type:
            continue
        member[keyword] = value


# Request schemas whose ``input`` is a list of embedding inputs.
_EMBEDDING_REQUESTS = ("EmbeddingsRequest", "EmbedRequest")


def _state_limits(components: dict[str, Any], limits: RequestLimits, dimensions: int | None) -> None:
    """Write the server's configured limits into the request schemas, so a schema-valid request
    is one the server accepts (the limits are settings, checked by the gateway)."""
    for name, schema in components.items():
        properties = schema.get("properties", {})
        if "n" in properties:
            _cap(properties["n"], "maximum", limits.max_n, "integer")
        if "top_logprobs" in properties:
            _cap(properties["top_logprobs"], "maximum", limits.max_top_logprobs, "integer")
        for stop in ("stop", "stop_sequences"):
            if stop in properties:
                _cap(properties[stop], "maxItems", limits.max_stop_sequences, "array")
        if "images" in properties:
            _cap(properties["images"], "maxItems", limits.max_images, "array")
        if name in _EMBEDDING_REQUESTS and "input" in properties:
            _cap(properties["input"], "maxItems", limits.max_embedding_inputs, "array", "string")
            _cap(properties["input"], "maxItems", limits.max_embedding_inputs, "array", "array")
        if name in _EMBEDDING_REQUESTS and "dimensions" in properties and dimensions is not None:
            _cap(properties["dimensions"], "maximum", dimensions, "integer")
        if name == "CompletionRequest" and "prompt" in properties:
            _cap(properties["prompt"], "maxItems", limits.max_completion_prompts, "array", "string")
            _cap(properties["prompt"], "maxItems", limits.max_completion_prompts, "array", "array")


def truthful_openapi(
    app: FastAPI, limits: RequestLimits, dimensions: int | None = None, keyed: bool = False
) -> dict[str, Any]:
    """Build the document of ``app`` with every operation's real error responses and the
    server's request limits (``dimensions``: the most any embedding model here has; ``keyed``:
    whether API keys are configured, so routes need one)."""
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {}).setdefault("schemas", {})
    refs: dict[str, str] = {}
    for api, model in _ERROR_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            components[name] = definition
        title = str(schema.get("title", model.__name__))
        components[title] = schema
        refs[api] = f"#/components/schemas/{title}"
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    _state_limits(components, limits, dimensions)
    # Keys, when configured, come as a bearer token or in x-api-key (Anthropic's SDK); probes
    # stay open. Without keys every route is open, and the document says so.
    if keyed:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        }
        document["security"] = [{"bearer": []}, {"apiKey": []}]
    for path, operations in document.get("paths", {}).items():
        ref = refs[api_of_path(path)]
        for method, operation in operations.items():
            if path in OPEN_PATHS:
                operation["security"] = []
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in _statuses(path, method, keyed).items():
                responses.setdefault(str(status), _error_response(description, status, ref))
            for status, response in responses.items():
                # Statuses a route declares itself (a 403) get the error schema too.
                if status.isdigit() and int(status) >= 400 and "content" not in response:
                    response.update(_error_response(response.get("description", "Refused."), int(status), ref))
    return document


def install_truthful_openapi(
    app: FastAPI, limits: RequestLimits, dimensions: int | None = None, keyed: bool = False
) -> None:
    """Serve :func:`truthful_openapi` at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = truthful_openapi(app, limits, dimensions, keyed)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
