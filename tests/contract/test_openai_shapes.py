"""OpenAI bodies as OpenAI's own OpenAPI document types them (openai/openai-openapi).

Clients generated from that document in typed languages reject a ``null`` where it says
string and a body missing a key it requires. Two classes were found against it and are
pinned here for every body that carries them: strings that must never be null
(``system_fingerprint``, a Response's ``user`` and ``usage``, which are left out instead), and
keys that must be present (``refusal`` beside a choice's logprobs, ``strict`` on a function
tool, ``logprobs`` on stored output text, ``cache_write_tokens`` in Responses usage).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import CHAT_MODEL, build_fake_app

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app, _ = build_fake_app()
    with TestClient(app) as test_client:
        yield test_client


def sse_data(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def assert_fingerprint(body: dict[str, Any]) -> None:
    assert isinstance(body["system_fingerprint"], str) and body["system_fingerprint"].startswith("fp_"), body


@pytest.mark.parametrize("logprobs", [False, True])
def test_chat_bodies_and_chunks_carry_a_fingerprint_and_refusal_beside_logprobs(client: TestClient, logprobs: bool) -> None:
    extra = {"logprobs": True, "top_logprobs": 2} if logprobs else {}
    body = client.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES, **extra}).json()
    assert_fingerprint(body)
    choice_logprobs = body["choices"][0]["logprobs"]
    if logprobs:
        assert choice_logprobs["refusal"] is None and choice_logprobs["content"]
    else:
        assert choice_logprobs is None
    streamed = client.post(
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}, **extra},
    )
    chunks = sse_data(streamed.text)
    assert len(chunks) > 2
    fingerprints = set()
    for chunk in chunks:
        assert_fingerprint(chunk)
        fingerprints.add(chunk["system_fingerprint"])
        for choice in chunk["choices"]:
            if choice["logprobs"] is not None:
                assert set(choice["logprobs"]) == {"content", "refusal"}
    # One configuration, one fingerprint, the same as the non-streamed body's.
    assert fingerprints == {body["system_fingerprint"]}


def test_completion_bodies_and_chunks_have_no_null_usage_or_fingerprint(client: TestClient) -> None:
    body = client.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "a"}).json()
    assert_fingerprint(body)
    streamed = client.post(
        "/v1/completions",
        json={"model": CHAT_MODEL, "prompt": "a", "stream": True, "stream_options": {"include_usage": True}},
    )
    chunks = sse_data(streamed.text)
    for chunk in chunks:
        assert_fingerprint(chunk)
        # Usage is not nullable on the completion object: only the usage chunk has it.
        assert chunk.get("usage", "absent") is not None
    assert "usage" in chunks[-1] and chunks[-1]["choices"] == []


def test_response_objects_leave_out_what_they_do_not_have(client: TestClient) -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    body = client.post("/v1/responses", json={"model": CHAT_MODEL, "input": "hi", "tools": [tool]}).json()
    assert "user" not in body  # not sent, so not null
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert body["tools"][0]["strict"] is None  # required by FunctionTool, null when unset
    streamed = client.post("/v1/responses", json={"model": CHAT_MODEL, "input": "hi", "stream": True, "user": "u1"})
    events = sse_data(streamed.text)
    created = next(e for e in events if e["type"] == "response.created")["response"]
    assert "usage" not in created and created["user"] == "u1"
    completed = next(e for e in events if e["type"] == "response.completed")["response"]
    assert isinstance(completed["usage"], dict)


def test_stored_output_text_has_logprobs(client: TestClient) -> None:
    conversation = client.post(
        "/v1/conversations", json={"items": [{"role": "assistant", "content": "earlier answer"}]}
    ).json()
    items = client.get(f"/v1/conversations/{conversation['id']}/items").json()["data"]
    part = items[0]["content"][0]
    assert part["type"] == "output_text" and part["logprobs"] == [] and part["annotations"] == []
