"""Any JSON string in any text field of any route gets a 2xx or a 4xx, never a 5xx.

For each route a valid body is the template; every string in it (values and the keys of
free-form objects) is replaced in turn by text Hypothesis draws from all of Unicode, lone
surrogates included, and the body is sent as JSON with ASCII escapes, which is how a surrogate
travels (UTF-8 cannot carry one). Stateful routes run over the same app, so text that reaches
the store is covered too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, VISION_MODEL, build_fake_app

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAHnOcQAAAAABJRU5ErkJggg=="
TOOL = {"type": "function", "function": {"name": "lookup", "description": "find", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}

# (route, body): one valid body per route; its strings are the fields under test.
TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "u"}], "stop": ["x"], "user": "u1", "metadata": {"k": "v"}}),
    ("/v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"a\"}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "found"}], "tools": [TOOL]}),
    ("/v1/chat/completions", {"model": VISION_MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]}),
    ("/v1/completions", {"model": CHAT_MODEL, "prompt": "once", "suffix": "end", "stop": "x"}),
    ("/v1/completions", {"model": CHAT_MODEL, "prompt": ["a", "b"]}),
    ("/v1/embeddings", {"model": EMBED_MODEL, "input": ["one", "two"]}),
    ("/api/generate", {"model": CHAT_MODEL, "prompt": "hi", "system": "s", "template": "{{ .Prompt }}", "stream": False, "options": {"stop": ["x"]}, "keep_alive": "5m"}),
    ("/api/chat", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False, "odd_key": "v", "options": {"unknown": "v"}}),
    ("/api/embed", {"model": EMBED_MODEL, "input": ["one"]}),
    ("/api/embeddings", {"model": EMBED_MODEL, "prompt": "one"}),
    ("/api/show", {"model": CHAT_MODEL}),
    ("/v1/messages", {"model": CHAT_MODEL, "max_tokens": 8, "system": "s", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stop_sequences": ["x"], "metadata": {"user_id": "u"}}),
    ("/v1/messages/count_tokens", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/responses", {"model": CHAT_MODEL, "input": "hi", "instructions": "be brief", "metadata": {"k": "v"}, "user": "u"}),
    ("/v1/conversations", {"items": [{"role": "user", "content": "hi"}], "metadata": {"k": "v"}}),
    ("/v1/assistants", {"model": CHAT_MODEL, "name": "n", "instructions": "i", "description": "d", "metadata": {"k": "v"}}),
    ("/v1/threads", {"messages": [{"role": "user", "content": "hi", "metadata": {"k": "v"}}]}),
]


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], bool]]:
    """Every string in ``value``: (its path, whether it is an object key)."""
    if isinstance(value, str):
        yield path, False
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from string_paths(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("model", "role", "type"):  # these select a route's branch; others are text
                yield (*path, key), True
            yield from string_paths(item, (*path, key))


def replaced(value: Any, path: tuple[Any, ...], is_key: bool, text: str) -> Any:
    """``value`` with the string (or the key) at ``path`` replaced by ``text``."""
    if not path:
        return text
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        return [replaced(item, rest, is_key, text) if i == head else item for i, item in enumerate(value)]
    if is_key and not rest:
        return {(text if k == head else k): v for k, v in value.items()}
    return {k: (replaced(v, rest, is_key, text) if k == head else v) for k, v in value.items()}


CASES = [
    (route, body, path, is_key)
    for route, body in TEMPLATES
    for path, is_key in string_paths(body)
    if not (path and path[-1] in ("model",))
]
# Every character Hypothesis knows, surrogates (category Cs) included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # A store of its own: the objects made here are nobody else's listing.
    app, _ = build_fake_app(IngressSettings(state={"data_dir": str(tmp_path_factory.mktemp("any-text"))}))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_templates_are_valid(client: TestClient) -> None:
    for route, body in TEMPLATES:
        reply = client.post(route, content=json.dumps(body))
        assert reply.status_code == 200, (route, reply.text)
    assert len(CASES) > 80


@pytest.mark.parametrize(("route", "body", "path", "is_key"), CASES,
                         ids=[f"{r}:{'.'.join(map(str, p))}{'(key)' if k else ''}" for r, _, p, k in CASES])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=ANY_TEXT)
def test_any_text_anywhere_is_never_a_server_error(
    client: TestClient, route: str, body: dict[str, Any], path: tuple[Any, ...], is_key: bool, text: str
) -> None:
    sent = replaced(body, path, is_key, text)
    # ensure_ascii: a lone surrogate goes out as its \\u escape, as JSON allows.
    reply = client.post(route, content=json.dumps(sent, ensure_ascii=True).encode())
    assert reply.status_code < 500, (route, path, text, reply.text)
    if reply.status_code >= 400:
        assert "error" in reply.json(), reply.text
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        # Text that is not valid Unicode is refused at the edge, naming the field.
        assert reply.status_code == 400, (route, path, reply.text)
