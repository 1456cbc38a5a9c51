"""Errors on every route, in each API's shape: 404, 405, bad JSON, schema violations, 413,
form-labelled bodies, request ids and CORS."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Route

from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, build_fake_app
from tests.servers import serve_in_thread

OPENAI_POSTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
OLLAMA_POSTS = ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show"]
ANTHROPIC_POSTS = ["/v1/messages", "/v1/messages/count_tokens"]
ALL_BODY_ROUTES = OPENAI_POSTS + OLLAMA_POSTS + ANTHROPIC_POSTS
# Anthropic's error type for each of our OpenAI codes these tests meet.
ANTHROPIC_TYPE_OF_CODE = {
    "not_found": "not_found_error",
    "method_not_allowed": "invalid_request_error",
    "request_too_large": "request_too_large",
}


def is_ollama(path: str) -> bool:
    return path == "/" or path.startswith("/api")


def is_anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def assert_code(path: str, error: dict[str, object], code: str) -> None:
    """The error names ``code`` in its API's vocabulary (Ollama's has none)."""
    if is_anthropic(path):
        assert error["type"] == ANTHROPIC_TYPE_OF_CODE[code], error
    elif not is_ollama(path):
        assert error["code"] == code, error


def assert_error_shape(path: str, reply: httpx.Response, status: int) -> dict[str, object]:
    assert reply.status_code == status, (path, reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    if is_ollama(path):
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
        return body
    if is_anthropic(path):
        assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
        assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
        assert body["request_id"] == reply.headers["x-request-id"]
        return body["error"]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] is None or isinstance(body["error"]["code"], str)
    return body["error"]


def routes_of(app: FastAPI) -> list[Route]:
    return [r for r in app.routes if isinstance(r, Route)]


@pytest.mark.parametrize(
    "path", ["/nope", "/v1/nope", "/v1/chat/completion", "/api/nope", "/api/chat/x", "/v1/messages/batches"]
)
def test_unknown_route_404(client: TestClient, path: str) -> None:
    for method in ("GET", "POST"):
        error = assert_error_shape(path, client.request(method, path, json={}), 404)
        assert_code(path, error, "not_found")


def test_wrong_method_405_on_every_route(client: TestClient) -> None:
    checked = 0
    for route in routes_of(client.app):  # type: ignore[arg-type]
        path = route.path.replace("{model:path}", CHAT_MODEL).replace("{digest}", "sha256-0")
        # Every route the concrete path matches (POST /v1/threads/runs is a route of its own and
        # GET /v1/threads/runs reads a thread called "runs").
        allowed = {m for r in routes_of(client.app) if r.path_regex.match(path) for m in r.methods or ()}  # type: ignore[arg-type]
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if method in allowed or (method == "GET" and "HEAD" in allowed and path == "/"):
                continue
            reply = client.request(method, path)
            error = assert_error_shape(path, reply, 405)
            assert_code(path, error, "method_not_allowed")
            # Allow names the resource's methods: a literal route's own where one matches.
            literal = {m for r in routes_of(client.app) if r.path == path for m in r.methods or ()}  # type: ignore[arg-type]
            assert set(reply.headers["allow"].replace(" ", "").split(",")) >= ((literal or allowed) - {"HEAD"})
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("path", ALL_BODY_ROUTES)
@pytest.mark.parametrize("raw", [b"{bad", b"", b"[1,", b'{"model": "x"', b"\xff\xfe", b"null"])
def test_malformed_json_is_400(client: TestClient, path: str, raw: bytes) -> None:
    reply = client.post(path, content=raw, headers={"content-type": "application/json"})
    error = assert_error_shape(path, reply, 400)
    if not is_ollama(path):
        assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": CHAT_MODEL}, "messages"),
        ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 17}, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/completions", {"model": CHAT_MODEL}, "prompt"),
        ("/v1/completions", {"model": CHAT_MODEL, "prompt": "x", "logprobs": 9}, "logprobs"),
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": ""}, "input"),
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "dimensions": 0}, "dimensions"),
        ("/api/generate", {"prompt": "x"}, "model"),
        ("/api/generate", {"model": CHAT_MODEL, "prompt": "x", "options": {"temperature": 3}}, "options.temperature"),
        ("/api/chat", {"model": CHAT_MODEL, "messages": [{"role": "x", "content": "y"}]}, "messages[0].role"),
        ("/api/chat", {"model": CHAT_MODEL, "messages": "hi"}, "messages"),
        ("/api/embed", {"model": EMBED_MODEL, "input": 5}, "input"),
        ("/v1/messages", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ("/v1/messages", {"model": CHAT_MODEL, "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ("/v1/messages", {"model": CHAT_MODEL, "max_tokens": 4, "messages": []}, "messages"),
        ("/v1/messages", {"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ("/v1/messages", {"model": CHAT_MODEL, "max_tokens": 4, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]}, "temperature"),
        ("/v1/messages", {"model": CHAT_MODEL, "max_tokens": 4, "top_k": -1, "messages": [{"role": "user", "content": "x"}]}, "top_k"),
        ("/v1/messages", {"model": CHAT_MODEL, "max_tokens": 4, "frequency_penalty": 1, "messages": [{"role": "user", "content": "x"}]}, "frequency_penalty"),
        ("/v1/messages/count_tokens", {"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ],
)
def test_schema_violation_is_400_with_param(client: TestClient, path: str, body: object, param: str) -> None:
    reply = client.post(path, json=body)
    error = assert_error_shape(path, reply, 400)
    if is_ollama(path):
        assert param in str(error["error"])
    elif is_anthropic(path):
        assert error["type"] == "invalid_request_error" and param in str(error["message"]), error
    else:
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"


def test_schema_violation_on_body_of_wrong_type(client: TestClient) -> None:
    for path in ALL_BODY_ROUTES:
        for body in ([1, 2], "text", 5):
            assert_error_shape(path, client.post(path, json=body), 400)


@pytest.fixture
def small_limit_url() -> Iterator[str]:
    app, _ = build_fake_app(IngressSettings(max_body_bytes=1024))
    with serve_in_thread(app) as url:
        yield url


@pytest.mark.parametrize("path", ALL_BODY_ROUTES + ["/api/pull", "/v1/models"])
def test_body_over_limit_is_413(small_limit_url: str, path: str) -> None:
    big = json.dumps({"model": CHAT_MODEL, "prompt": "x" * 4000, "messages": [], "input": "y"}).encode()
    # With Content-Length: refused before the body is read.
    reply = httpx.post(f"{small_limit_url}{path}", content=big)
    assert_error_shape(path, reply, 413)

    # Chunked (no Content-Length): refused while the body is read.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 256):
            yield big[i : i + 256]

    reply = httpx.post(f"{small_limit_url}{path}", content=chunks())
    assert "content-length" not in reply.request.headers
    if path == "/v1/models":
        # A route that never reads its body has nothing to refuse; it answers its own 405.
        assert reply.status_code in (405, 413)
        return
    error = assert_error_shape(path, reply, 413)
    assert_code(path, error, "request_too_large")


def test_body_under_limit_chunked_is_fine(small_limit_url: str) -> None:
    body = json.dumps({"model": CHAT_MODEL, "prompt": "hi", "stream": False}).encode()
    reply = httpx.post(f"{small_limit_url}/api/generate", content=iter([body[:10], body[10:]]))
    assert reply.status_code == 200


@pytest.mark.parametrize("path", OLLAMA_POSTS)
def test_curl_form_bodies_are_json(client: TestClient, path: str) -> None:
    body = {
        "model": EMBED_MODEL if "embed" in path else CHAT_MODEL,
        "prompt": "hi",
        "input": "hi",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }
    # What `curl http://localhost:11434/api/generate -d '{...}'` sends.
    reply = client.post(path, content=json.dumps(body), headers={"content-type": "application/x-www-form-urlencoded"})
    assert reply.status_code == 200, reply.text
    reply = client.post(path, content=json.dumps(body), headers={"content-type": "text/plain"})
    assert reply.status_code == 200, reply.text
    reply = client.post(path, content=json.dumps(body).encode())  # no content type at all
    assert reply.status_code == 200, reply.text


def test_request_id_echoed(client: TestClient) -> None:
    reply = client.get("/v1/models", headers={"x-request-id": "my-trace.123"})
    assert reply.headers["x-request-id"] == "my-trace.123"
    for path in ("/v1/chat/completions", "/api/chat"):
        reply = client.post(path, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                            headers={"x-request-id": "abc:42"})
        assert reply.headers["x-request-id"] == "abc:42"
        message = reply.json()["error"] if is_ollama(path) else reply.json()["error"]["message"]
        assert "abc:42" in message
    reply = client.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
                        headers={"x-request-id": "stream-1"})
    assert reply.headers["x-request-id"] == "stream-1"


def test_request_id_generated(client: TestClient) -> None:
    first = client.get("/v1/models").headers["x-request-id"]
    second = client.get("/v1/models").headers["x-request-id"]
    assert first != second and len(first) == 32
    # An id we cannot safely echo (header injection, absurd length) is replaced.
    for bad in ("a b", "x" * 500, "<script>"):
        got = client.get("/api/tags", headers={"x-request-id": bad}).headers["x-request-id"]
        assert got != bad and len(got) == 32
    assert client.get("/nope").headers["x-request-id"]


def test_no_cors_by_default(client: TestClient) -> None:
    reply = client.get("/v1/models", headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in reply.headers
    preflight = client.options(
        "/v1/chat/completions",
        headers={"origin": "https://app.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_when_configured() -> None:
    settings = IngressSettings(cors_origins=["https://app.example"], api_keys=["sk-1"])
    app, _ = build_fake_app(settings)
    with TestClient(app) as client:
        preflight = client.options(
            "/v1/chat/completions",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200  # no key needed for the preflight
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        reply = client.get("/api/tags", headers={"origin": "https://app.example", "authorization": "Bearer sk-1"})
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in reply.headers["access-control-expose-headers"]
        # Errors (the 401 from the edge included) carry CORS headers, so browsers can read them.
        denied = client.get("/v1/models", headers={"origin": "https://app.example"})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/v1/models", headers={"origin": "https://evil.example", "authorization": "Bearer sk-1"})
        assert "access-control-allow-origin" not in other.headers
