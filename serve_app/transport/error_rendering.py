"""Pure functions that render :class:`ServingError` in each API's own shape."""

from __future__ import annotations

from typing import Any

from serve_app.core.errors import ContextLengthExceeded, Overloaded, ServingError

# Ollama's own words for a prompt over the context (its runners' errorInputTooLong).
OLLAMA_CONTEXT_MESSAGE = "the input length exceeds the context length"


def _message_with_request_id(error: ServingError, request_id: str | None) -> str:
    message = error.client_message()
    return f"{message} (request id: {request_id})" if request_id else message


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


# Anthropic's error types by the status its SDK maps to an exception class.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic's status for "at capacity, retry later"; its SDK raises OverloadedError for it.
ANTHROPIC_OVERLOADED_STATUS = 529


def anthropic_status(error: ServingError) -> int:
    """The status Anthropic's API answers ``error`` with: load shedding is 529, not 429
    (a per-key rate limit stays 429)."""
    return ANTHROPIC_OVERLOADED_STATUS if isinstance(error, Overloaded) else error.status


def anthropic_error_body(error: ServingError, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's envelope: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    status = anthropic_status(error)
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.client_message()}, "request_id": request_id}


def error_headers(error: ServingError, request_id: str | None = None) -> dict[str, str]:
    """Headers every error response carries (request id, Retry-After, x-should-retry...)."""
    headers = dict(error.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return headers
