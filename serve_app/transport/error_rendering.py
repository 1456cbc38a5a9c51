"""Pure functions that render :class:`ServingError` in each API's own shape."""

from __future__ import annotations

from typing import Any

from serve_app.core.errors import ContextLengthExceeded, ServingError

# Ollama's own words for a prompt over the context (its runners' errorInputTooLong).
OLLAMA_CONTEXT_MESSAGE = "the input length exceeds the context length"


def _message_with_request_id(error: ServingError, request_id: str | None) -> str:
    return f"{error.message} (request id: {request_id})" if request_id else error.message


def openai_error_body(error: ServingError, request_id: str | None = None) -> dict[str, Any]:
    """OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": _message_with_request_id(error, request_id),
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


def ollama_error_body(error: ServingError, request_id: str | None = None) -> dict[str, Any]:
    """Ollama's envelope: ``{"error": "message"}``; context errors lead with Ollama's wording."""
    message = _message_with_request_id(error, request_id)
    if isinstance(error, ContextLengthExceeded):
        message = f"{OLLAMA_CONTEXT_MESSAGE} ({message})"
    return {"error": message}


def error_headers(error: ServingError, request_id: str | None = None) -> dict[str, str]:
    """Headers every error response carries (request id, Retry-After, x-should-retry...)."""
    headers = dict(error.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return headers
