"""Golden tests of the wire framing, the error renderers and the error hierarchy."""

from __future__ import annotations

import pickle

import pytest

from serve_app.core.errors import (
    INTERNAL_ERROR_MESSAGE,
    AuthenticationFailed,
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServingError,
    Unsupported,
)
from serve_app.transport.error_rendering import error_headers, ollama_error_body, openai_error_body
from serve_app.transport.framing import NDJSON_MEDIA_TYPE, SSE_DONE, SSE_MEDIA_TYPE, ndjson_line, sse_frame, to_json


@pytest.mark.parametrize(
    ("obj", "sse", "ndjson"),
    [
        ({"a": 1}, b'data: {"a":1}\n\n', b'{"a":1}\n'),
        ({"text": "h\u00e9llo \u4e16\u754c"}, 'data: {"text":"h\u00e9llo \u4e16\u754c"}\n\n'.encode(), '{"text":"h\u00e9llo \u4e16\u754c"}\n'.encode()),
        ({"nl": "a\nb", "q": '"'}, b'data: {"nl":"a\\nb","q":"\\""}\n\n', b'{"nl":"a\\nb","q":"\\""}\n'),
        ({"x": None, "y": [1.5, True]}, b'data: {"x":null,"y":[1.5,true]}\n\n', b'{"x":null,"y":[1.5,true]}\n'),
        ([], b"data: []\n\n", b"[]\n"),
    ],
)
def test_frames(obj: object, sse: bytes, ndjson: bytes) -> None:
    assert sse_frame(obj) == sse
    assert ndjson_line(obj) == ndjson
    # A frame never contains a bare newline inside its JSON (that would split the event).
    assert b"\n" not in sse[:-2] and b"\n" not in ndjson[:-1]


def test_constants() -> None:
    assert SSE_DONE == b"data: [DONE]\n\n"
    assert SSE_MEDIA_TYPE == "text/event-stream"
    assert NDJSON_MEDIA_TYPE == "application/x-ndjson"
    assert to_json({"b": 1, "a": [1, 2]}) == '{"b":1,"a":[1,2]}'


ERRORS = [
    (InvalidRequest("bad", param="temperature"), 400, "invalid_request_error", None, "temperature"),
    (ContextLengthExceeded("long", param="messages"), 400, "invalid_request_error", "context_length_exceeded", "messages"),
    (Unsupported("no vision", param="model"), 400, "invalid_request_error", "unsupported", "model"),
    (AuthenticationFailed("key"), 401, "invalid_request_error", "invalid_api_key", None),
    (PermissionDenied("no"), 403, "permission_error", "forbidden", None),
    (NotFound("route"), 404, "invalid_request_error", "not_found", None),
    (ModelNotFound("gpt-5"), 404, "invalid_request_error", "model_not_found", "model"),
    (MethodNotAllowed("GET"), 405, "invalid_request_error", "method_not_allowed", None),
    (PayloadTooLarge("big"), 413, "invalid_request_error", "request_too_large", None),
    (RateLimited("slow down", headers={"retry-after": "1"}), 429, "rate_limit_error", "rate_limit_exceeded", None),
    (EngineError("boom"), 500, "server_error", "engine_error", None),
    (ServingError("plain"), 500, "server_error", None, None),
    (ModelUnavailable("starting"), 503, "server_error", "model_unavailable", None),
    (DeadlineExceeded(2.5), 504, "timeout_error", "deadline_exceeded", None),
    (ServingError("custom", status=418, code="teapot"), 418, "server_error", "teapot", None),
]


@pytest.mark.parametrize(("error", "status", "type_", "code", "param"), ERRORS, ids=lambda v: type(v).__name__)
def test_error_hierarchy_and_renderers(error: ServingError, status: int, type_: str, code: str | None, param: str | None) -> None:
    assert error.status == status
    # Internal failures show a fixed message (their detail is logged), ours show their own.
    internal = isinstance(error, EngineError) or (type(error) is ServingError and status >= 500)
    shown = INTERNAL_ERROR_MESSAGE if internal else error.message
    assert error.client_message() == shown
    assert openai_error_body(error) == {"error": {"message": shown, "type": type_, "param": param, "code": code}}
    # Ollama's words lead a context error, as its runners answer it.
    lead = "the input length exceeds the context length " if isinstance(error, ContextLengthExceeded) else ""
    wrap = (lambda text: f"{lead}({text})") if lead else (lambda text: text)
    assert ollama_error_body(error) == {"error": wrap(shown)}
    assert openai_error_body(error, "rid1")["error"]["message"] == f"{shown} (request id: rid1)"
    assert ollama_error_body(error, "rid1") == {"error": wrap(f"{shown} (request id: rid1)")}
    # Errors cross the Ray handle hop pickled: everything survives.
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert (clone.status, clone.type, clone.code, clone.param, clone.message, clone.headers) == (
        error.status, error.type, error.code, error.param, error.message, error.headers,
    )


def test_model_not_found_message() -> None:
    assert ModelNotFound("gpt-5").message == "The model 'gpt-5' does not exist or you do not have access to it."


def test_error_headers() -> None:
    assert error_headers(InvalidRequest("x")) == {}
    assert error_headers(InvalidRequest("x"), "r1") == {"x-request-id": "r1"}
    limited = RateLimited("x", headers={"retry-after": "3"})
    assert error_headers(limited, "r2") == {"retry-after": "3", "x-request-id": "r2"}
    assert limited.headers == {"retry-after": "3"}  # not mutated
    late = DeadlineExceeded(30)
    assert late.message == "The generation did not finish within the server's deadline of 30 s."
    assert error_headers(late) == {"x-should-retry": "false"}
