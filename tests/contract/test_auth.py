"""API keys: every route but the health ones needs the key, in its API's error shape."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Route

from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, build_fake_app
from tests.servers import serve_in_thread

KEY = "sk-test-0123456789abcdef"
OTHER_KEY = "sk-other-fedcba9876543210"
HEALTH_PATHS = {"/health", "/-/healthz"}

# A body each route accepts, so "with the key" proves more than "not 401".
BODIES: dict[str, dict[str, object]] = {
    "/v1/chat/completions": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/completions": {"model": CHAT_MODEL, "prompt": "hi", "max_tokens": 2},
    "/v1/embeddings": {"model": EMBED_MODEL, "input": "hi"},
    "/api/generate": {"model": CHAT_MODEL, "prompt": "hi", "stream": False},
    "/api/chat": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False},
    "/api/embed": {"model": EMBED_MODEL, "input": "hi"},
    "/api/embeddings": {"model": EMBED_MODEL, "prompt": "hi"},
    "/api/show": {"model": CHAT_MODEL},
    "/v1/responses": {"model": CHAT_MODEL, "input": "hi", "max_output_tokens": 2},
    "/v1/conversations": {"metadata": {"topic": "auth"}},
    "/v1/conversations/sha256-0000": {"metadata": {"topic": "auth"}},
    "/v1/conversations/sha256-0000/items": {"items": [{"role": "user", "content": "hi"}]},
    "/v1/messages": {"model": CHAT_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages/count_tokens": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/threads": {"metadata": {"topic": "auth"}},
    "/v1/threads/sha256-0000": {"metadata": {"topic": "auth"}},
    "/v1/threads/sha256-0000/messages": {"role": "user", "content": "hi"},
    "/v1/threads/sha256-0000/messages/sha256-0000": {"metadata": {}},
    "/v1/threads/sha256-0000/runs": {"assistant_id": "asst_0"},
    "/v1/threads/sha256-0000/runs/sha256-0000": {"metadata": {}},
    "/v1/threads/sha256-0000/runs/sha256-0000/submit_tool_outputs": {"tool_outputs": [{"tool_call_id": "c", "output": ""}]},
    "/v1/threads/runs": {"assistant_id": "asst_0"},
    "/v1/assistants/sha256-0000": {"name": "x"},
}
# Stored objects by id: the made-up id is not found (404), once past the key check.
STATEFUL_BY_ID = ("/v1/responses/", "/v1/conversations/", "/v1/assistants/", "/v1/threads/")
MANAGEMENT = {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"}


def concrete_path(path: str) -> str:
    """A route template with its parameters filled in."""
    path = path.replace("{model:path}", CHAT_MODEL)
    return re.sub(r"\{[^}]+\}", "sha256-0000", path)


def all_route_calls(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from ``app.routes``."""
    calls = []
    for route in app.routes:
        assert isinstance(route, Route), route
        for method in sorted(route.methods or []):
            calls.append((method, concrete_path(route.path)))
    return calls


@pytest.fixture
def keyed_client() -> Iterator[TestClient]:
    app, _ = build_fake_app(IngressSettings(api_keys=[KEY, OTHER_KEY]))
    with TestClient(app) as client:
        yield client


def assert_401_shape(path: str, reply: httpx.Response) -> None:
    assert reply.status_code == 401, (path, reply.status_code, reply.text)
    assert reply.headers["x-request-id"]
    if reply.request.method == "HEAD":
        return  # no body on HEAD
    body = reply.json()
    if path == "/" or path.startswith("/api"):
        assert set(body) == {"error"} and isinstance(body["error"], str)
    elif path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        assert body["request_id"] == reply.headers["x-request-id"]
    else:
        assert body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "invalid_request_error"
        assert set(body["error"]) == {"message", "type", "param", "code"}


def test_every_route_needs_the_key(keyed_client: TestClient) -> None:
    app = keyed_client.app
    calls = all_route_calls(app)  # type: ignore[arg-type]
    # The enumeration found both APIs, the docs, and the management routes.
    paths = {p for _, p in calls}
    assert {"/v1/chat/completions", "/api/chat", "/openapi.json", "/api/pull", "/"} <= paths
    for method, path in calls:
        body = BODIES.get(path, {"model": CHAT_MODEL} if method in ("POST", "DELETE") else None)
        kwargs = {"json": body} if body is not None else {}
        if path in HEALTH_PATHS:
            assert keyed_client.request(method, path).status_code == 200
            continue
        refused = ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"},
                   {"x-api-key": "wrong"}, {"x-api-key": ""})
        for headers in refused:
            assert_401_shape(path, keyed_client.request(method, path, headers=headers, **kwargs))
        # Either header carries the key (Anthropic's SDK sends x-api-key), on every route.
        for key, header in ((KEY, "authorization"), (OTHER_KEY, "authorization"), (KEY, "x-api-key")):
            value = f"Bearer {key}" if header == "authorization" else key
            reply = keyed_client.request(method, path, headers={header: value}, **kwargs)
            assert reply.status_code != 401, (method, path)
            expected = 403 if path in MANAGEMENT or path.startswith("/api/blobs") else 200
            if path.startswith(STATEFUL_BY_ID):
                expected = 404
            assert reply.status_code == expected, (method, path, reply.text)


def test_unknown_routes_need_the_key_too(keyed_client: TestClient) -> None:
    # Nothing about the route table leaks without a key.
    assert_401_shape("/v1/nope", keyed_client.get("/v1/nope"))
    assert_401_shape("/api/nope", keyed_client.get("/api/nope"))
    reply = keyed_client.get("/v1/nope", headers={"authorization": f"Bearer {KEY}"})
    assert reply.status_code == 404


def test_health_stays_open(keyed_client: TestClient) -> None:
    assert keyed_client.get("/health").json() == {"status": "ok"}


def test_no_keys_means_open(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200
    assert client.get("/api/tags", headers={"authorization": "Bearer anything"}).status_code == 200


def test_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nsk-file-one\n\n  sk-file-two  # with a comment\n")
    settings = IngressSettings(api_keys=["sk-inline"], api_keys_file=keys)
    assert settings.load_api_keys() == ["sk-inline", "sk-file-one", "sk-file-two"]
    app, _ = build_fake_app(settings)
    with TestClient(app) as client:
        for key in ("sk-inline", "sk-file-one", "sk-file-two"):
            assert client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/models", headers={"authorization": "Bearer # team keys"}).status_code == 401
        assert client.get("/api/tags").status_code == 401


def test_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_API_KEYS", "a,b")
    settings = IngressSettings()
    assert settings.load_api_keys() == ["a", "b"]
    app, _ = build_fake_app(settings)
    with TestClient(app) as client:
        assert client.get("/v1/models", headers={"authorization": "Bearer a"}).status_code == 200
        assert client.get("/v1/models", headers={"authorization": "Bearer b"}).status_code == 200
        assert client.get("/v1/models", headers={"authorization": "Bearer a,b"}).status_code == 401
    # The keys are secrets: not shown by the settings' repr.
    assert "'a'" not in repr(settings) and "'b'" not in repr(settings)


def test_keys_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-very-secret-key-42"
    wrong = "sk-wrong-key-guess-17"
    caplog.set_level(logging.DEBUG)
    app, _ = build_fake_app(IngressSettings(api_keys=[secret]))
    with serve_in_thread(app) as url:
        good = {"authorization": f"Bearer {secret}"}
        # Requests that log: unhonoured params (a warning), errors, a failure in auth.
        httpx.post(
            f"{url}/v1/chat/completions",
            headers=good,
            json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "store": True},
        )
        httpx.post(f"{url}/api/generate", headers=good, json={"model": CHAT_MODEL, "prompt": "hi", "keep_alive": 1})
        httpx.post(f"{url}/v1/chat/completions", headers=good, json={"model": "nope", "messages": []})
        httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {wrong}"})
        httpx.get(f"{url}/api/tags")
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "not honoured" in text  # the logging did happen
    assert secret not in text
    assert wrong not in text
