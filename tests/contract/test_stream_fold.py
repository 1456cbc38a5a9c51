"""A non-streamed reply equals the fold of the streamed one, for both APIs, usage included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import CHAT_MODEL

USER = [{"role": "user", "content": "fold me please"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}


def sse_objects(text: str) -> list[dict[str, Any]]:
    frames = [f for f in text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith("data: ") for f in frames)
    return [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]


def fold_openai_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat.completion object a client builds from the chunks."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk["choices"]:
            choice = choices.setdefault(
                c["index"],
                {"index": c["index"], "message": {"role": None, "content": "", "refusal": None}, "logprobs": None,
                 "finish_reason": None},
            )
            delta = c["delta"]
            message = choice["message"]
            if "role" in delta:
                message["role"] = delta["role"]
            message["content"] += delta.get("content") or ""
            if delta.get("reasoning_content"):
                message["reasoning_content"] = message.get("reasoning_content", "") + delta["reasoning_content"]
            for call in delta.get("tool_calls") or []:
                call = {k: v for k, v in call.items() if k != "index"}
                message.setdefault("tool_calls", []).append(call)
            if c["logprobs"]:
                choice["logprobs"] = {"content": (choice["logprobs"] or {"content": []})["content"] + c["logprobs"]["content"], "refusal": c["logprobs"]["refusal"]}
            choice["finish_reason"] = c["finish_reason"] or choice["finish_reason"]
    for choice in choices.values():
        if "tool_calls" in choice["message"]:
            choice["message"]["content"] = choice["message"]["content"] or None
    return {"choices": [choices[i] for i in sorted(choices)], "usage": usage}


def fold_openai_completion(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        assert chunk["object"] == "text_completion"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk["choices"]:
            choice = choices.setdefault(c["index"], {"index": c["index"], "text": "", "logprobs": None, "finish_reason": None})
            choice["text"] += c["text"]
            if c["logprobs"]:
                lp = choice["logprobs"] or {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                for key in lp:
                    lp[key] = lp[key] + c["logprobs"][key]
                choice["logprobs"] = lp
            choice["finish_reason"] = c["finish_reason"] or choice["finish_reason"]
    return {"choices": [choices[i] for i in sorted(choices)], "usage": usage}


OPENAI_CHAT_CASES = {
    "plain": {},
    "length": {"max_tokens": 3},
    "stop": {"stop": ["tok4"]},
    "n": {"n": 3, "max_tokens": 2},
    "logprobs": {"logprobs": True, "top_logprobs": 2, "max_tokens": 3},
    "tools": {"tools": TOOLS, "tool_choice": "required"},
    "tools-n": {"tools": TOOLS, "tool_choice": "required", "n": 2},
    "json": {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}},
}


@pytest.mark.parametrize("case", list(OPENAI_CHAT_CASES))
def test_openai_chat_fold(client: TestClient, case: str) -> None:
    body = {"model": CHAT_MODEL, "messages": USER, **OPENAI_CHAT_CASES[case]}
    whole = client.post("/v1/chat/completions", json=body).json()
    streamed = client.post(
        "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    chunks = sse_objects(streamed.text)
    assert len({c["id"] for c in chunks}) == 1
    assert whole["object"] == "chat.completion"
    assert without_call_ids({"choices": whole["choices"], "usage": whole["usage"]}) == without_call_ids(
        fold_openai_chat(chunks)
    )


def without_call_ids(body: dict[str, Any]) -> dict[str, Any]:
    """The body with tool-call ids masked (the fake engine makes a fresh one per call)."""
    for choice in body["choices"]:
        for call in choice["message"].get("tool_calls") or []:
            assert call["id"].startswith("call_")
            call["id"] = "call_*"
    return body


OPENAI_COMPLETION_CASES = {
    "plain": {"prompt": "a b c"},
    "batch": {"prompt": ["a b", "c", "d e f"], "max_tokens": 3},
    "batch-n": {"prompt": ["a b", "c"], "n": 2, "max_tokens": 2},
    "echo": {"prompt": ["x y ", "z "], "echo": True, "max_tokens": 2},
    "logprobs": {"prompt": "a", "logprobs": 2, "max_tokens": 3},
    "echo-logprobs": {"prompt": "ab ", "echo": True, "logprobs": 1, "max_tokens": 2},
    "stop": {"prompt": "a", "stop": "tok2"},
    "tokens": {"prompt": [[1, 2, 3], [4]], "max_tokens": 2},
}


@pytest.mark.parametrize("case", list(OPENAI_COMPLETION_CASES))
def test_openai_completion_fold(client: TestClient, case: str) -> None:
    body = {"model": CHAT_MODEL, **OPENAI_COMPLETION_CASES[case]}
    whole = client.post("/v1/completions", json=body).json()
    streamed = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    folded = fold_openai_completion(sse_objects(streamed.text))
    assert {"choices": whole["choices"], "usage": whole["usage"]} == folded


def ndjson_objects(text: str) -> list[dict[str, Any]]:
    lines = text.split("\n")
    assert lines[-1] == ""
    return [json.loads(line) for line in lines[:-1]]


TIMINGS = ("total_duration", "prompt_eval_duration", "eval_duration", "created_at")


def fold_ollama(parts: list[dict[str, Any]], is_chat: bool) -> dict[str, Any]:
    final = dict(parts[-1])
    assert final["done"] is True and all(p["done"] is False for p in parts[:-1])
    text_key = "content"
    if is_chat:
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        for part in parts:
            m = part["message"]
            message["content"] += m["content"]
            if m.get("thinking"):
                message["thinking"] = message.get("thinking", "") + m["thinking"]
            if m.get("tool_calls"):
                message["tool_calls"] = message.get("tool_calls", []) + m["tool_calls"]
        final["message"] = message
    else:
        text_key = "response"
        final["response"] = "".join(p["response"] for p in parts)
        thinking = "".join(p.get("thinking", "") for p in parts)
        if thinking:
            final["thinking"] = thinking
    logprobs = [lp for p in parts for lp in p.get("logprobs", [])]
    if logprobs:
        final["logprobs"] = logprobs
    assert text_key
    return final


def masked(body: dict[str, Any]) -> dict[str, Any]:
    for key in TIMINGS:
        assert key in body
    return {k: v for k, v in body.items() if k not in TIMINGS}


OLLAMA_CASES = {
    "plain": {},
    "length": {"options": {"num_predict": 3}},
    "stop": {"options": {"stop": ["tok5"]}},
    "think": {"think": True},
    "json": {"format": "json"},
    "schema": {"format": SCHEMA},
    "logprobs": {"logprobs": True, "top_logprobs": 1, "options": {"num_predict": 2}},
}


@pytest.mark.parametrize("case", list(OLLAMA_CASES) + ["tools"])
def test_ollama_chat_fold(client: TestClient, case: str) -> None:
    extra = {"tools": TOOLS, "messages": [{"role": "user", "content": "lookup it"}]} if case == "tools" else OLLAMA_CASES[case]
    body = {"model": CHAT_MODEL, "messages": USER, **extra}
    whole = client.post("/api/chat", json={**body, "stream": False}).json()
    streamed = client.post("/api/chat", json=body)
    assert streamed.headers["content-type"] == "application/x-ndjson"
    assert masked(whole) == masked(fold_ollama(ndjson_objects(streamed.text), is_chat=True))


@pytest.mark.parametrize("case", list(OLLAMA_CASES) + ["raw", "suffix"])
def test_ollama_generate_fold(client: TestClient, case: str) -> None:
    extra = {"raw": {"raw": True}, "suffix": {"suffix": "end"}}.get(case) or OLLAMA_CASES[case]
    body = {"model": CHAT_MODEL, "prompt": "fold me please", **extra}
    whole = client.post("/api/generate", json={**body, "stream": False}).json()
    streamed = client.post("/api/generate", json=body)
    assert masked(whole) == masked(fold_ollama(ndjson_objects(streamed.text), is_chat=False))
